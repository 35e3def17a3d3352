"""Compare and lineage in a real browser (Debian chromium): select on the leaderboard → compare,
sort by a header, the Plotly charts drawn from our static files, the lineage tree, and the
experiment page's code box."""

import re

import pytest
from playwright.sync_api import expect

from experiments.analysis import family_of
from experiments.models import Experiment
from tests.factories import TaskFactory

SHORT = "def train(X_train, y_train, X_test, *, artifacts_dir):\n    return [0.0] * len(X_test)\n"
LONG = ("def train(X_train, y_train, X_test, *, artifacts_dir):\n"
        f"    weights = [{', '.join(str(i) for i in range(250))}]\n"
        "    return [sum(weights) * 0.0] * len(X_test)\n")


def _exp(domain, value, holdout, **fields):
    return Experiment.objects.create(
        domain=domain, state="completed", train_code=fields.pop("code", SHORT), code_sha256="0" * 64,
        metrics={"rmse": value, "mae": value / 2}, holdout_metrics={"rmse": holdout, "mae": holdout / 2},
        primary_value=value, holdout_primary_value=holdout,
        # What experiments.ranking.ranking_update stores for a one-seed configuration.
        rank_value=value, family=family_of(fields.get("variables")), **fields,
    )


@pytest.fixture
def lab(transactional_db):
    domain = TaskFactory().domain
    root = _exp(domain, 60.0, 62.0, hypothesis="mean baseline", variables={"family": "dummy"})
    child = _exp(domain, 55.0, 58.0, hypothesis="ridge alpha 1", parent=root,
                 variables={"family": "ridge", "params": {"alpha": 1.0}}, code=LONG)
    best = _exp(domain, 50.0, 57.0, hypothesis="ridge alpha 10", parent=child,
                variables={"family": "ridge", "params": {"alpha": 10.0}})
    sibling = _exp(domain, 58.0, 51.0, hypothesis="forest deep", parent=root,
                   variables={"family": "random_forest", "params": {"max_depth": 8}})
    other_root = _exp(domain, 70.0, 71.0, hypothesis="knn", variables={"family": "knn", "params": {"k": 5}})
    _exp(domain, 69.0, 70.0, hypothesis="knn k=9", parent=other_root, variables={"family": "knn", "params": {"k": 9}})
    return {"domain": domain, "root": root, "child": child, "best": best, "sibling": sibling, "other": other_root}


def _errors(page) -> list[str]:
    # Plotly (4.8 MB) comes from the test server's static handler: give navigations room.
    page.set_default_navigation_timeout(30_000)
    page.set_default_timeout(20_000)  # the machine is shared; clicks wait for navigations too
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    return errors


def test_it_selects_experiments_on_the_leaderboard_and_compares_them(logged_in_page, live_server, lab):
    page = logged_in_page
    errors = _errors(page)
    domain = lab["domain"]
    page.goto(f"{live_server.url}/experiments/domain/{domain.pk}/", wait_until="domcontentloaded")
    # The optimisation history is drawn by Plotly, loaded from our own static files.
    expect(page.locator("#chart-history .chart[data-ready='1'] .js-plotly-plot, "
                        "#chart-history .chart.js-plotly-plot[data-ready='1']")).to_have_count(1, timeout=20_000)
    expect(page.locator("#chart-scatter .chart[data-ready='1']")).to_have_count(1, timeout=20_000)
    # Best first by default; clicking the holdout header sorts by it, in the URL.
    first = page.locator("table.leaderboard tbody tr").first
    expect(first).to_contain_text("ridge alpha 10")
    page.click("table.leaderboard thead a:has-text('rmse (holdout)')")
    expect(page).to_have_url(re.compile(r"sort=holdout"))
    expect(page.locator("table.leaderboard tbody tr").first).to_contain_text("forest deep")
    # Clicking a chart point opens that experiment (the chart's click handler).
    page.goto(f"{live_server.url}/experiments/domain/{domain.pk}/", wait_until="domcontentloaded")
    expect(page.locator("#chart-history .chart[data-ready='1']")).to_have_count(1, timeout=20_000)
    page.evaluate(f"document.querySelector('#chart-history .chart').emit('plotly_click', "
                  f"{{points: [{{customdata: {lab['sibling'].pk}, pointIndex: 3}}]}})")
    expect(page).to_have_url(re.compile(rf"/experiments/{lab['sibling'].pk}/$"))

    page.goto(f"{live_server.url}/experiments/domain/{domain.pk}/", wait_until="domcontentloaded")
    page.check(f"input[name=ids][value='{lab['child'].pk}']")
    page.check(f"input[name=ids][value='{lab['sibling'].pk}']")
    page.click("#compare-button")
    expect(page).to_have_url(re.compile(r"/experiments/compare/\?"))
    table = page.locator("#compare-table")
    expect(table).to_contain_text(f"#{lab['child'].pk}")
    expect(table.locator("tr[data-row='alpha']")).to_have_class(re.compile("differs"))
    expect(table.locator("tr[data-row='rmse (validation)'] td.best")).to_have_text("55")
    expect(table.locator("tr[data-row='state']")).to_have_count(1)
    expect(page.locator("#code-diff .del").first).to_contain_text("weights = [0, 1, 2")
    # The parallel-coordinates view of params → rmse draws.
    expect(page.locator("#chart-parallel .chart[data-ready='1']")).to_have_count(1, timeout=20_000)

    page.click("#diff-only-toggle")
    expect(page).to_have_url(re.compile(r"diff_only=1"))
    expect(page.locator("#compare-table tr[data-row='state']")).to_have_count(0)
    expect(page.locator("#compare-table tr[data-row='alpha']")).to_have_count(1)
    page.click("#diff-only-toggle")
    expect(page.locator("#compare-table tr[data-row='state']")).to_have_count(1)
    assert errors == []


def test_it_walks_the_lineage_tree_and_the_experiment_page(logged_in_page, live_server, lab):
    page = logged_in_page
    errors = _errors(page)
    domain = lab["domain"]
    page.set_viewport_size({"width": 1366, "height": 900})
    page.goto(f"{live_server.url}/experiments/domain/{domain.pk}/", wait_until="domcontentloaded")
    page.click("#lineage-link")
    expect(page.locator("h1")).to_contain_text("Lineage of")
    tree = page.locator("#lineage-tree")
    # The best path (root → child → best) is open and highlighted; the other root is collapsed.
    best_leaf = tree.locator(f".node.leaf.best-path[data-id='{lab['best'].pk}']")
    expect(best_leaf).to_be_visible()
    expect(best_leaf).to_contain_text("best")
    other = tree.locator(f"details[data-id='{lab['other'].pk}']")
    expect(other).not_to_have_attribute("open", "")
    expect(other.locator(".children")).to_be_hidden()
    other.locator("summary").first.click()
    expect(other.locator(".children")).to_be_visible()
    expect(other).to_contain_text("knn k=9")

    best_leaf.locator(f"a:has-text('#{lab['best'].pk}')").click()
    expect(page.locator("h1")).to_contain_text(f"Experiment #{lab['best'].pk}")
    strip = page.locator("#lineage")
    expect(strip).to_contain_text(f"#{lab['root'].pk} → #{lab['child'].pk} → #{lab['best'].pk}")
    strip.locator(f"a:has-text('#{lab['child'].pk}')").click()
    expect(page.locator("h1")).to_contain_text(f"Experiment #{lab['child'].pk}")

    # The child has a 1,000-character line: it scrolls inside the code box, the page stays put,
    # and each line number sits on its line.
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 1366, width
    box = page.locator("#train-code")
    assert box.evaluate("el => el.scrollWidth > el.clientWidth")
    numbers = box.locator("td.linenos pre")
    code = box.locator("td.code pre")
    assert abs(numbers.bounding_box()["height"] - code.bounding_box()["height"]) < 1
    first_number = box.locator("td.linenos pre a, td.linenos pre span").first.bounding_box()
    first_code = box.locator("td.code pre span").first.bounding_box()
    assert abs(first_number["y"] - first_code["y"]) < 2
    assert errors == []


def test_it_sorts_and_filters_inside_the_domain_pages_tab(logged_in_page, live_server, lab):
    page = logged_in_page
    errors = _errors(page)
    domain = lab["domain"]
    page.goto(f"{live_server.url}/domains/{domain.pk}/?tab=experiments", wait_until="domcontentloaded")
    board = page.locator("#domain-experiments table.leaderboard")
    expect(board.locator("tbody tr").first).to_contain_text("ridge alpha 10")
    # The chart in the htmx-loaded tab draws too.
    expect(page.locator("#chart-history .chart[data-ready='1']")).to_have_count(1, timeout=20_000)
    page.click("#domain-experiments thead a:has-text('rmse (holdout)')")
    expect(board.locator("tbody tr").first).to_contain_text("forest deep")
    expect(page).to_have_url(re.compile(r"sort=holdout"))  # the state is in the URL
    page.fill("#domain-experiments input[name=family]", "ridge")
    page.click("#domain-experiments .leaderboard-filters button[type=submit]")
    expect(board.locator("tbody tr")).to_have_count(2)
    expect(page).to_have_url(re.compile(r"family=ridge"))
    page.reload(wait_until="domcontentloaded")  # a bookmarked URL shows the same table
    expect(page.locator("table.leaderboard tbody tr")).to_have_count(2)
    assert errors == []

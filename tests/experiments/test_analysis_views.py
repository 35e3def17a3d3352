"""The analysis pages through their public surface: the leaderboard (columns, sorts, filters,
pages, all in the URL), compare (page and CLI), lineage (experiment page and tree), chart data,
the experiment page's rendering, and Plotly served from our static files."""

import json
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.urls import reverse

from experiments.analysis import family_of
from experiments.models import Artifact, Experiment
from tests.factories import TaskFactory

CODE_A = "def train(X_train, y_train, X_test, *, artifacts_dir):\n    return [0.0] * len(X_test)\n"
CODE_B = "def train(X_train, y_train, X_test, *, artifacts_dir):\n    mean = sum(y_train) / len(y_train)\n    return [mean] * len(X_test)\n"


def _exp(domain, *, value=None, holdout=None, state="completed", code=CODE_A, **fields):
    metrics = {"rmse": value, "mae": value / 2 if value is not None else None} if value is not None else {}
    holdout_metrics = {"rmse": holdout, "mae": holdout / 2} if holdout is not None else {}
    return Experiment.objects.create(
        domain=domain, state=state, train_code=code, code_sha256="0" * 64, metrics=metrics,
        holdout_metrics=holdout_metrics, primary_value=value, holdout_primary_value=holdout,
        # What experiments.ranking.ranking_update stores for a one-seed configuration.
        rank_value=value if state == "completed" else None, family=family_of(fields.get("variables")), **fields,
    )


@pytest.fixture
def task(db):
    return TaskFactory()


@pytest.fixture
def domain(task):
    return task.domain


@pytest.fixture
def board(domain):
    """Six experiments: a lineage root → child → grandchild (the best), a sibling, a failed one,
    and a reproduction of the root (never a leaderboard row)."""
    root = _exp(domain, value=60.0, holdout=62.0, hypothesis="mean baseline", variables={"family": "dummy"})
    child = _exp(domain, value=55.0, holdout=58.0, hypothesis="ridge alpha 1", parent=root, code=CODE_B,
                 variables={"family": "ridge", "params": {"alpha": 1.0}}, train_seconds=0.5)
    best = _exp(domain, value=50.0, holdout=57.0, hypothesis="ridge alpha 10", parent=child, code=CODE_B,
                variables={"family": "ridge", "params": {"alpha": 10.0}}, train_seconds=0.7)
    sibling = _exp(domain, value=58.0, holdout=51.0, hypothesis="forest deep", parent=root,
                   variables={"family": "random_forest", "params": {"max_depth": 8}}, train_seconds=3.0)
    failed = _exp(domain, state="failed", hypothesis="broken idea", error="ValueError: nope")
    repro = _exp(domain, value=60.0, holdout=62.0, hypothesis="Reproduce #root", reproduction_of=root)
    return {"root": root, "child": child, "best": best, "sibling": sibling, "failed": failed, "repro": repro}


def _ids(response):
    return [row["exp"].pk for row in response.context["rows"]]


def test_it_ranks_best_first_and_keeps_reproductions_off_the_leaderboard(client_logged_in, domain, board):
    url = reverse("experiments:domain_list", args=[domain.pk])
    ids = _ids(client_logged_in.get(url))
    assert ids[:4] == [board["best"].pk, board["child"].pk, board["sibling"].pk, board["root"].pk]
    assert ids[-1] == board["failed"].pk and board["repro"].pk not in ids
    # The old URL keeps working.
    assert _ids(client_logged_in.get(url, {"sort": "validation"}))[0] == board["best"].pk


def test_it_sorts_by_clicking_headers_both_ways(client_logged_in, domain, board):
    url = reverse("experiments:domain_list", args=[domain.pk])
    by_holdout = client_logged_in.get(url, {"sort": "holdout"})
    assert _ids(by_holdout)[:2] == [board["sibling"].pk, board["best"].pk]
    html = by_holdout.content.decode()
    # The holdout header now links to the reverse order, with the filters kept and the page reset.
    assert "sort=holdout&amp;dir=desc" in html and 'class="sort asc"' in html
    worst_first = _ids(client_logged_in.get(url, {"sort": "holdout", "dir": "desc"}))
    assert worst_first[0] == board["root"].pk
    slowest = _ids(client_logged_in.get(url, {"sort": "train_seconds", "dir": "desc"}))
    assert slowest[0] == board["sibling"].pk
    newest = _ids(client_logged_in.get(url, {"sort": "created"}))
    assert newest[0] == board["failed"].pk


def test_it_filters_by_state_run_family_and_hypothesis_text(client_logged_in, domain, board):
    url = reverse("experiments:domain_list", args=[domain.pk])
    assert _ids(client_logged_in.get(url, {"state": "failed"})) == [board["failed"].pk]
    assert set(_ids(client_logged_in.get(url, {"family": "ridge"}))) == {board["child"].pk, board["best"].pk}
    assert _ids(client_logged_in.get(url, {"q": "FOREST"})) == [board["sibling"].pk]
    by_run = client_logged_in.get(url, {"run": "12345"})
    assert _ids(by_run) == [] and "charts/history.json?run=12345" in by_run.content.decode()
    combined = client_logged_in.get(url, {"family": "ridge", "q": "alpha 10", "sort": "holdout"})
    assert _ids(combined) == [board["best"].pk]
    # Bad values fall back to defaults and say so; never a 500.
    bad = client_logged_in.get(url, {"sort": "nonsense", "page": "x", "run": "abc", "dir": "up", "state": "zzz"})
    assert bad.status_code == 200 and "Ignored in the URL" in bad.content.decode()


def test_it_shows_the_columns_the_user_chose(client_logged_in, domain, board):
    url = reverse("experiments:domain_list", args=[domain.pk])
    default = client_logged_in.get(url).content.decode()
    head = default.split("<thead>")[1].split("</thead>")[0]
    assert "rmse (holdout)" in head and "alpha" not in head
    chosen = client_logged_in.get(url, {"cols": ["val:mae", "param:alpha", "family", "parent", "run", "bogus"]})
    html = chosen.content.decode()
    assert [c.key for c in chosen.context["columns"]] == ["val:mae", "param:alpha", "family", "parent"] + ["run"]
    body = html.split("<tbody>")[1]
    assert ">25<" in body and ">10<" in body and ">random_forest<" in body
    assert f'href="/experiments/{board["root"].pk}/"' in body  # the parent column links to it
    assert "rmse (holdout)" not in html.split("<thead>")[1].split("</thead>")[0]


def test_it_pages_with_numbers_and_a_page_jump(client_logged_in, domain):
    Experiment.objects.bulk_create([
        Experiment(domain=domain, state="completed", train_code="x", code_sha256="0" * 64, primary_value=float(i),
                   rank_value=float(i),
                   metrics={"rmse": float(i)}, hypothesis=f"h{i}")
        for i in range(130)
    ])
    url = reverse("experiments:domain_list", args=[domain.pk])
    response = client_logged_in.get(url, {"page": "4", "q": "h"})
    assert response.context["page_obj"].number == 4
    assert [row["exp"].primary_value for row in response.context["rows"]][0] == 75.0
    html = response.content.decode()
    assert 'aria-current="page">4<' in html and "q=h&page=6" in html and 'name="page"' in html
    assert "Go to page" in html and 'max="6"' in html
    last = client_logged_in.get(url, {"page": "999"})
    assert last.context["page_obj"].number == 6


def test_it_renders_the_tab_as_a_fragment_with_charts_and_compare_checkboxes(client_logged_in, domain, board):
    url = reverse("experiments:domain_list", args=[domain.pk])
    fragment = client_logged_in.get(url, HTTP_HX_REQUEST="true").content.decode()
    assert fragment.lstrip().startswith("<div id=\"domain-experiments\"")
    assert 'data-chart="history"' in fragment and 'data-chart="scatter"' in fragment
    assert f'name="ids" value="{board["best"].pk}"' in fragment
    assert reverse("experiments:lineage", args=[domain.pk]) in fragment


def test_it_serves_all_chart_points_as_compact_arrays(client_logged_in, domain, board):
    data = client_logged_in.get(reverse("experiments:chart_data", args=[domain.pk, "history"])).json()
    assert data["ids"] == [board[k].pk for k in ("root", "child", "best", "sibling")]
    assert data["validation"] == [60.0, 55.0, 50.0, 58.0]
    assert data["holdout"] == [62.0, 58.0, 57.0, 51.0]
    assert data["best"] == [60.0, 55.0, 50.0, 50.0]
    assert data["url"] == "/experiments/{id}/"
    parallel = client_logged_in.get(reverse("experiments:chart_data", args=[domain.pk, "parallel"])).json()
    # Best first by rank value: best (alpha 10), child (alpha 1), sibling, root.
    assert parallel["ids"] == [board[k].pk for k in ("best", "child", "sibling", "root")]
    assert parallel["params"]["alpha"] == [10.0, 1.0, None, None] and parallel["total"] == 4
    assert client_logged_in.get(reverse("experiments:chart_data", args=[domain.pk, "nope"])).status_code == 404
    bad_run = client_logged_in.get(reverse("experiments:chart_data", args=[domain.pk, "history"]), {"run": "x"})
    assert bad_run.status_code == 422


def test_it_compares_metrics_params_code_and_artifacts(client_logged_in, domain, board, dojo_home):
    child, sibling = board["child"], board["sibling"]
    folder = dojo_home / "artifacts" / str(child.pk) / "train"
    folder.mkdir(parents=True)
    (folder / "coef.csv").write_text("a,b\n")
    Artifact.objects.create(experiment=child, path="train/coef.csv", size=4, content_type="text/csv")
    url = reverse("experiments:compare")
    response = client_logged_in.get(url, {"ids": f"{child.pk},{sibling.pk}"})
    assert response.status_code == 200
    data = response.context["data"]
    rmse_val = next(r for r in data["metrics"] if r.label == "rmse (validation)")
    assert rmse_val.values == [55.0, 58.0] and rmse_val.differs and rmse_val.best == 0
    rmse_hold = next(r for r in data["metrics"] if r.label == "rmse (holdout)")
    assert rmse_hold.best == 1  # the sibling generalises better
    alpha = next(r for r in data["variables"] if r.label == "alpha")
    assert alpha.values == [1.0, None] and alpha.differs
    html = response.content.decode()
    assert 'class="differs"' in html and "train/coef.csv" in html
    assert '<span class="add">+    mean = sum(y_train) / len(y_train)</span>' not in html  # diff is child → sibling
    assert '<span class="del">-    mean = sum(y_train) / len(y_train)</span>' in html
    # Only differences: the equal "state" fact row disappears.
    only = client_logged_in.get(url, {"ids": f"{child.pk},{sibling.pk}", "diff_only": "1"}).content.decode()
    assert 'data-row="state"' not in only and 'data-row="alpha"' in only
    assert 'data-row="state"' in html
    # Pick the pair to diff.
    picked = client_logged_in.get(url, {"ids": f"{board['root'].pk},{child.pk},{sibling.pk}", "a": board["root"].pk,
                                        "b": child.pk})
    assert '<span class="add">+    mean = sum(y_train) / len(y_train)</span>' in picked.content.decode()
    assert 'data-chart="parallel"' in html


def test_it_refuses_bad_compare_requests_clearly(client_logged_in, domain, board):
    url = reverse("experiments:compare")
    assert client_logged_in.get(url).status_code == 422
    assert client_logged_in.get(url, {"ids": "1,x"}).status_code == 422
    assert client_logged_in.get(url, {"ids": f"{board['root'].pk},99999999"}).status_code == 404
    other = _exp(TaskFactory().domain, value=1.0)
    mixed = client_logged_in.get(url, {"ids": f"{board['root'].pk},{other.pk}"})
    assert mixed.status_code == 422 and "different domains" in mixed.content.decode()


def test_it_compares_on_the_command_line(domain, board):
    ids = [str(board["child"].pk), str(board["sibling"].pk)]
    out = StringIO()
    call_command("dojo_experiments", "compare", *ids, "--json", stdout=out)
    data = json.loads(out.getvalue())
    assert data["ids"] == [int(i) for i in ids]
    row = next(r for r in data["metrics"] if r["label"] == "rmse (validation)")
    assert row["values"] == [55.0, 58.0] and row["best_index"] == 0
    out = StringIO()
    call_command("dojo_experiments", "compare", *ids, "--diff-only", stdout=out)
    text = out.getvalue()
    assert "* alpha" in text and "* rmse (validation)" in text and "state" not in text
    with pytest.raises(CommandError, match="does not exist"):
        call_command("dojo_experiments", "compare", ids[0], "99999999", stdout=StringIO())
    with pytest.raises(CommandError, match="must be numbers"):
        call_command("dojo_experiments", "compare", "abc", stdout=StringIO())


def test_it_shows_lineage_on_the_experiment_page_and_as_a_tree(client_logged_in, domain, board):
    html = client_logged_in.get(board["best"].get_absolute_url()).content.decode()
    strip = html.split('id="lineage"')[1].split("</div>")[0]
    assert f'#{board["root"].pk}</a> → ' in strip and f'#{board["child"].pk}</a> → ' in strip
    assert "no children" in strip
    root_page = client_logged_in.get(board["root"].get_absolute_url()).content.decode()
    root_strip = root_page.split('id="lineage"')[1].split("</div>")[0]
    assert f'#{board["child"].pk}</a>' in root_strip and f'#{board["sibling"].pk}</a>' in root_strip
    assert f'#{board["repro"].pk}</a>' not in root_strip  # a reproduction is not a child
    assert 'id="reproductions"' in root_page and f'#{board["repro"].pk}</a>' in root_page

    tree = client_logged_in.get(reverse("experiments:lineage", args=[domain.pk]))
    assert tree.status_code == 200
    page = tree.content.decode()
    # The best path (root → child → best) is open and highlighted; the sibling's branch is not.
    assert f'<details class="node best-path" open data-id="{board["root"].pk}">' in page
    assert f'<details class="node best-path" open data-id="{board["child"].pk}">' in page
    assert f'<div class="node leaf best-path" data-id="{board["best"].pk}">' in page
    assert f'<div class="node leaf" data-id="{board["sibling"].pk}">' in page
    assert f'data-id="{board["repro"].pk}"' not in page
    # A node off the best path loads its children when opened (htmx GET ?node=ID).
    other = _exp(domain, value=70.0, holdout=71.0, hypothesis="knn")
    leaf = _exp(domain, value=69.0, holdout=70.0, hypothesis="knn k=9", parent=other)
    page = client_logged_in.get(reverse("experiments:lineage", args=[domain.pk])).content.decode()
    assert f'?node={other.pk}" hx-trigger="toggle once"' in page and "knn k=9" not in page
    opened = client_logged_in.get(reverse("experiments:lineage", args=[domain.pk]), {"node": other.pk})
    assert f'data-id="{leaf.pk}"' in opened.content.decode() and "knn k=9" in opened.content.decode()
    assert client_logged_in.get(reverse("experiments:lineage", args=[domain.pk]), {"node": "x"}).status_code == 404


def test_it_renders_the_experiment_page_cleanly(client_logged_in, domain, board):
    failed = board["failed"]
    html = client_logged_in.get(failed.get_absolute_url()).content.decode()
    assert "train / total" not in html and " s / " not in html
    assert "ValueError: nope" in html and "failed before it was scored" in html
    best = client_logged_in.get(board["best"].get_absolute_url()).content.decode()
    variables = best.split('id="variables"')[1].split("</table>")[0]
    assert "<th>alpha</th><td><code>10</code></td>" in variables and "<th>family</th>" in variables
    code = best.split('id="train-code"')[1]
    # One line number per code line, in the same table (pygments' table layout).
    assert 'class="linenos"' in code and 'class="highlighttable"' in code
    assert client_logged_in.get(board["repro"].get_absolute_url()).content.decode().count("A reproduction of") == 1


def test_it_serves_plotly_from_our_static_files():
    from django.contrib.staticfiles import finders

    found = finders.find("vendor/plotly/plotly.min.js")
    assert found and open(found, "rb").read(200).lstrip().startswith(b"/**")
    listed = list(finders.get_finder("dojo_site.staticfinders.PackageFinder").list([]))
    assert [(name, storage.prefix) for name, storage in listed] == [("plotly.min.js", "vendor/plotly")]


def test_it_collects_plotly_for_serving_with_debug_off(settings, tmp_path):
    settings.STATIC_ROOT = tmp_path / "static"
    call_command("collectstatic", "--noinput", stdout=StringIO())
    collected = tmp_path / "static" / "vendor" / "plotly" / "plotly.min.js"
    assert collected.is_file() and collected.stat().st_size > 1_000_000
    assert (tmp_path / "static" / "dojo" / "charts.js").is_file()


def test_it_needs_a_login_everywhere(client, domain, board):
    for url in (reverse("experiments:domain_list", args=[domain.pk]), reverse("experiments:lineage", args=[domain.pk]),
                reverse("experiments:compare") + f"?ids={board['root'].pk}",
                reverse("experiments:chart_data", args=[domain.pk, "history"]),
                reverse("experiments:reproductions", args=[board["root"].pk])):
        assert client.get(url).status_code == 302, url


def test_it_hides_domains_and_holdout_values_per_role(client, other_user, domain, board):
    from domains.models import DomainMember

    client.force_login(other_user)
    urls = [reverse("experiments:domain_list", args=[domain.pk]), reverse("experiments:lineage", args=[domain.pk]),
            reverse("experiments:compare") + f"?ids={board['root'].pk},{board['child'].pk}",
            reverse("experiments:chart_data", args=[domain.pk, "history"]),
            reverse("experiments:reproductions", args=[board["root"].pk])]
    for url in urls:
        assert client.get(url).status_code == 404, url  # not a member: the domain does not exist for them
    DomainMember.objects.create(domain=domain, user=other_user, role="viewer")
    domain.hide_holdout_from_viewers = True
    domain.save(update_fields=["hide_holdout_from_viewers"])
    for url in urls:
        assert client.get(url).status_code == 200, url
    assert client.get(urls[3]).json()["holdout"] == []
    compare = client.get(urls[2])
    assert not any("holdout" in r.label for r in compare.context["data"]["metrics"])
    board_page = client.get(urls[0], {"sort": "holdout"})
    assert "sort" in board_page.context["ignored"] and "62" not in board_page.content.decode().split("<tbody>")[1]
    # A viewer may not reproduce (an edit).
    assert client.post(reverse("experiments:reproduce", args=[board["root"].pk])).status_code == 403


def test_it_leaves_quarantined_experiments_out_of_the_best_order(client_logged_in, domain, board):
    Experiment.objects.filter(pk=board["best"].pk).update(quarantine_state="quarantined")
    url = reverse("experiments:domain_list", args=[domain.pk])
    best_first = _ids(client_logged_in.get(url))
    assert board["best"].pk not in best_first and best_first[0] == board["child"].pk
    by_validation = client_logged_in.get(url, {"sort": "validation"})
    assert _ids(by_validation)[0] == board["best"].pk
    assert '<span class="badge bad" title="held back by the audit' in by_validation.content.decode()

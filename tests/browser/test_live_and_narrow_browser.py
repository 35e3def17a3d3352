"""The live run page follows new events unless the reader scrolled up; the main pages fit a
390 px phone screen (no horizontal page scroll, the menu collapses)."""

import pytest
from playwright.sync_api import expect

from agentrun.models import AgentEvent, AgentRun
from experiments.models import Experiment
from knowledge.services import atom_write
from tests.factories import DomainFactory
from tests.knowledge.helpers import make_experiment

AT_BOTTOM = "el => el.scrollHeight - el.scrollTop - el.clientHeight < 24"


def _add_events(run: AgentRun, start: int, count: int) -> None:
    AgentEvent.objects.bulk_create(
        AgentEvent(run=run, seq=seq, type="text", data={"text": f"thinking step {seq}"})
        for seq in range(start, start + count)
    )


@pytest.mark.slow
def test_the_live_page_follows_new_events_unless_scrolled_up(logged_in_page, live_server):
    domain = DomainFactory(name="live")
    run = AgentRun.objects.create(domain=domain, backend="builtin", status=AgentRun.Status.RUNNING)
    _add_events(run, 1, 120)
    page = logged_in_page
    page.set_default_timeout(20_000)  # a loaded 2-core machine; Plotly is 3.5 MB
    page.goto(f"{live_server.url}{run.get_absolute_url()}", wait_until="domcontentloaded")
    box = page.locator("#run-events")
    expect(page.locator("#event-120")).to_be_attached()
    assert box.evaluate(AT_BOTTOM), "the box opens at the newest event"

    # New events arrive (the page polls every second): the box follows them.
    _add_events(run, 121, 30)
    expect(page.locator("#event-150")).to_be_attached(timeout=10_000)
    page.wait_for_function(f"() => ({AT_BOTTOM})(document.getElementById('run-events'))", timeout=5_000)
    expect(page.locator("#run-follow-state")).to_have_text("following the newest events")

    # The reader scrolls up: new events are appended but the view stays where the reader is.
    box.evaluate("el => { el.scrollTop = 0; el.dispatchEvent(new Event('scroll')); }")
    expect(page.locator("#run-follow-state")).to_have_text("paused: scrolled up")
    _add_events(run, 151, 30)
    expect(page.locator("#event-180")).to_be_attached(timeout=10_000)
    assert box.evaluate("el => el.scrollTop") == 0
    jump = page.locator("#run-jump")
    expect(jump).to_be_visible()
    jump.click()
    page.wait_for_function(f"() => ({AT_BOTTOM})(document.getElementById('run-events'))", timeout=5_000)
    expect(jump).to_be_hidden()

    # Earlier events load on demand, above, without moving the reader.
    AgentEvent.objects.filter(run=run).delete()
    _add_events(run, 1, 250)  # pages of 100: 151-250 shown, then 51-150, then 1-50
    page.goto(f"{live_server.url}{run.get_absolute_url()}", wait_until="domcontentloaded")
    expect(page.locator("#event-151")).to_be_attached()
    expect(page.locator("#event-150")).to_have_count(0)
    page.click("#run-earlier button")
    expect(page.locator("#event-51")).to_be_attached()
    page.click("#run-earlier button")
    expect(page.locator("#event-1")).to_be_attached()
    expect(page.locator("#run-earlier")).to_have_count(0)


def _no_horizontal_scroll(page) -> None:
    widths = page.evaluate("() => [document.documentElement.scrollWidth, window.innerWidth]")
    assert widths[0] <= widths[1], f"the page is {widths[0]} px wide in a {widths[1]} px window: {page.url}"


@pytest.mark.slow
def test_the_main_pages_fit_a_390_px_screen(logged_in_page, live_server, user):
    domain = DomainFactory(
        name="a-domain-with-a-rather-long-name-that-does-not-fit", workspace_path="/tmp/" + "deep/" * 30,
        description="A long description " * 10,
    )
    experiment = make_experiment(domain, hypothesis="gradient boosting with a very long hypothesis " * 5)
    Experiment.objects.filter(pk=experiment.pk).update(
        state="completed", primary_value=0.5, train_code="x = '" + "y" * 400 + "'\n"
    )
    run = AgentRun.objects.create(domain=domain, backend="builtin", status=AgentRun.Status.COMPLETED)
    _add_events(run, 1, 5)
    atom_write(domain=domain, context="tabular " * 20, claim="Gradient boosting beats Ridge " * 4,
               evidence=[(experiment.pk, "supports")])
    page = logged_in_page
    page.set_default_timeout(30_000)
    page.set_viewport_size({"width": 390, "height": 844})
    urls = [
        "/domains/",
        f"/domains/{domain.pk}/",
        f"/domains/{domain.pk}/?tab=task",
        f"/experiments/domain/{domain.pk}/",
        f"/experiments/{experiment.pk}/",
        "/runs/",
        f"/runs/domain/{domain.pk}/",
        run.get_absolute_url(),
        "/knowledge/?q=boosting",
        f"/knowledge/domain/{domain.pk}/",
    ]
    for url in urls:
        page.goto(f"{live_server.url}{url}")
        page.wait_for_load_state("networkidle")
        _no_horizontal_scroll(page)

    # The menu collapses behind a toggle, and opens.
    page.goto(f"{live_server.url}/domains/")
    nav = page.locator("#site-nav")
    expect(nav).to_be_hidden()
    page.click("label.nav-burger")
    expect(nav).to_be_visible()
    expect(nav.get_by_role("link", name="Knowledge")).to_be_visible()
    # At desktop width the menu is simply there.
    page.set_viewport_size({"width": 1280, "height": 900})
    page.goto(f"{live_server.url}/domains/")
    expect(page.locator("#site-nav")).to_be_visible()
    expect(page.locator("label.nav-burger")).to_be_hidden()

"""Start a run from the domain page, watch its experiments appear live, stop it.

The run executes where background runs always do: a real `manage.py qcluster` process (django-q2,
ORM broker on the test database), started for this test.
"""

import json
import signal
import subprocess
import sys

import pytest
from playwright.sync_api import expect

from agentrun.backends import BACKENDS
from agentrun.models import AgentRun
from experiments.models import Experiment
from tests.agentrun.conftest import GOOD_TRAIN, MEAN_TRAIN, frozen_domain_make, frozen_template  # noqa: F401
from tests.agentrun.test_background import WORKER
from tests.agentrun.test_background import _subprocess_env as subprocess_env

SCRIPT = {
    "steps": [
        {"text": "Trying a baseline, then Ridge."},
        {"tool": "run_experiment", "args": {"code": MEAN_TRAIN, "hypothesis": "mean baseline"}},
        {"tool": "run_experiment", "args": {"code": GOOD_TRAIN, "hypothesis": "ridge"}},
        {"text": "Waiting for more ideas."},
        {"until_stopped": 120},
    ],
}


@pytest.fixture
def qcluster(dojo_home, tmp_path, transactional_db):
    env = subprocess_env(dojo_home, SCRIPT, tmp_path)
    process = subprocess.Popen(
        [sys.executable, str(WORKER), "manage", "qcluster"], env=env,
        stdout=subprocess.DEVNULL, stderr=(tmp_path / "qcluster.log").open("w"),
    )
    yield process
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()


@pytest.mark.slow
def test_it_starts_a_run_watches_experiments_appear_and_stops_it(
    logged_in_page, live_server, frozen_template, workspace, dojo_home, qcluster, monkeypatch  # noqa: F811
):
    monkeypatch.setitem(BACKENDS, "scripted", "tests.agentrun.scripted_backend")
    domain = frozen_domain_make(frozen_template, name="diabetes", workspace=workspace, home=dojo_home)
    page = logged_in_page
    slow = 90_000  # ms: a worker starts, picks the run up, then trains two models (slow under load)

    page.goto(f"{live_server.url}/domains/{domain.pk}/?tab=runs")
    page.select_option("#id_backend", "scripted")
    page.fill("#id_max_experiments", "5")
    page.click("#run-start-form button[type=submit]")

    expect(page.locator("h1").first).to_contain_text("Run #", timeout=slow)
    run = AgentRun.objects.get()
    assert page.url.endswith(run.get_absolute_url())
    # Events arrive through polling while the worker runs the experiments.
    expect(page.locator(".event-experiment")).to_have_count(2, timeout=slow)
    expect(page.locator("#run-status")).to_contain_text("Running", timeout=slow)
    best = Experiment.objects.filter(run=run).order_by("primary_value").first()
    expect(page.locator("#run-best")).to_contain_text(f"#{best.pk}", timeout=slow)
    expect(page.locator("#run-experiments")).to_contain_text("2 completed", timeout=slow)
    expect(page.locator("#run-events")).to_contain_text("Waiting for more ideas.", timeout=slow)

    page.click("#run-stop")
    expect(page.locator("#run-status")).to_contain_text("Stopped", timeout=slow)
    expect(page.locator("#run-events .event-finalized")).to_have_count(1, timeout=slow)
    # Once the run is over the poller is rendered without a trigger: polling has ended.
    expect(page.locator("#run-poller")).to_have_attribute("data-terminal", "1", timeout=slow)
    assert page.locator("#run-poller").get_attribute("hx-trigger") is None
    run.refresh_from_db()
    assert run.status == "stopped" and run.stop_requested
    assert json.dumps(run.result).count("stop requested") == 1

"""SIGTERM to the worker's whole process group (what systemd sends) stops it within 10 s, and the run it
was executing ends `stopped`, not `running` until the reaper."""

import os
import signal
import subprocess
import sys
import time

import pytest
from django.conf import settings

from agentrun.models import AgentRun
from agentrun.services import run_start
from tests.agentrun.helpers import wait_for
from tests.dburl import subprocess_database_url


def _worker(dojo_home) -> subprocess.Popen:
    env = os.environ | {
        "DATABASE_URL": subprocess_database_url(), "SECRET_KEY": settings.SECRET_KEY,
        "DOJO_HOME": str(dojo_home), "DOJO_Q_WORKERS": "1",
    }
    return subprocess.Popen(
        [sys.executable, str(settings.BASE_DIR / "manage.py"), "qcluster"], env=env, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )


def _stop_group(worker: subprocess.Popen) -> float:
    started = time.monotonic()
    os.killpg(worker.pid, signal.SIGTERM)
    try:
        worker.wait(timeout=20)
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGKILL)
    return time.monotonic() - started


@pytest.mark.slow
def test_sigterm_to_an_idle_workers_group_stops_it_within_10_seconds(transactional_db, dojo_home):
    worker = _worker(dojo_home)
    time.sleep(6)  # the cluster is up (or starting: a stop during start-up must not hang either)
    assert worker.poll() is None
    assert _stop_group(worker) < 10


@pytest.mark.slow
def test_sigterm_to_a_busy_workers_group_stops_it_and_the_run_ends_stopped(frozen_domain, dojo_home):
    worker = _worker(dojo_home)
    run = run_start(domain=frozen_domain, max_experiments=500)
    wait_for(lambda: AgentRun.objects.get(pk=run.pk).status == "running", timeout=90, what="the run to start")
    time.sleep(2)
    took = _stop_group(worker)
    run.refresh_from_db()
    assert run.status == "stopped", (run.status, run.result, took)
    assert took < 10

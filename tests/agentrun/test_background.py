"""Background runs: enqueue after commit, a real qcluster, the reaper, and kill -9 of a worker."""

import json
import os
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
from django.conf import settings as django_settings
from django.utils import timezone
from django_q.conf import Conf
from django_q.models import OrmQ, Schedule
from django_q.signals import post_spawn

from agentrun.models import AgentEvent, AgentRun
from agentrun.services import run_create, run_reap, run_start
from experiments.models import Experiment
from tests.agentrun.conftest import MEAN_TRAIN
from tests.agentrun.helpers import assert_events_contiguous, wait_for
from tests.dburl import subprocess_database_url

WORKER = Path(__file__).with_name("worker_process.py")


def _running_run(domain, *, heartbeat_age: float) -> AgentRun:
    now = timezone.now()
    run = AgentRun.objects.create(
        domain=domain, backend="builtin", status="running", started_at=now - timedelta(hours=1),
        heartbeat_at=now - timedelta(seconds=heartbeat_age),
    )
    AgentEvent.objects.create(run=run, seq=1, type="text", data={"text": "working"})
    return run


def test_it_enqueues_only_after_the_transaction_commits(frozen_domain_in_transaction, django_capture_on_commit_callbacks, monkeypatch):
    monkeypatch.setattr(Conf, "SYNC", False)
    with django_capture_on_commit_callbacks() as callbacks:
        run = run_start(domain=frozen_domain_in_transaction, max_experiments=3)
        assert not OrmQ.objects.exists()
    assert len(callbacks) == 1
    callbacks[0]()
    queued = OrmQ.objects.get()
    assert queued.func() == "agentrun.tasks.run_execute_task" and queued.task["args"] == (run.pk,)
    # django-q2's timeout sits above the longest wall clock a run may have, and retry above that.
    from django.conf import settings

    assert queued.task["timeout"] == settings.Q_CLUSTER["timeout"] > settings.DOJO_RUN_MAX_SECONDS
    assert settings.Q_CLUSTER["retry"] > settings.Q_CLUSTER["timeout"]
    run.refresh_from_db()
    assert run.queue_task_id == queued.task["id"] and run.status == "queued"


def test_it_runs_a_queued_run_in_sync_mode(frozen_domain, scripted, monkeypatch):
    monkeypatch.setattr(Conf, "SYNC", True)
    scripted([{"tool": "run_experiment", "args": {"code": MEAN_TRAIN, "hypothesis": "mean"}}])
    run = run_start(domain=frozen_domain, backend="scripted")
    run.refresh_from_db()
    assert run.status == "completed" and run.queue_task_id
    assert Experiment.objects.filter(run=run, state="completed").count() == 1


def test_the_reaper_fails_stale_runs_and_their_experiments(frozen_domain):
    stale = _running_run(frozen_domain, heartbeat_age=3600)
    fresh = _running_run(frozen_domain, heartbeat_age=1)
    queued = AgentRun.objects.create(domain=frozen_domain, backend="builtin")
    left_running = Experiment.objects.create(domain=frozen_domain, run=stale, train_code="x", code_sha256="0" * 64, state="running")

    assert run_reap() == [stale.pk]
    assert run_reap() == []

    stale.refresh_from_db()
    assert stale.status == "failed" and stale.error.startswith("worker lost") and stale.finished_at
    left_running.refresh_from_db()
    assert left_running.state == "failed" and left_running.error.startswith("worker lost")
    events = assert_events_contiguous(stale)
    assert [e.type for e in events] == ["text", "error", "finalized"]
    fresh.refresh_from_db()
    queued.refresh_from_db()
    assert fresh.status == "running" and queued.status == "queued"


def test_the_reaper_runs_on_worker_start_and_on_a_schedule(frozen_domain):
    stale = _running_run(frozen_domain, heartbeat_age=3600)
    post_spawn.send(sender="django_q", proc_name="Process-1")
    stale.refresh_from_db()
    assert stale.status == "failed"
    schedule = Schedule.objects.get(name="dojo-run-reaper")
    assert schedule.func == "agentrun.tasks.run_reap_task" and schedule.schedule_type == Schedule.MINUTES


def _subprocess_env(home: Path, script: dict, tmp_path: Path, **extra: str) -> dict:
    script_file = tmp_path / "script.json"
    script_file.write_text(json.dumps(script))
    return {
        **os.environ,
        "DATABASE_URL": subprocess_database_url(),
        # The same key as this process: django-q2 signs queued tasks with it.
        "SECRET_KEY": django_settings.SECRET_KEY,
        "DOJO_HOME": str(home),
        "DOJO_SCRIPTED_BACKEND": str(script_file),
        **extra,
    }


def _pids_with(marker: str) -> list[int]:
    pids = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                if marker in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"):
                    pids.append(int(pid))
            except OSError:
                pass
    return pids


@pytest.mark.slow
def test_kill_9_of_a_worker_mid_run_is_reaped(frozen_domain, scripted, dojo_home, tmp_path, settings):
    marker = "3600.9191"
    slow = f"""
import subprocess, time

def train(X_train, y_train, X_test, *, artifacts_dir):
    subprocess.Popen(["sleep", "{marker}"])
    time.sleep(600)
"""
    script = {"steps": [
        {"text": "before the kill"},
        {"tool": "run_experiment", "args": {"code": MEAN_TRAIN, "hypothesis": "mean"}},
        {"tool": "run_experiment", "args": {"code": slow, "hypothesis": "hangs until killed"}},
    ]}
    settings.DOJO_HEARTBEAT_TIMEOUT_SECONDS = 2
    run = run_create(domain=frozen_domain, backend="scripted")
    env = _subprocess_env(dojo_home, script, tmp_path, DOJO_HEARTBEAT_TIMEOUT_SECONDS="2")
    worker = subprocess.Popen([sys.executable, str(WORKER), "execute", str(run.pk)], env=env)
    try:
        wait_for(lambda: _pids_with(marker), timeout=60, what="the second experiment to be training")
        seen = list(AgentEvent.objects.filter(run=run).order_by("seq").values_list("seq", "type"))
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait(10)
    finally:
        if worker.poll() is None:
            worker.kill()
    run.refresh_from_db()
    assert run.status == "running"  # nobody has noticed yet

    time.sleep(2.5)  # the heartbeat is now older than the timeout
    assert run_reap() == [run.pk]

    run.refresh_from_db()
    assert run.status == "failed" and run.error.startswith("worker lost")
    states = dict(Experiment.objects.filter(run=run).values_list("hypothesis", "state"))
    assert states == {"mean": "completed", "hangs until killed": "failed"}
    events = assert_events_contiguous(run)
    # Every event written before the kill is still there, in order.
    assert [(e.seq, e.type) for e in events][: len(seen)] == seen
    assert any(e.type == "text" and e.data["text"] == "before the kill" for e in events)
    # The sandbox dies with the worker, so the trainer's own child is gone too.
    wait_for(lambda: not _pids_with(marker), timeout=15, what="the orphaned trainer to die")


@pytest.mark.slow
def test_a_real_qcluster_executes_a_run_and_reaps_on_start(frozen_domain, scripted):
    from django_q.cluster import Cluster

    stale = _running_run(frozen_domain, heartbeat_age=3600)
    scripted([{"text": "from the worker"}, {"tool": "run_experiment", "args": {"code": MEAN_TRAIN, "hypothesis": "mean"}}])
    run = run_start(domain=frozen_domain, backend="scripted")
    cluster = Cluster()
    cluster.start()
    try:
        wait_for(lambda: AgentRun.objects.get(pk=run.pk).is_terminal, timeout=90, what="the worker to finish the run")
    finally:
        cluster.stop()
    run.refresh_from_db()
    assert run.status == "completed", run.error
    assert run.worker_pid and run.worker_pid != os.getpid()
    assert Experiment.objects.filter(run=run, state="completed").count() == 1
    assert_events_contiguous(run)
    stale.refresh_from_db()
    assert stale.status == "failed"

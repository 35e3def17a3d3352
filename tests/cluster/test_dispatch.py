"""One run's experiments over the queue (DOJO_DISPATCH=queue): recorded `pending`, run by a separate
experiment worker (`DOJO_Q_ROLE=experiments manage.py qcluster`, a real subprocess here), waited for by
the run; a worker killed mid-experiment has it retried once, then failed; a stop reaches the worker."""

import os
import signal
import subprocess
import sys
import threading
import time
from datetime import timedelta

import pytest
from django.db import connections
from django.utils import timezone
from django_q.brokers import get_broker
from django_q.conf import Conf
from django_q.models import OrmQ

from agentrun.models import AgentRun
from agentrun.services import run_create, run_execute, run_start
from dojo_site import queues
from dojo_site.errors import InvalidInput
from dojo_site.procs import process_tree
from experiments.harness import pool
from experiments.models import Experiment
from experiments.services import DIED_TWICE, experiment_dispatch, experiments_requeue_lost
from tests.agentrun.helpers import wait_for
from tests.cluster.helpers import experiment_workers_start, process_group_stop, worker_log
from tests.dburl import subprocess_database_url
from tests.factories import frozen_domain

MEAN_TRAIN = """
import numpy as np

def train(X_train, y_train, X_test, *, artifacts_dir):
    return np.full(len(X_test), float(np.mean(y_train)))
"""

# Long enough to be killed in the middle, short enough for the retry to finish quickly.
SLEEPY_TRAIN = """
import time
import numpy as np

def train(X_train, y_train, X_test, *, artifacts_dir):
    time.sleep({seconds})
    return np.full(len(X_test), float(np.mean(y_train)))
"""


@pytest.fixture(autouse=True)
def _queue_dispatch(settings, monkeypatch):
    settings.DOJO_DISPATCH = "queue"
    monkeypatch.setattr(Conf, "SYNC", False)
    yield
    pool.pool_stop_all()


@pytest.fixture
def domain(workspace, transactional_db):
    return frozen_domain(workspace=workspace, loader="load_diabetes", name="dispatch")


@pytest.fixture
def experiment_workers(dojo_home, transactional_db, settings):
    cluster = experiment_workers_start(dojo_home, settings)
    yield cluster
    process_group_stop(cluster)


def _dispatch_in_thread(domain, code: str, stop: threading.Event | None = None) -> tuple[threading.Thread, dict]:
    """experiment_dispatch as a run's thread calls it; the returned dict gets "experiment"."""
    out: dict = {}

    def target() -> None:
        try:
            out["experiment"] = experiment_dispatch(
                domain=domain, train_code=code, hypothesis="queued", should_stop=stop.is_set if stop else None
            )
        except BaseException as exc:  # surfaced by the test
            out["error"] = exc
        finally:
            connections.close_all()

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, out


def _diagnosis(dojo_home) -> str:
    """What a failed wait saw: the experiment rows, the queue's entries and the workers' log."""
    rows = list(Experiment.objects.values("pk", "state", "attempts", "worker_pid", "heartbeat_at", "error"))
    entries = [(e.key, e.lock, e.task_id()) for e in OrmQ.objects.all()]
    return f"experiments: {rows}\nqueue: {entries}\n{worker_log(dojo_home)}"


def _running(hypothesis: str = "queued", attempts: int = 1):
    return lambda: Experiment.objects.filter(
        hypothesis=hypothesis, state="running", attempts=attempts, worker_pid__isnull=False
    ).exists()


# --- without a worker ---------------------------------------------------------------------------


def test_it_refuses_bad_arguments_before_recording_or_queueing_anything(domain):
    with pytest.raises(InvalidInput, match="the train code is empty"):
        experiment_dispatch(domain=domain, train_code="  ", hypothesis="nothing")
    assert not Experiment.objects.exists() and not OrmQ.objects.exists()


def test_it_queues_on_the_experiments_queue_and_a_stop_before_any_worker_took_it_ends_it(domain, settings):
    stop = threading.Event()
    thread, out = _dispatch_in_thread(domain, MEAN_TRAIN, stop)
    wait_for(lambda: OrmQ.objects.exists(), what="the experiment to be queued")
    entry = OrmQ.objects.get()
    assert entry.key == settings.DOJO_EXPERIMENT_QUEUE == "dojo-experiments"
    assert entry.func() == "experiments.tasks.experiment_run_pending_task"
    assert Experiment.objects.get().state == "pending"
    stop.set()
    thread.join(5)
    assert not thread.is_alive() and "error" not in out, out
    exp = out["experiment"]
    assert exp.state == "stopped" and exp.stop_requested and exp.attempts == 0


def test_the_waiting_run_requeues_its_experiment_when_its_worker_on_this_host_is_gone(domain):
    from experiments.services import WORKER_HOST

    stop = threading.Event()
    thread, out = _dispatch_in_thread(domain, MEAN_TRAIN, stop)
    wait_for(lambda: OrmQ.objects.exists(), what="the experiment to be queued")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # reaped: its pid names no process now
    # As a worker of this host claims it, then dies before its first missed heartbeat.
    Experiment.objects.update(state="running", attempts=1, worker_host=WORKER_HOST, worker_pid=dead.pid,
                              heartbeat_at=timezone.now(), started_at=timezone.now())
    # No reaper runs here: the waiting run itself puts it back in the queue.
    wait_for(lambda: Experiment.objects.filter(state="pending", attempts=1, worker_pid__isnull=True).exists(),
             timeout=15, what="the waiting run to requeue its experiment")
    assert OrmQ.objects.count() == 2  # a new entry beside the one the "dead worker" took
    stop.set()
    thread.join(10)
    assert not thread.is_alive() and "error" not in out, out
    assert out["experiment"].state == "stopped"


def test_the_reaper_requeues_an_experiment_whose_worker_stopped_beating_once_then_fails_it(domain, settings):
    exp = Experiment.objects.create(
        domain=domain, train_code=MEAN_TRAIN, code_sha256="0" * 64, state="running", attempts=1,
        worker_host="another-machine", worker_pid=4242,
        heartbeat_at=timezone.now() - timedelta(seconds=settings.DOJO_HEARTBEAT_TIMEOUT_SECONDS + 5),
    )
    fresh = Experiment.objects.create(
        domain=domain, train_code=MEAN_TRAIN, code_sha256="0" * 64, state="running", attempts=1,
        worker_host="another-machine", worker_pid=4243, heartbeat_at=timezone.now(),
    )
    assert experiments_requeue_lost() == [exp.pk]
    assert experiments_requeue_lost() == []
    exp.refresh_from_db()
    assert exp.state == "pending" and exp.heartbeat_at is None and not exp.worker_pid
    assert OrmQ.objects.get().key == settings.DOJO_EXPERIMENT_QUEUE  # queued again for any worker

    # Its second worker dies too.
    Experiment.objects.filter(pk=exp.pk).update(
        state="running", attempts=2, worker_host="a-third-machine", worker_pid=99,
        heartbeat_at=timezone.now() - timedelta(seconds=settings.DOJO_HEARTBEAT_TIMEOUT_SECONDS + 5),
    )
    assert experiments_requeue_lost() == [exp.pk]
    exp.refresh_from_db()
    assert exp.state == "failed" and exp.error.startswith(DIED_TWICE) and exp.finished_at
    fresh.refresh_from_db()
    assert fresh.state == "running"


def test_a_queued_by_hand_experiment_with_a_beating_worker_is_left_to_it_however_old(domain):
    from experiments.services import experiment_limits, experiments_fail_stale

    long_ago = timezone.now() - timedelta(hours=3)
    beating = Experiment.objects.create(
        domain=domain, train_code=MEAN_TRAIN, code_sha256="0" * 64, state="running", attempts=1,
        worker_host="another-machine", worker_pid=4242, heartbeat_at=timezone.now(),
    )
    Experiment.objects.filter(pk=beating.pk).update(created_at=long_ago)
    assert experiments_fail_stale(domain=domain, limits=experiment_limits(task=domain.task)) == 0
    beating.refresh_from_db()
    assert beating.state == "running"


# --- with a real experiment worker --------------------------------------------------------------


@pytest.mark.slow
def test_a_builtin_run_completes_with_its_experiments_run_by_the_experiment_worker(domain, experiment_workers):
    run = run_create(domain=domain, backend="builtin", max_experiments=3)
    run = run_execute(run_id=run.pk)
    assert run.status == "completed", (run.error, run.result)
    assert run.worker_pid == os.getpid()
    experiments = list(Experiment.objects.filter(run=run))
    assert len(experiments) == 3
    assert {e.state for e in experiments} == {"completed"}, [(e.state, e.error) for e in experiments]
    for exp in experiments:
        assert exp.worker_pid and exp.worker_pid != run.worker_pid and exp.attempts == 1
        assert exp.primary_value is not None


@pytest.mark.slow
def test_an_experiment_whose_worker_is_killed_is_retried_once_and_completes(domain, experiment_workers, dojo_home):
    thread, out = _dispatch_in_thread(domain, SLEEPY_TRAIN.format(seconds=4))
    wait_for(_running(), timeout=60, what="a worker to take the experiment")
    time.sleep(1.5)  # inside train()
    first = Experiment.objects.get().worker_pid
    os.kill(first, signal.SIGKILL)
    # The reaper (every minute, and at the respawned worker's start) requeues it; a new worker then
    # starts a trainer and trains for 4 s. At load 5–7 on 2 cores that took over 90 s once.
    thread.join(240)
    assert not thread.is_alive() and "error" not in out, (out, _diagnosis(dojo_home))
    exp = out["experiment"]
    assert exp.state == "completed", exp.error
    assert exp.attempts == 2 and exp.worker_pid != first and exp.primary_value is not None


@pytest.mark.slow
def test_an_experiment_whose_worker_dies_twice_fails_with_the_reason(domain, experiment_workers, dojo_home):
    thread, out = _dispatch_in_thread(domain, SLEEPY_TRAIN.format(seconds=60))
    wait_for(_running(attempts=1), timeout=60, what="a worker to take the experiment")
    os.kill(Experiment.objects.get().worker_pid, signal.SIGKILL)
    wait_for(_running(attempts=2), timeout=60, what="a second worker to take the experiment")
    os.kill(Experiment.objects.get().worker_pid, signal.SIGKILL)
    thread.join(60)
    assert not thread.is_alive() and "error" not in out, (out, _diagnosis(dojo_home))
    exp = out["experiment"]
    assert exp.state == "failed" and exp.error.startswith(DIED_TWICE), exp.error


@pytest.mark.slow
def test_a_stop_request_stops_the_experiment_on_its_worker(domain, experiment_workers):
    stop = threading.Event()
    thread, out = _dispatch_in_thread(domain, SLEEPY_TRAIN.format(seconds=120), stop)
    wait_for(_running(), timeout=60, what="a worker to take the experiment")
    time.sleep(1)
    stop.set()
    asked = time.monotonic()
    thread.join(30)
    assert not thread.is_alive() and "error" not in out, out
    exp = out["experiment"]
    # Ended by its worker (which killed the trainer), not by the run giving up on it.
    assert exp.state == "stopped" and exp.error == "stopped", exp.error
    assert exp.worker_pid != os.getpid() and time.monotonic() - asked < 15


@pytest.mark.slow
def test_stopping_a_run_stops_its_experiment_on_the_worker(domain, experiment_workers, monkeypatch):
    """The run's own stop (the web's Stop button) travels to the worker through the experiment."""
    from agentrun.backends import BACKENDS
    from agentrun.services import run_stop_request
    from tests.agentrun import scripted_backend

    monkeypatch.setitem(BACKENDS, "scripted", "tests.agentrun.scripted_backend")
    monkeypatch.setattr(scripted_backend, "SCRIPT", [
        {"tool": "run_experiment", "args": {"code": SLEEPY_TRAIN.format(seconds=120), "hypothesis": "slow"}},
    ])
    monkeypatch.setattr(scripted_backend, "FINDINGS", [])
    run = run_create(domain=domain, backend="scripted")
    result: dict = {}

    def execute() -> None:
        try:
            result["run"] = run_execute(run_id=run.pk)
        finally:
            connections.close_all()

    thread = threading.Thread(target=execute, daemon=True)
    thread.start()
    wait_for(_running("slow"), timeout=60, what="a worker to take the run's experiment")
    run_stop_request(run=AgentRun.objects.get(pk=run.pk))
    thread.join(30)
    assert not thread.is_alive()
    assert result["run"].status == "stopped"
    exp = Experiment.objects.get(run=run)
    assert exp.state == "stopped" and exp.error == "stopped" and exp.worker_pid != os.getpid()


@pytest.mark.slow
def test_sigterm_to_an_experiment_worker_requeues_its_experiment_without_counting_a_death(
    domain, dojo_home, settings
):
    # Longer than the stop grace (DOJO_WORKER_STOP_SECONDS, 6 s): the first worker is killed in it.
    thread, out = _dispatch_in_thread(domain, SLEEPY_TRAIN.format(seconds=10))
    first = experiment_workers_start(dojo_home, settings, workers=1)
    try:
        wait_for(_running(), timeout=60, what="a worker to take the experiment")
    finally:
        process_group_stop(first)
    exp = Experiment.objects.get()
    assert exp.state == "pending" and exp.attempts == 0 and thread.is_alive()
    second = experiment_workers_start(dojo_home, settings, workers=1)
    try:
        thread.join(60)
    finally:
        process_group_stop(second)
    assert not thread.is_alive() and "error" not in out, out
    assert out["experiment"].state == "completed" and out["experiment"].attempts == 1


@pytest.mark.slow
def test_a_run_worker_with_one_slot_and_an_experiment_worker_complete_a_run_on_each_broker(
    domain, dojo_home, settings, broker
):
    """The deployment of docs/cluster.md: the run holds the run worker's only slot while it waits;
    its experiments, on their own queue, run on the experiment worker."""
    settings.DOJO_EXPERIMENT_QUEUE = f"{broker['DOJO_QUEUE_NAME']}-experiments"
    env = os.environ | broker | {
        "DATABASE_URL": subprocess_database_url(), "SECRET_KEY": settings.SECRET_KEY,
        "DOJO_HOME": str(dojo_home), "DOJO_DISPATCH": "queue", "DOJO_Q_WORKERS": "1", "DOJO_RUN_PARALLEL": "2",
    }
    manage = [sys.executable, str(settings.BASE_DIR / "manage.py"), "qcluster"]
    quiet = {"start_new_session": True, "stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    runs = subprocess.Popen(manage, env=env, **quiet)
    experiments = subprocess.Popen(
        manage, env=env | {"DOJO_Q_ROLE": "experiments", "DOJO_EXPERIMENT_WORKERS": "2"}, **quiet
    )
    try:
        run = run_start(domain=domain, max_experiments=3)
        wait_for(lambda: AgentRun.objects.get(pk=run.pk).is_terminal, timeout=180, what="the run to finish")
    finally:
        process_group_stop(runs)
        process_group_stop(experiments)
    run.refresh_from_db()
    assert run.status == "completed", (run.error, run.result)
    done = list(run.experiments.all())
    assert len(done) == 3 and {e.state for e in done} == {"completed"}, [(e.state, e.error) for e in done]
    assert run.worker_pid not in {e.worker_pid for e in done} and os.getpid() not in {e.worker_pid for e in done}


@pytest.mark.slow
def test_an_experiment_prefetched_by_a_cluster_killed_with_sigkill_runs_on_the_next_one(
    domain, dojo_home, settings, broker, monkeypatch
):
    """The pusher of a cluster whose one worker is busy takes the next experiment off the queue and
    holds it; the whole cluster is then killed -9. The reaper queues it again, the next cluster runs it."""
    queue = settings.DOJO_EXPERIMENT_QUEUE = f"{broker['DOJO_QUEUE_NAME']}-experiments"
    # The clusters' stats with the ORM broker: the workers' file cache under their DOJO_HOME.
    settings.CACHES = {**settings.CACHES, "djangoq": {**settings.CACHES["djangoq"], "LOCATION": str(dojo_home / "cache" / "qcache")}}
    stop_busy = threading.Event()
    busy, busy_out = _dispatch_in_thread(domain, SLEEPY_TRAIN.format(seconds=120), stop_busy)
    first = experiment_workers_start(dojo_home, settings, workers=1, broker=broker)
    try:
        wait_for(_running(), timeout=90, what="the worker to take the first experiment")
        held, held_out = _dispatch_in_thread(domain, MEAN_TRAIN)
        wait_for(lambda: Experiment.objects.exclude(queue_task_id="").count() == 2
                 and get_broker(queue).queue_size() == 0, timeout=30, what="the pusher to take the second")

        def holding() -> bool:
            return any(stat.task_q_size >= 1 for stat in queues.cluster_stats(queue))

        wait_for(holding, timeout=30, what="the cluster's stats to show the experiment it holds")
        prefetched = Experiment.objects.get(state="pending")
        monkeypatch.setattr(queues, "QUEUE_LOST_AFTER_SECONDS", 1)
        time.sleep(1.5)
        assert experiments_requeue_lost() == []  # its live cluster may hold it: left alone
        dead = process_tree(first.pid)
        for pid in dead:  # the whole cluster dies at once, as with kill -9 of its process groups
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        first.wait(10)
    finally:
        process_group_stop(first)
    second = experiment_workers_start(dojo_home, settings, workers=2, broker=broker)
    try:
        def requeued() -> bool:
            experiments_requeue_lost()  # the reaper's minute tick, faster
            time.sleep(0.5)
            return Experiment.objects.filter(pk=prefetched.pk, attempts__gte=1).exists()

        wait_for(requeued, timeout=60, what="the reaper to queue the prefetched experiment again")
        held.join(120)
        assert not held.is_alive() and "error" not in held_out, (held_out, _diagnosis(dojo_home))
        stop_busy.set()
        busy.join(60)
    finally:
        process_group_stop(second)
    exp = held_out["experiment"]
    # One attempt lost with the dead cluster, one run by the next cluster.
    assert exp.state == "completed" and exp.attempts == 2, (exp.state, exp.error, _diagnosis(dojo_home))
    assert exp.primary_value is not None and exp.worker_pid not in dead
    assert not busy.is_alive() and busy_out["experiment"].state == "stopped"

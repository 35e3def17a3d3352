"""DOJO_DISPATCH=queue: an experiment an experiment cluster took off the queue and died with (before a
worker claimed it) is queued again by the reaper (once), then failed; one still waiting in the queue,
or held by a live experiment cluster, is left alone. On both brokers."""

from datetime import timedelta

import pytest
from django.db.models import F
from django.utils import timezone
from django_q.brokers import get_broker
from django_q.conf import Conf
from django_q.models import OrmQ
from django_q.signing import SignedPackage
from django_q.status import Status

from agentrun.services import run_reap
from dojo_site import queues
from dojo_site.queues import QUEUE_LOST_AFTER_SECONDS
from experiments.models import Experiment
from experiments.services import (
    DIED_TWICE,
    LOST_IN_QUEUE,
    experiment_enqueue,
    experiments_requeue_lost,
)
from experiments.tasks import experiment_run_pending_task
from tests.agentrun.conftest import MEAN_TRAIN


@pytest.fixture
def queue(broker, settings, monkeypatch, db):
    """The experiments' queue of this test's installation, as an experiment cluster takes from it."""
    settings.DOJO_DISPATCH = "queue"
    settings.DOJO_EXPERIMENT_QUEUE = f"{broker['DOJO_QUEUE_NAME']}-experiments"
    # An experiment cluster locks what it takes (ORM broker) for its own retry.
    monkeypatch.setattr(Conf, "RETRY", settings.DOJO_EXPERIMENT_QUEUE_RETRY)
    return get_broker(settings.DOJO_EXPERIMENT_QUEUE)


@pytest.fixture
def pending(queue, diabetes, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        exp = experiment_enqueue(domain=diabetes, train_code=MEAN_TRAIN, hypothesis="lost")
    exp.refresh_from_db()
    assert exp.state == "pending" and exp.queue_task_id and queue.queue_size() == 1
    return exp


def _taken_by_a_cluster(queue, exp: Experiment, seconds_ago: float) -> None:
    """What an experiment cluster's pusher does when it takes the entry, moved back in time (the ORM
    broker dates the take by its lock; Redis does not say, so the experiment's age stands in)."""
    assert queue.dequeue()
    OrmQ.objects.update(lock=F("lock") - timedelta(seconds=seconds_ago))
    Experiment.objects.filter(pk=exp.pk).update(created_at=F("created_at") - timedelta(seconds=seconds_ago))


def _cluster(born, task_q_size: int) -> Status:
    """A live cluster's stats as django-q2 saves them."""
    stat = Status(pid=4242, cluster_id="a-cluster")
    stat.tob, stat.task_q_size = born, task_q_size
    return stat


def _live(monkeypatch, **by_queue: list[Status]) -> None:
    """The queue boundary: these clusters are alive, per queue they serve."""
    monkeypatch.setattr(queues, "cluster_stats", lambda queue: by_queue.get(queue, []))


def test_it_requeues_an_experiment_a_dead_cluster_took_then_fails_it_the_second_time(
        pending, queue, django_capture_on_commit_callbacks):
    _taken_by_a_cluster(queue, pending, QUEUE_LOST_AFTER_SECONDS + 30)
    first = pending.queue_task_id
    with django_capture_on_commit_callbacks(execute=True):
        assert experiments_requeue_lost() == [pending.pk]
    pending.refresh_from_db()
    # Counted as an attempt: its one retry is used.
    assert pending.state == "pending" and pending.attempts == 1 and pending.queue_task_id not in ("", first)
    assert queue.queue_size() == 1  # a fresh entry waits; the dead cluster's ORM entry is gone
    assert OrmQ.objects.filter(lock__gt=timezone.now()).count() == 0
    assert experiments_requeue_lost() == []  # waiting in the queue again: left alone

    _taken_by_a_cluster(queue, pending, QUEUE_LOST_AFTER_SECONDS + 30)
    assert experiments_requeue_lost() == [pending.pk]
    pending.refresh_from_db()
    assert pending.state == "failed" and pending.finished_at
    assert pending.error == f"{DIED_TWICE} (last: {LOST_IN_QUEUE})"
    assert queue.queue_size() == 0 and not OrmQ.objects.exists()


def test_a_requeued_experiment_runs_once_however_often_it_is_delivered(
        pending, queue, django_capture_on_commit_callbacks):
    _taken_by_a_cluster(queue, pending, QUEUE_LOST_AFTER_SECONDS + 30)
    with django_capture_on_commit_callbacks(execute=True):
        assert experiments_requeue_lost() == [pending.pk]
    # The new entry, and the old one had a live cluster held it after all: one claim, one run.
    assert experiment_run_pending_task(pending.pk) == "completed"
    assert experiment_run_pending_task(pending.pk) == "completed"
    pending.refresh_from_db()
    assert pending.attempts == 2 and pending.primary_value is not None


def test_the_reaper_schedule_moves_it_too(pending, queue, django_capture_on_commit_callbacks):
    _taken_by_a_cluster(queue, pending, QUEUE_LOST_AFTER_SECONDS + 30)
    with django_capture_on_commit_callbacks(execute=True):
        run_reap()  # what the minute Schedule and every worker start call
    pending.refresh_from_db()
    assert pending.state == "pending" and pending.attempts == 1 and queue.queue_size() == 1


def test_it_leaves_an_experiment_waiting_in_the_queue_alone_however_old(pending, queue):
    OrmQ.objects.update(lock=timezone.now() - timedelta(hours=5))
    Experiment.objects.filter(pk=pending.pk).update(created_at=timezone.now() - timedelta(hours=5))
    assert experiments_requeue_lost() == []
    pending.refresh_from_db()
    assert pending.state == "pending" and pending.attempts == 0 and queue.queue_size() == 1


def test_it_leaves_one_taken_recently_alone(pending, queue):
    _taken_by_a_cluster(queue, pending, 5)
    assert experiments_requeue_lost() == []


def test_it_leaves_one_a_live_experiment_cluster_may_hold_alone(pending, queue, settings, monkeypatch):
    _taken_by_a_cluster(queue, pending, QUEUE_LOST_AFTER_SECONDS + 30)
    an_hour_ago = timezone.now() - timedelta(hours=1)
    experiments = settings.DOJO_EXPERIMENT_QUEUE
    # Alive before the take, with entries waiting in its task queue (all its workers busy): may hold it.
    _live(monkeypatch, **{experiments: [_cluster(an_hour_ago, task_q_size=1)]})
    assert experiments_requeue_lost() == []
    # Nothing waits inside it: it holds nothing, and a busy run cluster holds runs, never experiments.
    _live(monkeypatch, **{experiments: [_cluster(an_hour_ago, task_q_size=0)],
                          Conf.CLUSTER_NAME: [_cluster(an_hour_ago, task_q_size=2)]})
    assert experiments_requeue_lost() == [pending.pk]


def test_a_cluster_born_after_the_take_cannot_hold_it(pending, queue, broker, settings, monkeypatch):
    if broker["DOJO_BROKER"] != "orm":
        pytest.skip("Redis does not say when an entry was popped: any busy live cluster may hold it")
    _taken_by_a_cluster(queue, pending, QUEUE_LOST_AFTER_SECONDS + 30)
    _live(monkeypatch, **{settings.DOJO_EXPERIMENT_QUEUE: [_cluster(timezone.now(), task_q_size=1)]})
    assert experiments_requeue_lost() == [pending.pk]


def test_each_queue_sees_only_the_stats_of_its_own_clusters(queue, broker, settings, monkeypatch):
    """What an experiment cluster saves (dojo_site.apps gives it its own Q_STAT) is read by the
    experiments' reaper from any role's process, and never taken for a run cluster's."""
    experiments, runs = settings.DOJO_EXPERIMENT_QUEUE, Conf.CLUSTER_NAME
    for served, cluster_id in ((experiments, "an-experiment-cluster"), (runs, "a-run-cluster")):
        monkeypatch.setattr(Conf, "Q_STAT", queues.stats_key(served))  # as in that role's process
        stat = _cluster(timezone.now(), task_q_size=1)
        stat.cluster_id = cluster_id
        key = f"{Conf.Q_STAT}:{cluster_id}"
        queue.set_stat(key, SignedPackage.dumps(stat, True), 30)
    try:
        assert [s.cluster_id for s in queues.cluster_stats(experiments)] == ["an-experiment-cluster"]
        assert [s.cluster_id for s in queues.cluster_stats(runs)] == ["a-run-cluster"]
    finally:
        if broker["DOJO_BROKER"] == "redis":  # its keys would outlive the test by 30 s
            queue.connection.delete(f"{queues.stats_key(experiments)}:an-experiment-cluster",
                                    f"{queues.stats_key(runs)}:a-run-cluster")


def test_a_lost_experiment_asked_to_stop_ends_stopped(pending, queue):
    _taken_by_a_cluster(queue, pending, QUEUE_LOST_AFTER_SECONDS + 30)
    Experiment.objects.filter(pk=pending.pk).update(stop_requested=True)
    assert experiments_requeue_lost() == [pending.pk]
    pending.refresh_from_db()
    assert pending.state == "stopped" and pending.error == "stopped before it started" and pending.attempts == 0
    assert queue.queue_size() == 0 and not OrmQ.objects.exists()

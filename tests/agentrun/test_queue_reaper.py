"""Runs a crashed cluster had already taken off the queue are requeued within two minutes (once), then
failed; runs still waiting in the queue, or held by a live cluster, are left alone."""

from datetime import timedelta

import pytest
from django.db.models import F
from django.utils import timezone
from django_q.brokers import get_broker
from django_q.conf import Conf
from django_q.models import OrmQ

from agentrun.models import AgentRun
from agentrun.services import run_reap, run_start
from dojo_site import queues
from dojo_site.queues import QUEUE_LOST_AFTER_SECONDS


@pytest.fixture
def queued_run(frozen_domain, monkeypatch):
    monkeypatch.setattr(Conf, "SYNC", False)
    run = run_start(domain=frozen_domain, max_experiments=1)
    run.refresh_from_db()
    assert run.status == "queued" and OrmQ.objects.count() == 1
    return run


def _taken_by_a_cluster(seconds_ago: float) -> None:
    """What a cluster's pusher does when it takes the entry (the ORM broker locks it until now +
    retry), moved back in time."""
    assert get_broker().dequeue()
    OrmQ.objects.update(lock=F("lock") - timedelta(seconds=seconds_ago))


def test_it_requeues_a_run_a_dead_cluster_took_then_fails_it_the_second_time(queued_run):
    _taken_by_a_cluster(QUEUE_LOST_AFTER_SECONDS + 30)
    old_task = queued_run.queue_task_id

    assert run_reap() == [queued_run.pk]
    queued_run.refresh_from_db()
    assert queued_run.status == "queued" and queued_run.result["requeued"] == 1
    entry = OrmQ.objects.get()  # the dead cluster's entry is gone, a fresh one waits
    assert entry.task_id() == queued_run.queue_task_id != old_task
    assert entry.lock <= timezone.now()
    assert run_reap() == []  # waiting in the queue again: left alone

    _taken_by_a_cluster(QUEUE_LOST_AFTER_SECONDS + 30)
    assert run_reap() == [queued_run.pk]
    queued_run.refresh_from_db()
    assert queued_run.status == "failed" and "lost in the queue twice" in queued_run.error
    assert list(queued_run.events.values_list("type", flat=True))[-2:] == ["error", "finalized"]


def test_it_leaves_a_run_waiting_in_the_queue_alone_however_long(queued_run):
    OrmQ.objects.update(lock=timezone.now() - timedelta(hours=5))
    AgentRun.objects.filter(pk=queued_run.pk).update(created_at=timezone.now() - timedelta(hours=5))
    assert run_reap() == []
    queued_run.refresh_from_db()
    assert queued_run.status == "queued"


def test_it_leaves_a_run_taken_recently_alone(queued_run):
    _taken_by_a_cluster(5)
    assert run_reap() == []


class _LiveCluster:
    def __init__(self, born, task_q_size=None):
        self.tob = born
        if task_q_size is not None:
            self.task_q_size = task_q_size


def test_it_leaves_a_run_held_by_a_cluster_that_is_still_alive(queued_run, monkeypatch):
    _taken_by_a_cluster(QUEUE_LOST_AFTER_SECONDS + 30)
    # The queue boundary: a cluster born an hour ago is alive and may hold the entry (all workers busy).
    monkeypatch.setattr(queues, "cluster_stats", lambda queue: [_LiveCluster(timezone.now() - timedelta(hours=1))])
    assert run_reap() == []
    # A cluster born after the entry was taken (the crashed one restarted) cannot hold it.
    monkeypatch.setattr(queues, "cluster_stats", lambda queue: [_LiveCluster(timezone.now())])
    assert run_reap() == [queued_run.pk]


def test_it_requeues_a_run_lost_by_a_dead_cluster_while_an_older_cluster_lives_with_nothing_waiting(queued_run, monkeypatch):
    """Found by bench/cluster.py: a second worker machine took the run off the queue and died while
    the first machine's older cluster stayed up; the run stayed queued for good."""
    _taken_by_a_cluster(QUEUE_LOST_AFTER_SECONDS + 30)
    an_hour_ago = timezone.now() - timedelta(hours=1)
    # The older live cluster holds a prefetched entry: it may be ours, so the run is left alone.
    monkeypatch.setattr(queues, "cluster_stats", lambda queue: [_LiveCluster(an_hour_ago, task_q_size=1)])
    assert run_reap() == []
    # Nothing waits inside it: it cannot hold the run, which is requeued.
    monkeypatch.setattr(queues, "cluster_stats", lambda queue: [_LiveCluster(an_hour_ago, task_q_size=0)])
    assert run_reap() == [queued_run.pk]
    queued_run.refresh_from_db()
    assert queued_run.status == "queued" and queued_run.result.get("requeued") == 1

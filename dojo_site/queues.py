"""Queue entries a dead django-q2 cluster took with it (the lost-run and lost-experiment reapers).

django-q2's pusher takes entries off the broker before a worker is free to start them (the ORM broker
locks a taken entry until now + `retry`, hours for runs; Redis pops it) and holds them in the
cluster's own task queue. A cluster killed then takes them along: the row stays `queued`/`pending`
and nothing would ever start it. One rule for both queues (runs, experiments):

1. An entry still waiting in the queue is never lost, however old (a busy lab keeps work waiting).
2. A taken entry is lost once it was taken more than QUEUE_LOST_AFTER_SECONDS ago (Redis does not say
   when: the time it was queued stands in) and no live cluster serving that queue may hold it
   (_may_hold: alive when it was taken, and something waits in its task queue).

Each queue is judged by its own clusters: the experiment clusters keep their stats apart (stats_key,
set in dojo_site.apps), so a run cluster with runs waiting inside it never hides a lost experiment,
nor a busy experiment cluster a lost run.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from django.utils import timezone

# Taken this long ago while no live cluster of its queue may hold it: lost. The reaper runs every
# minute, so a lost entry moves on within two minutes (django-q2 itself would re-deliver an ORM entry
# only after Q_CLUSTER["retry"]; Redis never).
QUEUE_LOST_AFTER_SECONDS = 60


def stats_key(queue: str) -> str:
    """Where django-q2 keeps the stats of the clusters serving `queue` (its Conf.Q_STAT in those clusters)."""
    from django.conf import settings
    from django_q.conf import Conf

    if queue == settings.DOJO_EXPERIMENT_QUEUE:
        return f"django_q:{Conf.PREFIX}:experiments-cluster"
    return f"django_q:{Conf.PREFIX}:cluster"


def cluster_stats(queue: str) -> list[Any]:
    """django-q2's stats (django_q.status.Stat) of the live clusters serving `queue`, from any role's
    process (Stat.get_all reads only the calling cluster's own key)."""
    from django_q.brokers import get_broker
    from django_q.brokers.orm import ORM
    from django_q.signing import BadSignature, SignedPackage

    broker, key = get_broker(queue), stats_key(queue)
    if isinstance(broker, ORM):  # the stats cache: a list of keys, and one short-lived entry per cluster
        packs = [broker.cache.get(each) for each in broker.cache.get(key) or []] if broker.cache else []
    else:  # Redis: one expiring key per cluster
        packs = broker.get_stats(f"{key}:*") or []
    stats = []
    for pack in filter(None, packs):  # an entry that expired since its key was listed is None
        try:
            stats.append(SignedPackage.loads(pack))
        except BadSignature:  # another installation's cluster
            continue
    return stats


def queue_lost(queued: dict[str, datetime], *, queue: str, retry: float, now: datetime | None = None) -> list[str]:
    """Of these entries of `queue` (queue task id → when it was queued), the ids a dead cluster took
    (the rule above). `retry` is Q_CLUSTER["retry"] of the clusters serving `queue` (the ORM broker
    locks a taken entry for that long, which dates the take)."""
    from django_q.brokers import get_broker

    if not queued:
        return []
    now = now or timezone.now()
    live = [stat for stat in cluster_stats(queue) if stat.tob]
    entries = _queue_entries(get_broker(queue), retry=retry)
    lost = []
    for task_id, queued_at in queued.items():
        if task_id in entries and entries[task_id] is None:  # still waiting in the queue
            continue
        # Popped from Redis (or acknowledged by the ORM broker, its task having ended without a claim):
        # when is unknown, so any live cluster with something waiting may hold it.
        taken_at = entries.get(task_id)
        if (now - (taken_at or queued_at)).total_seconds() < QUEUE_LOST_AFTER_SECONDS:
            continue
        if any(_may_hold(stat, taken_at) for stat in live):
            continue
        lost.append(task_id)
    return lost


def _may_hold(stat: Any, taken_at: datetime | None) -> bool:
    """Whether a live cluster may hold an entry taken off the queue at `taken_at` (None: unknown): it
    was alive then, and tasks wait in its own task queue (its pusher prefetches while every worker is
    busy). A cluster that reports no task queue size may hold anything."""
    from django_q.conf import Conf

    if taken_at is not None and stat.tob > taken_at:
        return False
    size = getattr(stat, "task_q_size", None)
    return not Conf.QSIZE or not isinstance(size, int) or size > 0


def _queue_entries(broker: Any, *, retry: float) -> dict[str, datetime | None]:
    """Queue task id → None while it waits in the queue, or when a cluster took it. Entries gone
    from the queue (Redis pops them; the ORM broker deletes acknowledged ones) are absent."""
    from django_q.brokers.orm import ORM
    from django_q.models import OrmQ
    from django_q.signing import SignedPackage

    entries: dict[str, datetime | None] = {}
    if isinstance(broker, ORM):
        now = timezone.now()
        for entry in OrmQ.objects.filter(key=broker.list_key):
            # The ORM broker locks a taken entry until now + retry; an untaken one has lock <= now.
            entries[str(entry.task_id())] = entry.lock - timedelta(seconds=retry) if entry.lock and entry.lock > now else None
        return entries
    for payload in broker.connection.lrange(broker.list_key, 0, -1):  # Redis: what still waits
        try:
            entries[str(SignedPackage.loads(payload).get("id"))] = None
        except Exception:  # noqa: BLE001 - a foreign or unreadable entry is not ours
            continue
    return entries


def queue_entry_drop(*, queue: str, task_id: str) -> None:
    """Delete a dead cluster's locked ORM entry, which django-q2 would re-deliver after `retry`
    (Redis has popped it already)."""
    from django_q.models import OrmQ

    for entry in OrmQ.objects.filter(key=queue):
        if str(entry.task_id()) == task_id:
            entry.delete()

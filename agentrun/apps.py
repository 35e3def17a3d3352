import logging

from django.apps import AppConfig

logger = logging.getLogger(__name__)


class AgentrunConfig(AppConfig):
    name = "agentrun"

    def ready(self) -> None:
        from django_q.signals import post_spawn

        post_spawn.connect(_reap_on_worker_start, dispatch_uid="agentrun-reap-on-spawn")


def _reap_on_worker_start(sender: object, proc_name: str = "", **kwargs: object) -> None:
    """When qcluster starts a worker, fail the runs a dead worker left behind (a restart after a
    crash or kill -9) and the half-written snapshots a killed freeze left, and publish the snapshots
    of tasks frozen here before snapshots were published (so other machines can fetch them). The
    Schedule made by migration 0002 repeats the reaping every minute."""
    from agentrun.services import run_reap, run_reaper_schedule_ensure
    from domains.services import tasks_snapshot_publish_missing
    from domains.snapshot import snapshots_partial_clean

    try:
        run_reaper_schedule_ensure()
        run_reap()
        snapshots_partial_clean()
    except Exception:  # never keep a worker from starting
        logger.exception("reaper failed at worker start")
    try:
        tasks_snapshot_publish_missing()
    except Exception:
        logger.exception("publishing unpublished snapshots failed at worker start")

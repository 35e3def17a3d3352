"""django-q2 tasks: plain functions taking ids, each calling one service."""

from experiments.services import experiment_run_pending


def experiment_run_pending_task(experiment_id: int) -> str:
    return experiment_run_pending(experiment_id=experiment_id).state

"""django-q2 tasks: plain functions taking ids, each calling one service."""

from agentrun.services import run_execute, run_reap


def run_execute_task(run_id: int) -> str:
    return run_execute(run_id=run_id).status


def run_reap_task() -> list[int]:
    return run_reap()

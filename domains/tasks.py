"""django-q2 tasks: plain functions taking ids, each calling one service."""

from domains.models import Domain
from domains.services import domain_env_build, task_job_run


def domain_env_build_task(domain_id: int, run_setup_script: bool = False) -> str:
    domain = Domain.objects.get(pk=domain_id)
    try:
        return domain_env_build(domain=domain, run_setup_script=run_setup_script, claimed=True).env_state
    except Exception as exc:  # noqa: BLE001 - recorded on the domain already; q2 keeps the message
        return f"failed: {str(exc)[:500]}"


def task_job_task(task_id: int) -> str:
    """A queued verify / freeze / generate (Task.job); returns the job's final state."""
    return (task_job_run(task_id=task_id).job or {}).get("state", "")

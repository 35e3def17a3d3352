import threading
import time
from collections.abc import Callable

from django.db import connections

from agentrun.models import AgentEvent, AgentRun
from agentrun.services import run_execute


def wait_for(predicate: Callable[[], bool], *, timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def execute_in_thread(run_id: int, **kwargs) -> tuple[threading.Thread, dict]:
    """run_execute in another thread (as a worker would); the returned dict gets "run"."""
    out: dict = {}

    def target() -> None:
        try:
            out["run"] = run_execute(run_id=run_id, **kwargs)
        except BaseException as exc:  # surfaced by the test
            out["error"] = exc
        finally:
            connections.close_all()

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, out


def event_types(run: AgentRun) -> list[str]:
    return list(AgentEvent.objects.filter(run=run).order_by("seq").values_list("type", flat=True))


def assert_events_contiguous(run: AgentRun) -> list[AgentEvent]:
    events = list(AgentEvent.objects.filter(run=run).order_by("seq"))
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert events[-1].type == "finalized"
    assert [e.type for e in events].count("finalized") == 1
    return events


def exact_feedback(domain) -> None:
    """Give agents exact validation scores on this domain's task (the default is the ladder,
    tests/experiments/test_feedback.py): for tests that compare what the agent saw with the DB."""
    from domains.models import Task

    task = Task.objects.get(domain=domain)
    task.config = {**(task.config or {}), "feedback_mode": "exact"}
    task.save(update_fields=["config"])

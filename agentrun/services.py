"""Agent runs: create, start in the background, execute (the run loop), stop, reap.

The run loop (`run_execute`) is the one place every backend runs through, in the foreground CLI
and in a django-q2 worker alike. It claims the run, builds the context, starts the heartbeat,
hands a RunSession to the backend, enforces the limits, writes the backend's findings as
knowledge, and always ends with a `result` and a `finalized` event and a terminal status.
"""

from __future__ import annotations

import importlib
import logging
import math
import os
import threading
import traceback
from datetime import timedelta
from functools import partial
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Max
from django.utils import timezone

from agentrun.backends import BACKENDS
from agentrun.models import AgentEvent, AgentRun
from agentrun.session import EventCallback, RunSession
from agentrun.tools import TOOL_SPECS, jsonable
from dojo_site.errors import Conflict, InvalidInput, NotReady
from dojo_site.queues import queue_entry_drop, queue_lost
from dojo_site.schemas import DB_INT_MAX
from domains.contracts import TASK_TYPES
from domains.models import Domain
from experiments.models import Experiment
from experiments.ranking import ranked_experiments

logger = logging.getLogger(__name__)

# How much of the past an agent gets in its context.
CONTEXT_ATOMS = 20
CONTEXT_LEADERBOARD = 5


# --- create / start --------------------------------------------------------------------------


def _task_ready_check(domain: Domain) -> None:
    from domains.services import task_assert_ready

    task = domain.task_or_none
    if task is None:
        raise NotReady(
            f"domain {domain.name!r} has no task; create one with `manage.py dojo_init` first"
        )
    try:
        task_assert_ready(task=task)
    except NotReady as exc:
        message = str(exc)
        if "dojo_task" not in message:
            message += f" Run `manage.py dojo_task setup --domain {domain.name}` to generate, verify and freeze it."
        raise NotReady(message) from None


def _positive(value: Any, name: str, *, integer: bool) -> Any:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or (integer and not isinstance(value, int)):
        raise InvalidInput(f"{name} must be a {'whole ' if integer else ''}number, got {value!r}")
    if (isinstance(value, float) and not math.isfinite(value)) or value <= 0:
        raise InvalidInput(f"{name} must be greater than 0, got {value!r}")
    if integer and value > DB_INT_MAX:
        raise InvalidInput(f"{name} must be at most {DB_INT_MAX}, got {value!r}")
    return value


def run_create(
    *,
    domain: Domain,
    backend: str = "builtin",
    max_turns: int | None = None,
    max_experiments: int | None = None,
    budget_usd: float | None = None,
    max_minutes: float | None = None,
    prompt: str | None = None,
    seed: int = 0,
    created_by=None,
) -> AgentRun:
    """A queued run on `domain`. Refuses (NotReady) unless the task is frozen and intact.

    The prompt is PROGRAM.md as it is now, unless `prompt` overrides it for this run. The run's
    tools act with `created_by`'s rights (None: a management command, i.e. the administrator).
    """
    from domains.services import domain_file_read

    if backend not in BACKENDS:
        raise InvalidInput(f"unknown backend {backend!r}; choose one of: {', '.join(BACKENDS)}")
    _positive(max_turns, "max turns", integer=True)
    _positive(max_experiments, "max experiments", integer=True)
    _positive(budget_usd, "budget (USD)", integer=False)
    _positive(max_minutes, "max minutes", integer=False)
    limit_minutes = settings.DOJO_RUN_MAX_SECONDS / 60
    if max_minutes is not None and max_minutes > limit_minutes:
        raise InvalidInput(
            f"max minutes must be at most {limit_minutes:g} (DOJO_RUN_MAX_SECONDS={settings.DOJO_RUN_MAX_SECONDS})"
        )
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise InvalidInput(f"seed must be a whole number, got {seed!r}")
    if not -DB_INT_MAX - 1 <= seed <= DB_INT_MAX:
        raise InvalidInput(f"seed must be between {-DB_INT_MAX - 1} and {DB_INT_MAX}, got {seed}")
    _task_ready_check(domain)
    if prompt is not None and prompt.strip():
        program = prompt
    else:
        program = domain_file_read(domain=domain, which="program")
    return AgentRun.objects.create(
        domain=domain,
        created_by=created_by,
        backend=backend,
        model=settings.DOJO_CLAUDE_MODEL if backend == "claude" else "",
        prompt=program,
        max_turns=max_turns,
        max_experiments=max_experiments,
        budget_usd=budget_usd,
        max_minutes=max_minutes,
        seed=seed,
    )


def run_enqueue(*, run: AgentRun) -> None:
    """Hand the run to a django-q2 worker once the surrounding transaction commits."""
    transaction.on_commit(partial(_enqueue_now, run.pk))


def _enqueue_now(run_id: int) -> None:
    from django_q.tasks import async_task

    task_id = async_task(
        "agentrun.tasks.run_execute_task",
        run_id,
        task_name=f"dojo-run-{run_id}",
        # Above the run's own wall clock (the loop enforces that), so q2 never kills a live run.
        timeout=settings.Q_CLUSTER["timeout"],
    )
    AgentRun.objects.filter(pk=run_id).update(queue_task_id=str(task_id or ""))


def run_start(*, domain: Domain, **options: Any) -> AgentRun:
    """Create a run and enqueue it (the web form and the API). Nothing is enqueued on refusal."""
    with transaction.atomic():
        run = run_create(domain=domain, **options)
        run_enqueue(run=run)
    return run


# --- context --------------------------------------------------------------------------------


def run_context_build(*, run: AgentRun) -> dict[str, Any]:
    """What an agent starts from: the program, the contract, knowledge, a short leaderboard."""
    from knowledge.services import atom_list_for_context

    domain = run.domain
    task = domain.task
    task_type = TASK_TYPES[task.task_type]
    atoms = atom_list_for_context(domain=domain, limit=CONTEXT_ATOMS)
    knowledge = [
        {
            "atom_id": a.pk,
            "context": a.context,
            "claim": a.claim,
            "action": a.action,
            "confidence": a.confidence,
            "version": a.version,
        }
        for a in atoms
    ]
    ranked = ranked_experiments(domain)  # the one meaning of "best", quarantined ones left out
    from experiments.feedback import agent_order, agent_views, feedback_mode

    if feedback_mode(task) == "exact":
        shown = list(ranked[:CONTEXT_LEADERBOARD])
        views = agent_views(shown, task=task)
    else:  # ordered by what agents were shown, never by exact scores (experiments/feedback.py)
        candidates = list(ranked[:5_000])
        views = agent_views(candidates, task=task)
        shown = agent_order(candidates, views, task=task)[:CONTEXT_LEADERBOARD]
    leaderboard = [
        # Validation feedback only: the holdout never reaches an agent.
        {
            "experiment_id": e.pk,
            "hypothesis": e.hypothesis[:200],
            "primary_value": views[e.pk].get("primary_value"),
            "metrics": views[e.pk].get("metrics") or {},
            "variables": e.variables,
        }
        for e in shown
    ]
    context: dict[str, Any] = {
        "domain": domain.name,
        "description": domain.description,
        "program": run.prompt,
        "task_type": task.task_type,
        "primary_metric": task.primary_metric,
        "direction": task.direction,
        "expected_metrics": list(task.expected_metrics),
        "train_output": task_type.train_output,
        "is_classification": task_type.is_classification,
        "data": _data_summary(task.snapshot_info or {}),
        "knowledge": jsonable(knowledge),
        "leaderboard": jsonable(leaderboard),
        "limits": {
            "max_turns": run.max_turns,
            "max_experiments": run.max_experiments,
            "budget_usd": run.budget_usd,
            "max_minutes": run.max_minutes,
        },
    }
    context["system_prompt"] = system_prompt_render(context)
    return context


def _data_summary(info: dict[str, Any]) -> dict[str, Any]:
    """The trainer-visible facts of the snapshot: sizes, types, columns. Nothing about y_test."""
    types = info.get("types") or {}
    dtypes = info.get("dtypes") or {}
    columns = dtypes.get("X_train")
    summary = {
        "n_train": info.get("n_train"),
        "n_test_rows_to_predict": info.get("n_test"),
        "X_train": {"type": types.get("X_train"), "shape": (info.get("shapes") or {}).get("X_train")},
        "y_train": {"type": types.get("y_train"), "dtype": dtypes.get("y_train")},
        "columns": dict(list(columns.items())[:80]) if isinstance(columns, dict) else columns,
    }
    if info.get("classes") is not None:
        summary["classes"] = info["classes"]
    return {k: v for k, v in summary.items() if v not in (None, {}, [])}


def system_prompt_render(context: dict[str, Any]) -> str:
    better = "lower" if context["direction"] == "minimize" else "higher"
    lines = [
        "You are an ML research agent working in Dojo, a lab with a frozen evaluation contract.",
        f"Domain: {context['domain']}. {context.get('description') or ''}".rstrip(),
        "",
        "## The contract",
        f"Task type: {context['task_type']}. Primary metric: {context['primary_metric']} ({better} is better).",
        f"Metrics reported: {', '.join(context['expected_metrics'])}.",
        "You write only the training code. The framework loads the data, runs your train() in a "
        "sandbox without network, scores its predictions with the frozen evaluator and records the metrics.",
        "Your code is a Python module defining:",
        "    def train(X_train, y_train, X_test, *, artifacts_dir):",
        f"        return y_pred  # {context['train_output']}",
        "Do not load data yourself and do not try to evaluate: metrics come only from the framework. "
        "You see validation metrics; a private holdout is scored too and shown to people only.",
        "Files written to artifacts_dir (plots, models) are kept. DOJO_SEED holds the seed.",
    ]
    if context.get("data"):
        lines += ["", "## Data (what train() receives)", _short_json(context["data"], 2_000)]
    lines += [
        "",
        "## Tools (this domain only)",
        *[f"- {name}: {spec['description']}" for name, spec in TOOL_SPECS.items()],
        "",
        "## How to work",
        "Check knowledge first, run a simple baseline early, change one thing at a time, name the "
        "parent_id when refining an experiment, and record durable findings with write_knowledge "
        "(with the experiment ids that support them).",
    ]
    limits = {k: v for k, v in context["limits"].items() if v is not None}
    if limits:
        lines.append("Limits for this run: " + ", ".join(f"{k}={v}" for k, v in limits.items()) + ".")
    if context["knowledge"]:
        lines += ["", "## What earlier runs learned (most confident first)"]
        for atom in context["knowledge"]:
            action = f" → {atom['action']}" if atom.get("action") else ""
            lines.append(f"- [{atom['confidence']:.2f}] {atom['context']}: {atom['claim']}{action}")
    if context["leaderboard"]:
        lines += ["", f"## Leaderboard (validation {context['primary_metric']})"]
        for row in context["leaderboard"]:
            lines.append(f"- experiment {row['experiment_id']}: {row['primary_value']} — {row['hypothesis']}")
    lines += ["", "## Program (from the user)", context["program"].strip() or "(no PROGRAM.md text)"]
    return "\n".join(lines)


def _short_json(value: Any, limit: int) -> str:
    import json

    text = json.dumps(value, default=str)
    return text if len(text) <= limit else text[:limit] + "…"


# --- execute (the run loop) -----------------------------------------------------------------


def _run_claim(run_id: int) -> bool:
    """Take a queued run for this process. A run is executed at most once: only one claimer
    sees rowcount 1 (a re-delivered q2 task, a second worker, a double click)."""
    now = timezone.now()
    claimed = AgentRun.objects.filter(pk=run_id, status=AgentRun.Status.QUEUED).update(
        status=AgentRun.Status.RUNNING, started_at=now, heartbeat_at=now, worker_pid=os.getpid()
    )
    return claimed == 1


def run_execute(
    *,
    run_id: int,
    on_event: EventCallback | None = None,
    stop_signal: threading.Event | None = None,
) -> AgentRun:
    """Run a queued run to its end in this process and return it (terminal).

    `stop_signal`, when set by the caller (the CLI's Ctrl-C), asks for a graceful stop. A
    KeyboardInterrupt while the run executes (a second Ctrl-C) skips the knowledge flush; the run
    still ends `stopped` with its events closed, and the interrupt is not re-raised.
    """
    if not _run_claim(run_id):
        run = AgentRun.objects.get(pk=run_id)
        logger.warning("run %s not executed: it is %s, not queued", run_id, run.status)
        return run
    run = AgentRun.objects.select_related("domain").get(pk=run_id)
    session: RunSession | None = None
    module = None
    error = ""
    failed = False
    aborted = False
    try:
        try:
            _task_ready_check(run.domain)
            context = run_context_build(run=run)
            session = RunSession(run=run, context=context, on_event=on_event, stop_signal=stop_signal)
            session.heartbeat_start()
            session.emit(
                "text",
                {
                    "text": f"Run started: backend {run.backend}, primary metric "
                    f"{context['primary_metric']} ({context['direction']}).",
                    "limits": context["limits"],
                    "knowledge_atoms": len(context["knowledge"]),
                },
            )
            module = importlib.import_module(BACKENDS[run.backend])
            module.run(session)
        except Exception as exc:
            failed = True
            error = _error_line(exc)
            # One line at WARNING; the traceback is in the run's error event (and at INFO here).
            logger.warning("run %s failed: %s", run_id, error)
            logger.info("run %s traceback", run_id, exc_info=True)
            _emit_error(run, session, error, traceback.format_exc())
        if session is not None and module is not None:
            _findings_write(run, session, module)
    except BaseException as exc:
        # KeyboardInterrupt (second Ctrl-C) or SystemExit (django-q2's timeout): skip the clean-up,
        # but never leave the run or its experiments "running".
        aborted = True
        failed = failed or not isinstance(exc, KeyboardInterrupt)
        error = error or ("aborted: clean-up skipped" if isinstance(exc, KeyboardInterrupt) else _error_line(exc))
        if not isinstance(exc, KeyboardInterrupt):
            _finish(run, session, failed=True, error=error, aborted=True)
            raise
    finally:
        if session is not None:
            session.heartbeat_stop()
    return _finish(run, session, failed=failed, error=error, aborted=aborted)


def _error_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:1_000]


def _emit_error(run: AgentRun, session: RunSession | None, message: str, detail: str = "") -> None:
    data = {"error": message, "traceback": detail[-4_000:]}
    try:
        if session is not None:
            session.emit("error", data)
        else:
            _event_append(run, "error", data)
    except Exception:
        logger.exception("could not record the error event of run %s", run.pk)


def _findings_write(run: AgentRun, session: RunSession, module: Any) -> None:
    """Write the backend's durable findings as knowledge atoms (best effort, each on its own)."""
    from knowledge.services import atom_write

    findings_fn = getattr(module, "findings", None)
    if findings_fn is None:
        return
    try:
        findings = findings_fn(session) or []
    except Exception as exc:
        logger.warning("findings of run %s failed: %s", run.pk, exc, exc_info=logger.isEnabledFor(logging.INFO))
        session.emit("error", {"error": f"knowledge flush failed: {_error_line(exc)}"})
        return
    domain_experiments = set(Experiment.objects.filter(domain=run.domain).values_list("pk", flat=True))
    for finding in findings:
        try:
            evidence = []
            for item in finding.get("evidence") or []:
                if isinstance(item, dict):
                    pair = (item.get("experiment_id"), item.get("stance", "supports"))
                else:
                    pair = (item[0], item[1] if len(item) > 1 else "supports")
                if pair[0] in domain_experiments:
                    evidence.append(pair)
            result = atom_write(
                domain=run.domain,
                context=finding.get("context") or "end-of-run findings",
                claim=finding["claim"],
                action=finding.get("action", ""),
                confidence=finding.get("confidence", 0.5),
                evidence=evidence,
                run=run,
            )
        except Exception as exc:
            session.emit("error", {"error": f"finding not written: {_error_line(exc)}", "finding": finding})
            continue
        atom = result.atom
        session.emit(
            "knowledge",
            {
                "atom_id": atom.pk,
                "outcome": result.outcome,
                "version": atom.version,
                "confidence": atom.confidence,
                "claim": atom.claim,
                "source": "end-of-run findings",
            },
        )


def _finish(
    run: AgentRun, session: RunSession | None, *, failed: bool, error: str, aborted: bool
) -> AgentRun:
    """Close the run: end leftover experiments (`stopped`, or `failed` when the run failed), write
    `result`, the status and `finalized`."""
    left = Experiment.objects.filter(run=run, state__in=[Experiment.State.PENDING, Experiment.State.RUNNING])
    left.update(
        state=Experiment.State.FAILED if failed else Experiment.State.STOPPED,
        error="stopped" if not failed else f"run ended: {error}"[:1_000],
        finished_at=timezone.now(),
        stop_requested=True,  # one still on another worker (DOJO_DISPATCH=queue) stops too
    )
    if failed:
        status = AgentRun.Status.FAILED
    elif aborted or (session is not None and session.stopped_by_user):
        status = AgentRun.Status.STOPPED
    else:
        status = AgentRun.Status.COMPLETED
    summary = _summary(run, session)
    if failed:
        summary["reason"] = error
    elif aborted:
        summary["reason"] = "aborted: clean-up skipped"
    elif session is not None and session.stop_reason:
        summary["reason"] = session.stop_reason
    else:
        summary["reason"] = "the agent finished"
    if session is not None:
        summary.update(jsonable(session.result))
    cost = session.cost_usd if session else run.cost_usd
    turns = session.turns if session else run.turns
    result_data = {"status": status, "cost_usd": cost, "turns": turns, **summary}
    with transaction.atomic():
        # The status and the closing events land together: a reader that sees a terminal status
        # also sees `finalized`, so polling and the SSE stream can stop on either.
        if session is not None:
            session.emit("result", result_data)
        else:
            _event_append(run, "result", result_data)
        stop_fields = {"stop_requested": True} if status == AgentRun.Status.STOPPED else {}
        AgentRun.objects.filter(pk=run.pk).update(
            **stop_fields,
            status=status,
            finished_at=timezone.now(),
            error=error,
            cost_usd=cost,
            turns=turns,
            result=jsonable(summary),
        )
        if session is not None:
            session.emit("finalized", {"status": status})
        else:
            _event_append(run, "finalized", {"status": status})
    run.refresh_from_db()
    return run


def _summary(run: AgentRun, session: RunSession | None) -> dict[str, Any]:
    task = run.domain.task_or_none
    experiments = Experiment.objects.filter(run=run)
    summary: dict[str, Any] = {
        "experiments": experiments.count(),
        "completed": experiments.filter(state=Experiment.State.COMPLETED).count(),
        # Stopped experiments were ended by a person, not by their code: they are not failures.
        "failed": experiments.filter(state=Experiment.State.FAILED).count(),
        "stopped": experiments.filter(state=Experiment.State.STOPPED).count(),
        "primary_metric": task.primary_metric if task else None,
        "best_experiment_id": None,
        "best_value": None,
    }
    if task is not None:
        best = ranked_experiments(run.domain, run=run).first()
        if best is not None:
            summary["best_experiment_id"] = best.pk
            summary["best_value"] = best.rank_value
    return summary


def _event_append(run: AgentRun, type: str, data: dict[str, Any]) -> AgentEvent:
    """Append an event from outside a session (reaper, stop of a queued run): next free seq."""
    for _ in range(5):
        seq = (AgentEvent.objects.filter(run=run).aggregate(m=Max("seq"))["m"] or 0) + 1
        try:
            with transaction.atomic():
                return AgentEvent.objects.create(run=run, seq=seq, type=type, data=jsonable(data))
        except IntegrityError:  # someone took that seq in between
            continue
    raise Conflict(f"could not append an event to run {run.pk}")


# --- stop / reap ----------------------------------------------------------------------------


def runs_stop_for_shutdown(*, worker_pids: set[int]) -> list[int]:
    """Ask the running runs executed by these worker processes (this machine's) to stop, because
    their worker is shutting down; return their ids. They end `stopped` at their next step."""
    running = AgentRun.objects.filter(status=AgentRun.Status.RUNNING, worker_pid__in=worker_pids)
    ids = list(running.values_list("pk", flat=True))
    AgentRun.objects.filter(pk__in=ids, status=AgentRun.Status.RUNNING).update(stop_requested=True)
    return ids


def run_stop_request(*, run: AgentRun) -> AgentRun:
    """Ask a run to stop. A queued run stops at once; a running one at its next step (its
    executor watches the flag, kills a running trainer, flushes knowledge and ends `stopped`)."""
    with transaction.atomic():
        stopped_queued = AgentRun.objects.filter(pk=run.pk, status=AgentRun.Status.QUEUED).update(
            status=AgentRun.Status.STOPPED, stop_requested=True, finished_at=timezone.now(),
            result={"reason": "stopped before it started"},
        )
        if stopped_queued:
            _event_append(run, "finalized", {"status": AgentRun.Status.STOPPED})
        else:
            updated = AgentRun.objects.filter(pk=run.pk, status=AgentRun.Status.RUNNING).update(stop_requested=True)
            if not updated:
                run.refresh_from_db()
                raise Conflict(f"run {run.pk} has already finished ({run.status})")
    run.refresh_from_db()
    return run


def run_reap(*, timeout_seconds: float | None = None) -> list[int]:
    """Fail runs whose heartbeat stopped ("worker lost") and their unfinished experiments; requeue
    (or fail, the second time) queued runs a dead cluster took off the queue (runs_requeue_lost)
    and queued experiments whose worker or cluster died (experiments.services.experiments_requeue_lost).

    Returns the ids of the runs reaped or requeued. Safe to run anywhere, any number of times.
    """
    from experiments.services import experiments_requeue_lost

    if timeout_seconds is None:
        timeout_seconds = settings.DOJO_HEARTBEAT_TIMEOUT_SECONDS
    cutoff = timezone.now() - timedelta(seconds=timeout_seconds)
    stale = AgentRun.objects.filter(status=AgentRun.Status.RUNNING, heartbeat_at__lt=cutoff)
    reaped = []
    for run in stale:
        message = f"worker lost: no heartbeat since {run.heartbeat_at:%Y-%m-%d %H:%M:%S} UTC"
        # Conditional: a run that beat again since the query, or another reaper, is left alone.
        if _run_end_abandoned(run, message=message, status=AgentRun.Status.FAILED, heartbeat_at__lt=cutoff):
            reaped.append(run.pk)
            logger.warning("reaped run %s: %s", run.pk, message)
    experiments_requeue_lost()
    # In an experiment worker, django-q2's own queue and retry (what runs_requeue_lost judges) are the
    # experiments': the runs' queue is judged by the run workers' reaper.
    return reaped + (runs_requeue_lost() if settings.DOJO_Q_ROLE == "runs" else [])


def _run_end_abandoned(run: AgentRun, *, message: str, status: str, **still: Any) -> bool:
    """End a `running` run nobody executes any more (and its unfinished experiments), if it is still
    running and matches `still`; True when this call ended it."""
    with transaction.atomic():
        claimed = AgentRun.objects.filter(pk=run.pk, status=AgentRun.Status.RUNNING, **still).update(
            status=status, error=message, finished_at=timezone.now(), result={**run.result, "reason": message},
        )
        if not claimed:
            return False
        # stop_requested: an experiment running on another worker (DOJO_DISPATCH=queue) stops too.
        Experiment.objects.filter(run=run, state__in=[Experiment.State.PENDING, Experiment.State.RUNNING]).update(
            state=Experiment.State.FAILED, error=message, finished_at=timezone.now(), stop_requested=True
        )
        _event_append(run, "error", {"error": message})
        _event_append(run, "finalized", {"status": status})
    return True


def runs_end_after_shutdown(*, run_ids: list[int]) -> list[int]:
    """End, as `stopped`, the runs a worker that was shut down had not stopped in time (their
    processes are gone); return their ids."""
    message = "stopped: the worker shut down before the run could finish its stop"
    return [
        run.pk for run in AgentRun.objects.filter(pk__in=run_ids, status=AgentRun.Status.RUNNING)
        if _run_end_abandoned(run, message=message, status=AgentRun.Status.STOPPED)
    ]


def runs_requeue_lost(*, now=None) -> list[int]:
    """Requeue runs whose queue entry a dead cluster holds; fail those that were lost once already.

    A run is lost when it is `queued` and its queue entry was taken by a cluster that died
    (dojo_site.queues.queue_lost: taken more than QUEUE_LOST_AFTER_SECONDS ago, and no live run
    cluster may hold it). An entry still waiting in the queue is never touched: a busy lab may keep
    runs waiting for hours. Returns the ids of the runs requeued or failed. A requeued run that is
    later delivered twice is still executed once (run_execute claims it with a conditional update).
    Judges this process's own queue: call it from a run worker (DOJO_Q_ROLE=runs)."""
    from django_q.conf import Conf

    queued = list(AgentRun.objects.filter(status=AgentRun.Status.QUEUED).exclude(queue_task_id=""))
    lost = set(queue_lost({run.queue_task_id: run.created_at for run in queued}, queue=Conf.CLUSTER_NAME,
                          retry=settings.Q_CLUSTER["retry"], now=now))
    return [run.pk for run in queued if run.queue_task_id in lost and _run_requeue_or_fail(run, queue=Conf.CLUSTER_NAME)]


def _run_requeue_or_fail(run: AgentRun, *, queue: str) -> bool:
    requeued = int((run.result or {}).get("requeued", 0))
    with transaction.atomic():
        if requeued >= 1:
            message = "lost in the queue twice: a worker cluster took the run and died before starting it"
            claimed = AgentRun.objects.filter(pk=run.pk, status=AgentRun.Status.QUEUED).update(
                status=AgentRun.Status.FAILED, error=message, finished_at=timezone.now(),
                result={**run.result, "reason": message},
            )
            if claimed:
                _event_append(run, "error", {"error": message})
                _event_append(run, "finalized", {"status": AgentRun.Status.FAILED})
        else:
            claimed = AgentRun.objects.filter(pk=run.pk, status=AgentRun.Status.QUEUED, queue_task_id=run.queue_task_id).update(
                result={**run.result, "requeued": requeued + 1}, queue_task_id=""
            )
            if claimed:
                queue_entry_drop(queue=queue, task_id=run.queue_task_id)
                run_enqueue(run=run)
    if claimed:
        logger.warning("run %s was lost in the queue: %s", run.pk, "failed" if requeued else "requeued")
    return bool(claimed)


REAPER_SCHEDULE = "dojo-run-reaper"


def run_reaper_schedule_ensure() -> None:
    """The django-q2 Schedule that runs the reaper every minute (also made by migration 0002;
    re-made here at worker start in case it was deleted in the admin)."""
    from django_q.models import Schedule

    Schedule.objects.get_or_create(
        name=REAPER_SCHEDULE,
        defaults={"func": "agentrun.tasks.run_reap_task", "schedule_type": Schedule.MINUTES, "minutes": 1, "repeats": -1},
    )

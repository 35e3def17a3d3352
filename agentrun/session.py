"""RunSession: what a backend holds while it runs — the run, its context, the tools, the limits.

One session per executing run. Backends call `call_tool` (from any thread), `emit`, `add_turn`,
`add_cost` and poll `should_stop()`. Everything a backend does is persisted as an AgentEvent the
moment it happens, with a seq that grows by one per event, so a hard kill loses nothing already
seen. A heartbeat thread keeps `heartbeat_at` fresh (the reaper's signal that the worker lives) and
watches the run's `stop_requested` flag.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.db import connection
from django.db.models import Max
from django.utils import timezone

from agentrun.models import AgentEvent, AgentRun
from agentrun.tools import jsonable, tool_call

logger = logging.getLogger(__name__)

# How often the heartbeat thread looks at the stop flag, and how often it writes the heartbeat.
STOP_POLL_SECONDS = 0.5


def heartbeat_interval() -> float:
    # Several beats fit in the reaper's timeout, so one slow write never looks like a dead worker.
    return max(0.5, min(10.0, settings.DOJO_HEARTBEAT_TIMEOUT_SECONDS / 6))


EventCallback = Callable[[AgentEvent], None]

# Why a run ends early. A *user* stop ends the run `stopped`; the limits end it `completed`.
STOP_REQUESTED = "stop requested"


class RunSession:
    def __init__(
        self,
        *,
        run: AgentRun,
        context: dict[str, Any],
        on_event: EventCallback | None = None,
        stop_signal: threading.Event | None = None,
    ) -> None:
        self.run = run
        self.domain = run.domain
        self.context = context
        self.seed = run.seed
        cpus = os.cpu_count() or 1
        # Queued experiments (DOJO_DISPATCH=queue) run on other machines: DOJO_RUN_PARALLEL says how many.
        self.max_parallel = settings.DOJO_RUN_PARALLEL or max(1, int(cpus * settings.DOJO_CPU_SHARE))
        # Backends may put what they want recorded on the run (e.g. the SDK session id) here.
        self.result: dict[str, Any] = {}

        self._on_event = on_event
        self._stop_signal = stop_signal
        self._lock = threading.RLock()
        self._seq = AgentEvent.objects.filter(run=run).aggregate(m=Max("seq"))["m"] or 0
        self._turns = run.turns
        self._cost = run.cost_usd
        self._experiments_started = run.experiments.count()
        self._experiments_in_flight = 0
        self._best: tuple[int, float] | None = None
        self.stop_reason: str | None = None
        self._hard_stop = False
        self._user_stop = False

        seconds = settings.DOJO_RUN_MAX_SECONDS
        if run.max_minutes is not None:
            seconds = min(seconds, run.max_minutes * 60)
        self._started = time.monotonic()
        self._deadline = self._started + seconds

        self._heartbeat_stop = threading.Event()
        self._heartbeat_thread: threading.Thread | None = None

    # --- events -----------------------------------------------------------------------------

    def emit(self, type: str, data: dict[str, Any] | None = None) -> AgentEvent:
        """Persist one event now and return it. Thread-safe; seq grows by one per event."""
        payload = jsonable(data or {})
        with self._lock:
            self._seq += 1
            event = AgentEvent.objects.create(run_id=self.run.pk, seq=self._seq, type=type, data=payload)
            if self._on_event is not None:
                try:
                    self._on_event(event)
                except Exception:  # a broken printer must not break the run
                    logger.exception("on_event callback failed for run %s", self.run.pk)
        return event

    @property
    def last_seq(self) -> int:
        return self._seq

    # --- tools ------------------------------------------------------------------------------

    def call_tool(self, name: str, arguments: dict[str, Any] | None) -> dict[str, Any]:
        """Run a tool for the backend, recording the call, its result and what it produced."""
        if name == "run_experiment":
            refusal = self._reserve_experiment()
            if refusal:
                self.emit("tool_call", {"name": name, "arguments": arguments})
                result = {"ok": False, "error": refusal}
                self.emit("tool_result", {"name": name, "ok": False, "result": result, "seconds": 0.0})
                return result
        elif self._hard_stop:
            return {"ok": False, "error": f"the run is ending ({self.stop_reason}); no more tool calls"}

        self.emit("tool_call", {"name": name, "arguments": arguments})
        started = time.monotonic()
        try:
            result = tool_call(run=self.run, name=name, arguments=arguments, should_stop=self.must_abort)
        finally:
            if name == "run_experiment":
                self._release_experiment()
        seconds = round(time.monotonic() - started, 3)
        self.emit("tool_result", {"name": name, "ok": result.get("ok", False), "result": result, "seconds": seconds})
        if result.get("ok") and name == "run_experiment":
            self._record_experiment(result)
        elif result.get("ok") and name == "write_knowledge":
            self.emit("knowledge", {k: result.get(k) for k in ("atom_id", "outcome", "version", "confidence", "claim")})
        return result

    def _reserve_experiment(self) -> str | None:
        with self._lock:
            if self.should_stop():
                return f"the run is ending ({self.stop_reason}); no more experiments"
            limit = self.run.max_experiments
            if limit is not None and self._experiments_started >= limit:
                return f"experiment limit reached ({limit}); no more experiments in this run"
            self._experiments_started += 1
            self._experiments_in_flight += 1
            return None

    def _release_experiment(self) -> None:
        with self._lock:
            self._experiments_in_flight -= 1
            limit = self.run.max_experiments
            # The limit ends the run once the last allowed experiment is back, not while it runs.
            if limit is not None and self._experiments_started >= limit and self._experiments_in_flight == 0:
                self._request_stop(f"experiment limit reached ({limit})")

    def _record_experiment(self, result: dict[str, Any]) -> None:
        """Emit the experiment event people see (exact scores): the run's best so far is the one
        meaning of "best" (experiments/ranking.py) over this run's experiments, quarantine applied."""
        from experiments.models import Experiment
        from experiments.ranking import best_experiment

        # The event is for people: exact scores from the record, whatever feedback the agent got.
        exp = Experiment.objects.filter(pk=result.get("experiment_id")).first()
        value = exp.primary_value if exp is not None else None
        metrics = exp.metrics if exp is not None else result.get("metrics")
        with self._lock:
            best_exp = best_experiment(self.run.domain, run=self.run)
            self._best = (best_exp.pk, best_exp.rank_value) if best_exp is not None else None
            best = self._best
            is_best = best is not None and exp is not None and best[0] == exp.pk
            self.emit(
                "experiment",
                {
                    "experiment_id": result.get("experiment_id"),
                    "state": result.get("state"),
                    "primary_metric": result.get("primary_metric"),
                    "primary_value": value,
                    "metrics": metrics,
                    "error": (result.get("error") or "")[:500],
                    "train_seconds": result.get("train_seconds"),
                    "is_best": is_best,
                    "best_experiment_id": best[0] if best else None,
                    "best_value": best[1] if best else None,
                    "cost_usd": self._cost,
                },
            )

    @property
    def best(self) -> tuple[int, float] | None:
        """(experiment id, rank value) of this run's best experiment so far (experiments/ranking.py)."""
        return self._best

    def experiments_remaining(self) -> int | None:
        """How many more experiments this run may start (None: no limit)."""
        if self.run.max_experiments is None:
            return None
        with self._lock:
            return max(0, self.run.max_experiments - self._experiments_started)

    @property
    def experiments_started(self) -> int:
        return self._experiments_started

    # --- turns, cost and stopping ------------------------------------------------------------

    def add_turn(self) -> None:
        with self._lock:
            self._turns += 1
            turns = self._turns
        AgentRun.objects.filter(pk=self.run.pk).update(turns=turns)
        if self.run.max_turns is not None and turns >= self.run.max_turns:
            self._request_stop(f"turn limit reached ({self.run.max_turns})")

    def add_cost(self, delta_usd: float) -> None:
        if not delta_usd or delta_usd < 0:
            return
        with self._lock:
            self._cost += delta_usd
            cost = self._cost
        AgentRun.objects.filter(pk=self.run.pk).update(cost_usd=cost)
        if self.run.budget_usd is not None and cost >= self.run.budget_usd:
            self._request_stop(f"budget reached (${self.run.budget_usd:g})")

    @property
    def turns(self) -> int:
        return self._turns

    @property
    def cost_usd(self) -> float:
        return self._cost

    def should_stop(self) -> bool:
        """True once the run should wind down: a stop request or any limit. Never touches the DB."""
        if not self._hard_stop and time.monotonic() >= self._deadline:
            self._request_stop("wall-clock limit reached", hard=True)
        if self._stop_signal is not None and self._stop_signal.is_set() and not self._user_stop:
            self.request_user_stop()
        return self.stop_reason is not None

    def must_abort(self) -> bool:
        """True when work in progress must be killed (a stop request, the wall clock) — unlike
        the experiment, turn and budget limits, which let running experiments finish."""
        self.should_stop()
        return self._hard_stop

    def request_user_stop(self) -> None:
        self._user_stop = True
        self._request_stop(STOP_REQUESTED, hard=True)

    @property
    def stopped_by_user(self) -> bool:
        return self._user_stop

    def _request_stop(self, reason: str, *, hard: bool = False) -> None:
        with self._lock:
            if self.stop_reason is None or (hard and not self._hard_stop):
                self.stop_reason = reason
            self._hard_stop = self._hard_stop or hard

    def elapsed_seconds(self) -> float:
        return time.monotonic() - self._started

    # --- heartbeat --------------------------------------------------------------------------

    def heartbeat_start(self) -> None:
        self._heartbeat_thread = threading.Thread(
            target=self._heartbeat_loop, name=f"run-{self.run.pk}-heartbeat", daemon=True
        )
        self._heartbeat_thread.start()

    def heartbeat_stop(self) -> None:
        self._heartbeat_stop.set()
        if self._heartbeat_thread is not None:
            self._heartbeat_thread.join(timeout=10)

    def _heartbeat_loop(self) -> None:
        interval = heartbeat_interval()
        last_beat = 0.0
        flagged = False
        try:
            while not self._heartbeat_stop.is_set():
                try:
                    if self._stop_signal is not None and self._stop_signal.is_set() and not flagged:
                        # Ctrl-C in the foreground: make the request visible to the web and API too.
                        AgentRun.objects.filter(pk=self.run.pk).update(stop_requested=True)
                        flagged = True
                    if AgentRun.objects.filter(pk=self.run.pk, stop_requested=True).exists():
                        if not self._user_stop:
                            self.request_user_stop()
                    now = time.monotonic()
                    if now - last_beat >= interval:
                        AgentRun.objects.filter(pk=self.run.pk).update(heartbeat_at=timezone.now())
                        last_beat = now
                except Exception:  # a locked DB for a moment must not end the heartbeat
                    logger.exception("heartbeat failed for run %s", self.run.pk)
                self._heartbeat_stop.wait(STOP_POLL_SECONDS)
        finally:
            connection.close()


"""Probe-proof feedback: what an agent sees of validation scores (DESIGN §8: "Agents see
validation feedback only, in the form the task's feedback mode allows").

Exact validation scores are an oracle: 89 experiments, each changing one row's prediction,
recovered the validation labels of a 1,030-row task. The **ladder** mode (Blum & Hardt 2015,
"The Ladder: a reliable leaderboard for machine learning competitions") makes that pointless:

1. Each agent run (and the by-hand experiments, as one stream) climbs its own ladder, replayed in
   the order experiments finished; quarantined experiments are not on it (the agent sees them
   as quarantined, without a score).
2. The step is the noise threshold: the task's `feedback_threshold` when set, else
   LADDER_SE_FACTOR × the bootstrap standard error of the first experiment's validation primary
   metric (its 95% interval width / 3.92), else FALLBACK_RELATIVE of its value.
3. An experiment moves the ladder only when it beats the run's best released score by more than
   the step; it is then shown its score rounded to a multiple of the step (its other metrics
   rounded by the same relative step). Otherwise it is shown the best released score and
   metrics again, marked `improved: false` — a one-row change almost never moves it, so it
   tells a prober nothing.
4. `exact` (per task) shows exact scores, as before. The database always keeps exact scores and
   people always see them; only agent-facing tools (experiments returned to an agent, lists,
   comparisons and their best-first order) go through here.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from domains.models import Task
from experiments.models import Experiment

MODES = ("ladder", "exact")
DEFAULT_MODE = "ladder"
LADDER_SE_FACTOR = 1.0
CI_WIDTH_IN_SE = 3.92  # a 95% interval spans about 3.92 standard errors
FALLBACK_RELATIVE = 0.01
FIELDS = ("id", "run_id", "state", "primary_value", "metrics", "validation_ci", "finished_at", "quarantine_state")


def feedback_mode(task: Task | None) -> str:
    mode = ((task.config or {}).get("feedback_mode") if task is not None else None) or DEFAULT_MODE
    return mode if mode in MODES else DEFAULT_MODE


def _step(first: dict, task: Task) -> float:
    configured = (task.config or {}).get("feedback_threshold")
    if isinstance(configured, int | float) and configured > 0:
        return float(configured)
    ci = (first.get("validation_ci") or {}).get(task.primary_metric)
    if ci and len(ci) == 2 and ci[1] > ci[0]:
        return LADDER_SE_FACTOR * (ci[1] - ci[0]) / CI_WIDTH_IN_SE
    value = abs(first.get("primary_value") or 0.0)
    return FALLBACK_RELATIVE * value if value > 0 else 1e-3


def _round(value: float, step: float) -> float:
    return round(round(value / step) * step, 12)


def _ladder(rows: list[dict], task: Task) -> dict[int, dict]:
    """Replay one stream's ladder; {experiment id: what the agent sees}."""
    from experiments.ranking import UNRANKED_STATES

    minimize = task.direction != Task.Direction.MAXIMIZE
    out: dict[int, dict] = {}
    scored = [r for r in rows if r["state"] == Experiment.State.COMPLETED and r["primary_value"] is not None
              and r["quarantine_state"] not in UNRANKED_STATES]
    scored.sort(key=lambda r: (r["finished_at"] is None, r["finished_at"], r["id"]))
    step = _step(scored[0], task) if scored else 1.0
    best: dict | None = None
    for r in scored:
        value = r["primary_value"]
        if best is None or (value < best["primary_value"] - step if minimize else value > best["primary_value"] + step):
            released = _round(value, step)
            relative = step / abs(value) if value else 0.0
            metrics = {
                k: (released if k == task.primary_metric else
                    (_round(v, relative * abs(v)) if relative and isinstance(v, int | float) and v else v))
                for k, v in (r["metrics"] or {}).items()
            }
            best = {"primary_value": released, "metrics": metrics}
            out[r["id"]] = {**best, "improved": True, "feedback": "ladder", "ladder_step": step}
        else:
            out[r["id"]] = {**best, "improved": False, "feedback": "ladder", "ladder_step": step}
    for r in rows:
        if r["id"] not in out:
            quarantined = r["quarantine_state"] in UNRANKED_STATES
            out[r["id"]] = {"primary_value": None, "metrics": {}, "improved": False, "feedback": "ladder",
                            **({"quarantined": True} if quarantined else {})}
    return out


def agent_views(experiments: Iterable[Experiment], *, task: Task) -> dict[int, dict]:
    """What an agent may see of each experiment's validation scores: {id: {primary_value,
    metrics, feedback, improved?, quarantined?}}. Exact mode passes the record through."""
    from experiments.ranking import UNRANKED_STATES

    experiments = list(experiments)
    if feedback_mode(task) == "exact":
        return {
            e.pk: ({"primary_value": None, "metrics": {}, "feedback": "exact", "quarantined": True}
                   if e.quarantine_state in UNRANKED_STATES else
                   {"primary_value": e.primary_value, "metrics": e.metrics, "feedback": "exact"})
            for e in experiments
        }
    out: dict[int, dict] = {}
    for run_id in {e.run_id for e in experiments}:
        rows = list(Experiment.objects.filter(domain_id=task.domain_id, run_id=run_id).values(*FIELDS))
        out.update(_ladder(rows, task))
    return {e.pk: out.get(e.pk, {"primary_value": None, "metrics": {}, "feedback": "ladder"}) for e in experiments}


def agent_order(experiments: list[Experiment], views: dict[int, dict], *, task: Task) -> list[Experiment]:
    """Best first by what the agent sees (never by exact scores it was not shown), ties by id."""
    sign = -1.0 if task.direction == Task.Direction.MAXIMIZE else 1.0

    def key(e: Experiment) -> tuple:
        value = views.get(e.pk, {}).get("primary_value")
        return (value is None, sign * value if value is not None and math.isfinite(value) else 0.0, e.pk)

    return sorted(experiments, key=key)

"""Audit, then trust: which scored experiments are quarantined (DESIGN §8).

Isolation stops a train() from reading the labels; it cannot stop every way of winning without
learning. After the trusted evaluator has scored an experiment, and before it can rank, these
rules look at what only the trusted side knows (exact scores, the holdout, earlier experiments'
predictions, the runtime audit trail and the static scan). Any rule that fires quarantines the
experiment: it leaves every ranking (experiments/ranking.py), `best`, the agent tools and
knowledge evidence until a person clears it (with a reason, recorded) or confirms it.

The rules, each with its thresholds here and nowhere else:

1. **lookup** — the runtime audit trail saw train() call a dataset loader, or the static scan
   flags a dataset-loader import. No honest train() needs a bundled dataset: it gets its rows as
   arguments. (Reading the answers back is the "lookup" attack.)
2. **implausible** — the validation primary metric is at (or within a hair of) its perfect value
   while the domain's best other experiments are far from it: the experiment's distance to
   perfect is under IMPLAUSIBLE_RATIO of the best other's, with at least MIN_REFERENCE others to
   compare with and the best other at least FAR_FROM_PERFECT away (on tasks where honest models
   are perfect, perfection is no signal). An exactly perfect loss (rmse/mae/log_loss ≤
   EXACT_PERFECT) is implausible on its own: real data has noise.
3. **holdout_gap** — validation beats holdout by far more than noise allows: the validation
   distance to perfect is under GAP_RATIO of the holdout's, the gap exceeds GAP_FACTOR × the
   larger of the domain's typical |gap| (median over other experiments) and its seed spread, and
   the two bootstrap intervals (experiments/harness/noise.py) do not overlap. (Without the last
   two, honest log-loss models on digits fired: a few confident mistakes make log loss
   heavy-tailed, so a validation/holdout gap of 2× is noise there.)
   A model that fits the validation rows specifically (probing, leaked validation labels) shows
   here, because the private holdout stays honest.
4. **probing** — an experiment whose predictions differ from an earlier one's in only a few rows
   (1 ≤ rows ≤ PROBE_MAX_ROWS or PROBE_MAX_SHARE of them) is a probe (`probe_of`). Once the
   domain has PROBE_SEQUENCE probes among its last PROBE_WINDOW experiments, every probe of that
   window is quarantined, and so is the end of the sequence: the next experiment of the same run
   (or by hand) that beats the best experiment from before the probes.
"""

from __future__ import annotations

import io
import logging
import statistics
import zlib
from typing import NamedTuple

import numpy as np
from django.db import transaction
from django.db.models import Count, Max, Min
from django.utils import timezone

from domains.models import Task
from experiments.models import Experiment, Prediction

log = logging.getLogger(__name__)

# Rule 2
IMPLAUSIBLE_RATIO = 0.1
MIN_REFERENCE = 3
FAR_FROM_PERFECT = {"bounded": 0.02, "unbounded": 0.0}
EXACT_PERFECT = 1e-9
# Rule 3
GAP_RATIO = 0.25
GAP_FACTOR = 4.0
# Rule 4
PROBE_MAX_ROWS = 3
PROBE_MAX_SHARE = 0.01
PROBE_SEQUENCE = 3
PROBE_WINDOW = 100
PROBE_COMPARE_LAST = 50  # earlier experiments' predictions each new one is compared with
PREDICTION_ROW_TOLERANCE = 1e-6
PROBE_BATCH_CELLS = 1_000_000  # float32 cells of earlier predictions held at once (4 MB)

# Perfect values: losses are perfect at 0, scores in [0, 1] at 1.
PERFECT = {"rmse": 0.0, "mae": 0.0, "log_loss": 0.0, "mse": 0.0, "r2": 1.0, "accuracy": 1.0, "roc_auc": 1.0,
           "f1": 1.0, "macro_f1": 1.0, "balanced_accuracy": 1.0}
BOUNDED = {"r2", "accuracy", "roc_auc", "f1", "macro_f1", "balanced_accuracy"}
UNBOUNDED_LOSSES = {"rmse", "mae", "log_loss", "mse"}


def _distance(metric: str, value: float | None) -> float | None:
    if value is None or metric not in PERFECT:
        return None
    return abs(PERFECT[metric] - value)


# --- predictions (rule 4) --------------------------------------------------------------------


class PredictionCheck(NamedTuple):
    """A scored experiment's predictions in compact form and what they were compared with: made
    by prediction_check while the evaluator scores, stored by quarantine_assess afterwards."""

    kind: str
    data: np.ndarray
    probe_of: int | None
    probe_rows: int | None


def prediction_check(*, experiment: Experiment, y_pred: bytes) -> PredictionCheck | None:
    """Compact copy of the predictions (float32; labels as crc32 codes), compared with earlier
    experiments' (rule 4). Reads the database only, so it can run while the evaluator is still
    scoring. None when they cannot be read (the evaluator decides whether that fails them)."""
    try:
        arr = np.load(io.BytesIO(y_pred), allow_pickle=False)
    except Exception:  # noqa: BLE001 - the evaluator judges the predictions; a copy we cannot make is no verdict
        return None
    arr = arr.reshape(len(arr), -1) if arr.ndim else arr.reshape(1, 1)
    if arr.dtype.kind in "biuf":
        kind, data = "numeric", arr.astype(np.float32)
    else:
        kind = "label"
        data = np.array([[zlib.crc32(str(v).encode()) for v in row] for row in arr], dtype=np.float32)
    probe_of, rows = probe_detect(experiment=experiment, kind=kind, data=data)
    return PredictionCheck(kind, data, probe_of, rows)


def prediction_store(*, experiment: Experiment, check: PredictionCheck) -> Prediction:
    data = check.data
    return Prediction.objects.create(
        experiment=experiment, task_fingerprint=experiment.task_fingerprint, kind=check.kind, rows=data.shape[0],
        width=data.shape[1], data=zlib.compress(np.ascontiguousarray(data).tobytes(), 1),
    )


def probe_detect(*, experiment: Experiment, kind: str, data: np.ndarray) -> tuple[int | None, int | None]:
    """(earlier experiment id, differing rows) when these predictions differ from an earlier
    experiment's of the same domain and contract in only a few rows; (None, None) otherwise."""
    n_rows, width = data.shape
    limit = max(PROBE_MAX_ROWS, int(PROBE_MAX_SHARE * n_rows))
    earlier = (
        Prediction.objects.filter(
            experiment__domain_id=experiment.domain_id, task_fingerprint=experiment.task_fingerprint,
            rows=n_rows, width=width, kind=kind, experiment_id__lt=experiment.pk,
        ).order_by("-experiment_id").values_list("experiment_id", "data")[:PROBE_COMPARE_LAST]
    )
    found: tuple[int | None, int | None] = (None, None)
    batch = max(1, PROBE_BATCH_CELLS // max(1, n_rows * width))  # earlier predictions compared at once
    rows_of = list(earlier)
    for start in range(0, len(rows_of), batch):
        chunk = rows_of[start:start + batch]
        theirs = np.frombuffer(b"".join(zlib.decompress(bytes(blob)) for _, blob in chunk), dtype=np.float32)
        theirs = theirs.reshape(len(chunk), n_rows, width)
        tol = PREDICTION_ROW_TOLERANCE * (1.0 + np.abs(theirs))
        differing = np.count_nonzero((np.abs(data[None] - theirs) > tol).any(axis=2), axis=1)
        for (other_id, _), rows in zip(chunk, differing.tolist(), strict=True):  # the closest: a probe names the rows it changes
            if 1 <= rows <= limit and (found[1] is None or rows < found[1]):
                found = (other_id, rows)
    return found


# --- the rules -------------------------------------------------------------------------------


def _reference(experiment: Experiment):
    """The domain's other ranked (not quarantined, not probing) experiments under the same
    contract, as a queryset: each rule asks it only what it needs."""
    from experiments.ranking import UNRANKED_STATES

    return (
        Experiment.objects.filter(
            domain_id=experiment.domain_id, state=Experiment.State.COMPLETED, primary_value__isnull=False,
            task_fingerprint=experiment.task_fingerprint, data_fingerprint=experiment.data_fingerprint,
        ).exclude(pk=experiment.pk).exclude(quarantine_state__in=UNRANKED_STATES).exclude(probe_of__isnull=False)
    )


def _rule_lookup(experiment: Experiment) -> str | None:
    events = [e for e in (getattr(experiment, "audit_trail", None) or []) if isinstance(e, dict)]
    flags = [f for f in (getattr(experiment, "code_flags", None) or []) if isinstance(f, dict)]
    loaders = [str(e.get("detail", ""))[:120] for e in events if e.get("kind") == "dataset_loader"]
    if loaders:
        return f"train() called a dataset loader at run time: {loaders[0]}"
    flagged = [f for f in flags if f.get("kind") == "dataset_loader"]
    if flagged:
        return f"the train code imports a dataset loader (line {flagged[0].get('line')}: {str(flagged[0].get('text', ''))[:120]})"
    return None


def _rule_implausible(experiment: Experiment, metric: str, others) -> str | None:
    mine = _distance(metric, experiment.primary_value)
    if mine is None:
        return None
    if metric in UNBOUNDED_LOSSES and mine <= EXACT_PERFECT:
        return f"validation {metric} = {experiment.primary_value:.3g}: a perfect loss on real data"
    # One aggregate query: the reference experiment closest to perfect, and how many there are.
    closest = Max("primary_value") if PERFECT[metric] >= 1.0 else Min("primary_value")
    found = others.aggregate(n=Count("pk"), closest=closest)
    if found["n"] < MIN_REFERENCE or found["closest"] is None:
        return None
    distances = [_distance(metric, found["closest"])]
    best_other = min(distances)
    far = FAR_FROM_PERFECT["bounded" if metric in BOUNDED else "unbounded"]
    if best_other > far and mine < IMPLAUSIBLE_RATIO * best_other:
        return (
            f"validation {metric} = {experiment.primary_value:.4g} is {best_other / max(mine, 1e-300):.3g}× closer "
            f"to perfect than the best of {found['n']} other experiments (distance {best_other:.3g})"
        )
    return None


def _rule_holdout_gap(experiment: Experiment, metric: str, others) -> str | None:
    val = _distance(metric, experiment.primary_value)
    hold = _distance(metric, experiment.holdout_primary_value)
    if val is None or hold is None or hold <= 0 or not val < GAP_RATIO * hold:
        return None  # the usual case, decided without a query
    rows = list(others.values_list("primary_value", "holdout_primary_value", "seed_spread"))
    gaps = [abs(h - v) for v, h, _ in rows if h is not None and v is not None]
    if len(gaps) < MIN_REFERENCE:
        return None
    spreads = [s for _, _, s in rows if s]
    noise = max(statistics.median(gaps), max(spreads, default=0.0))
    gap = hold - val
    val_ci = (experiment.validation_ci or {}).get(metric)
    hold_ci = (experiment.holdout_ci or {}).get(metric)
    if val_ci and hold_ci:
        val_far = max(_distance(metric, v) for v in val_ci)  # the validation interval's worst end
        hold_near = min(_distance(metric, v) for v in hold_ci)  # the holdout interval's best end
        if val_far >= hold_near:
            return None  # the intervals overlap: the gap is within noise
    if val < GAP_RATIO * hold and gap > GAP_FACTOR * noise:
        return (
            f"validation {metric} {experiment.primary_value:.4g} vs holdout {experiment.holdout_primary_value:.4g}: "
            f"a gap of {gap:.3g}, over {GAP_FACTOR:g}× the domain's typical gap or seed spread ({noise:.3g})"
        )
    return None


def _rule_probing(experiment: Experiment, task: Task) -> tuple[str | None, list[int]]:
    """(reason for this experiment, earlier probes to quarantine with it)."""
    window = list(
        Experiment.objects.filter(domain_id=experiment.domain_id, pk__lte=experiment.pk)
        .order_by("-pk").values("pk", "probe_of_id", "run_id", "primary_value", "quarantine_state")[:PROBE_WINDOW]
    )
    probes = [row for row in window if row["probe_of_id"]]
    if len(probes) < PROBE_SEQUENCE:
        return None, []
    if experiment.probe_of_id:
        return (
            f"one of {len(probes)} probes in the last {len(window)} experiments (predictions differ from "
            f"#{experiment.probe_of_id}'s in {experiment.probe_rows} rows)",
            [row["pk"] for row in probes if row["pk"] != experiment.pk and not row["quarantine_state"]],
        )
    # The end of a sequence: same stream (run or by hand) as the probes, beating what came before them.
    same = [row for row in probes if row["run_id"] == experiment.run_id]
    if len(same) < PROBE_SEQUENCE or experiment.primary_value is None:
        return None, []
    first_probe = min(row["pk"] for row in same)
    direction = task.direction
    before = Experiment.objects.filter(
        domain_id=experiment.domain_id, pk__lt=first_probe, state=Experiment.State.COMPLETED,
        primary_value__isnull=False, probe_of__isnull=True,
    ).values_list("primary_value", flat=True)
    best_before = (min if direction == "minimize" else max)(before, default=None)
    beats = best_before is None or (
        experiment.primary_value < best_before if direction == "minimize" else experiment.primary_value > best_before
    )
    if beats:
        return (
            f"follows {len(same)} probes of the same run and beats the best experiment from before them "
            f"({experiment.primary_value:.4g} vs {best_before})",
            [],
        )
    return None, []


def quarantine_assess(*, experiment: Experiment, y_pred: bytes | None = None, task: Task | None = None,
                      check: PredictionCheck | None = None) -> list[dict]:
    """Run every rule on a freshly completed experiment; store its predictions, record
    probe_of/probe_rows and, when a rule fires, quarantine it (and the earlier probes of its
    sequence). `check` is prediction_check's result when the caller made it already (while the
    evaluator scored), else it is made here from `y_pred`. Returns the reasons ([] = clean).
    Never raises for a rule's sake: a broken rule is logged and skipped."""
    task = task or Task.objects.filter(domain_id=experiment.domain_id).first()
    if task is None or experiment.state != Experiment.State.COMPLETED:
        return []
    metric = task.primary_metric
    if check is None and y_pred:
        check = prediction_check(experiment=experiment, y_pred=y_pred)
    if check is not None:
        prediction_store(experiment=experiment, check=check)
        if check.probe_of is not None:
            experiment.probe_of_id, experiment.probe_rows = check.probe_of, check.probe_rows
            Experiment.objects.filter(pk=experiment.pk).update(probe_of_id=check.probe_of, probe_rows=check.probe_rows)
    others = _reference(experiment)
    reasons: list[dict] = []
    also: list[int] = []
    for rule, check in (
        ("lookup", lambda: _rule_lookup(experiment)),
        ("implausible", lambda: _rule_implausible(experiment, metric, others)),
        ("holdout_gap", lambda: _rule_holdout_gap(experiment, metric, others)),
    ):
        try:
            detail = check()
        except Exception:  # noqa: BLE001
            log.exception("quarantine rule %s failed on experiment %s", rule, experiment.pk)
            continue
        if detail:
            reasons.append({"rule": rule, "detail": detail})
    try:
        detail, also = _rule_probing(experiment, task)
        if detail:
            reasons.append({"rule": "probing", "detail": detail})
    except Exception:  # noqa: BLE001
        log.exception("quarantine rule probing failed on experiment %s", experiment.pk)
    if reasons:
        _quarantine(experiment, reasons)
    for pk in also:
        other = Experiment.objects.filter(pk=pk).first()
        if other is not None and not other.quarantine_state:
            _quarantine(other, [{"rule": "probing", "detail": f"part of the probing sequence ended by #{experiment.pk}"}])
    return reasons


def _quarantine(experiment: Experiment, reasons: list[dict]) -> None:
    from experiments.ranking import ranking_update

    experiment.quarantine_state = Experiment.QuarantineState.QUARANTINED
    experiment.quarantine_reasons = [*(experiment.quarantine_reasons or []), *reasons]
    Experiment.objects.filter(pk=experiment.pk).update(
        quarantine_state=experiment.quarantine_state, quarantine_reasons=experiment.quarantine_reasons,
    )
    ranking_update(experiment=experiment)


def quarantine_review(*, experiment: Experiment, decision: str, reason: str, by: str) -> Experiment:
    """A person's verdict: "cleared" (it ranks again) or "confirmed" (it never ranks). The reason
    is required and recorded with who and when. Raises InvalidInput on a bad decision or an
    empty reason, before changing anything."""
    from dojo_site.errors import InvalidInput
    from experiments.ranking import ranking_update

    if decision not in (Experiment.QuarantineState.CLEARED, Experiment.QuarantineState.CONFIRMED):
        raise InvalidInput("decision must be cleared or confirmed")
    if not (reason or "").strip():
        raise InvalidInput("a reason is required to clear or confirm a quarantined experiment")
    with transaction.atomic():
        experiment.quarantine_state = decision
        experiment.quarantine_review = {"decision": decision, "reason": reason.strip()[:2000], "by": by,
                                        "at": timezone.now().isoformat()}
        experiment.save(update_fields=["quarantine_state", "quarantine_review"])
    ranking_update(experiment=experiment)
    return experiment

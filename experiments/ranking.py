"""What "best" means: one definition for the leaderboard, the run page, `dojo_experiments best`,
the agent tools, the built-in researcher's pick, knowledge claims and `dojo_demo`.

1. An experiment's **score** is its validation primary metric (scored by the trusted evaluator).
   When the train code also reported an out-of-fold score on the training rows (a `DOJO_CV
   <metric>=<value> rows=<n>` line on stdout, stored as `cv_value`/`cv_rows`), the score is the
   row-weighted mean of the two — but only when that makes the score *worse*. A CV value comes
   from untrusted code: a train() can print any number. So it may pull an experiment down (a
   validation score that got lucky on a few dozen rows while the model is mediocre on the
   training folds), never push it above what its trusted validation score supports:
   score = worse(validation, blend(cv, validation)). A fake CV line gains nothing; a true one
   still protects the ranking from validation luck.
2. An experiment's **rank value** is the mean of the scores of its configuration: every completed,
   non-quarantined experiment of the domain with the same train code under the same contract
   (seeds and reproductions of one configuration). `seed_spread` is max − min of those scores
   (two seeds or more), `seed_count` how many. One lucky seed does not win; every seed of a
   configuration shares its rank value.
3. **Ranked** experiments are the domain's completed ones under the task's current contract, with
   a rank value, not quarantined (experiments/quarantine.py): ordered by rank value in the task's
   direction, ties by id (a configuration is represented by its first experiment). **Best** is
   the first of them.
4. Agents see validation feedback in the task's feedback mode (experiments/feedback.py); the
   same score function is applied to what they see, so an agent's "best" is this definition
   applied to its feedback. People always see exact scores.

The rank value is stored (indexed) so every list ranks in the database, also at 10,000 rows.
"""

from __future__ import annotations

import math
import re
import statistics

from django.db import transaction
from django.db.models import F, Q, QuerySet
from django.db.models.functions import Coalesce

from domains.models import Domain, Task
from experiments.models import Experiment

# What never ranks: quarantined until a person clears it, or confirmed as cheating.
UNRANKED_STATES = (Experiment.QuarantineState.QUARANTINED, Experiment.QuarantineState.CONFIRMED)

_CV_LINE = re.compile(r"DOJO_CV (\w+)=(\S+) rows=(\d+)")


def cv_parse(stdout: str, metric: str) -> tuple[float | None, int]:
    """The out-of-fold score the train code printed last for `metric`: (value, rows), or
    (None, 0). Untrusted text, parsed linearly; a non-finite value or no rows counts as none."""
    found = [m for m in _CV_LINE.finditer(stdout or "") if m.group(1) == metric]
    if not found:
        return None, 0
    try:
        value, rows = float(found[-1].group(2)), int(found[-1].group(3))
    except ValueError:
        return None, 0
    if not math.isfinite(value) or rows <= 0:
        return None, 0
    return value, rows


def experiment_score(
    *, validation: float | None, cv: float | None, cv_rows: int | None, validation_rows: float | None,
    direction: str,
) -> float | None:
    """Rule 1: the validation value, made worse (never better) by a worse reported CV value."""
    if validation is None:
        return None
    if cv is None or not cv_rows or cv_rows <= 0 or not validation_rows or validation_rows <= 0:
        return validation
    blend = (cv * cv_rows + validation * validation_rows) / (cv_rows + validation_rows)
    return max(validation, blend) if direction == "minimize" else min(validation, blend)


def better(a: float, b: float, direction: str) -> bool:
    return a < b if direction == "minimize" else a > b


def _validation_rows(task: Task | None) -> float | None:
    info = (task.snapshot_info or {}) if task is not None else {}
    rows = info.get("n_validation")
    return float(rows) if isinstance(rows, int | float) and rows > 0 else None


def score_of(experiment: Experiment, task: Task | None) -> float | None:
    return experiment_score(
        validation=experiment.primary_value, cv=experiment.cv_value, cv_rows=experiment.cv_rows,
        validation_rows=_validation_rows(task), direction=task.direction if task else "minimize",
    )


# What ranking_update reads of each member of a configuration.
_RANK_FIELDS = ("pk", "primary_value", "cv_value", "cv_rows", "quarantine_state", "rank_value", "seed_spread", "seed_count")


def ranking_update(*, experiment: Experiment, task: Task | None = None) -> None:
    """Recompute rank_value, seed_spread and seed_count for the experiment's configuration (rule 2).

    Call after an experiment completes or its quarantine state changes. A quarantined experiment
    keeps its own score as its rank value (shown when quarantined ones are listed) and leaves
    its configuration's mean. Writes only the rows whose values changed."""
    if task is None:
        task = Task.objects.filter(domain_id=experiment.domain_id).first()
    with transaction.atomic():
        group = list(
            Experiment.objects.select_for_update().filter(
                domain_id=experiment.domain_id, code_sha256=experiment.code_sha256,
                task_fingerprint=experiment.task_fingerprint, data_fingerprint=experiment.data_fingerprint,
                state=Experiment.State.COMPLETED,
            ).only(*_RANK_FIELDS)  # not the code and logs: a configuration may have many rows
        )
        scores = {e.pk: score_of(e, task) for e in group}
        counted = [scores[e.pk] for e in group if scores[e.pk] is not None and e.quarantine_state not in UNRANKED_STATES]
        mean = statistics.fmean(counted) if counted else None
        spread = (max(counted) - min(counted)) if len(counted) > 1 else None
        shared = (mean, spread, len(counted))
        stale_members = []  # ranked members whose stored values differ from the shared ones
        for e in group:
            if e.quarantine_state in UNRANKED_STATES or scores[e.pk] is None:
                values = (scores[e.pk], None, 1 if scores[e.pk] is not None else 0)
                if (e.rank_value, e.seed_spread, e.seed_count) != values:
                    Experiment.objects.filter(pk=e.pk).update(rank_value=values[0], seed_spread=values[1], seed_count=values[2])
            else:
                values = shared
                if (e.rank_value, e.seed_spread, e.seed_count) != values:
                    stale_members.append(e.pk)
            if e.pk == experiment.pk:
                experiment.rank_value, experiment.seed_spread, experiment.seed_count = values
        if stale_members:  # one UPDATE for the whole configuration, however many seeds it has
            Experiment.objects.filter(pk__in=stale_members).update(rank_value=mean, seed_spread=spread, seed_count=len(counted))


def rank_order(queryset: QuerySet, *, direction: str) -> QuerySet:
    """Order any experiment queryset best first by rank value (rows without one last). A row
    recorded without a rank value (before this field existed, or made directly in the ORM) ranks
    by its validation value: with no CV and one seed that is the same number."""
    qs = queryset.annotate(rank=Coalesce("rank_value", "primary_value"))
    order = F("rank").desc(nulls_last=True) if direction == "maximize" else F("rank").asc(nulls_last=True)
    return qs.order_by(order, "pk")


def ranked_experiments(domain: Domain, *, run=None, include_quarantined: bool = False) -> QuerySet:
    """Rule 3: the domain's ranked experiments (or one run's), best first."""
    qs = Experiment.objects.filter(domain=domain, state=Experiment.State.COMPLETED).filter(
        Q(rank_value__isnull=False) | Q(primary_value__isnull=False)
    )
    task = Task.objects.filter(domain=domain).first()
    if task is not None:
        qs = qs.filter(task_fingerprint=task.fingerprint, data_fingerprint=task.data_fingerprint)
    if run is not None:
        qs = qs.filter(run=run)
    if not include_quarantined:
        qs = qs.exclude(quarantine_state__in=UNRANKED_STATES)
    return rank_order(qs, direction=task.direction if task is not None else "minimize")


def best_experiment(domain: Domain, *, run=None) -> Experiment | None:
    """The best experiment of the domain (or of one run), or None when nothing ranks."""
    return ranked_experiments(domain, run=run).first()


def within_noise(experiment: Experiment, best: Experiment, *, metric: str) -> bool:
    """True when `experiment` cannot be told apart from `best`: their validation intervals
    (bootstrap, experiments/harness/noise.py) overlap, or their rank values differ by less than
    the larger seed spread of the two."""
    if experiment.pk == best.pk:
        return True
    if experiment.rank_value is None or best.rank_value is None:
        return False
    spread = max(experiment.seed_spread or 0.0, best.seed_spread or 0.0)
    if abs(experiment.rank_value - best.rank_value) <= spread:
        return True
    a, b = (experiment.validation_ci or {}).get(metric), (best.validation_ci or {}).get(metric)
    if a and b and len(a) == 2 and len(b) == 2:
        return a[0] <= b[1] and b[0] <= a[1]
    return False


def ranked_filter(queryset: QuerySet) -> QuerySet:
    """Drop what never ranks (quarantined, confirmed) from any experiment queryset."""
    return queryset.filter(~Q(quarantine_state__in=UNRANKED_STATES))


def rank_correlation(domain: Domain, *, limit: int = 10_000) -> tuple[float | None, int]:
    """Spearman correlation between the validation and holdout primary values over the domain's
    ranked experiments (an overfitting meter: near 1, validation order predicts holdout order;
    near 0, the validation ranking is noise or overfit). (None, n) below 3 experiments."""
    rows = list(
        ranked_experiments(domain).filter(holdout_primary_value__isnull=False)
        .values_list("primary_value", "holdout_primary_value")[:limit]
    )
    if len(rows) < 3:
        return None, len(rows)
    from scipy.stats import spearmanr

    rho = spearmanr([r[0] for r in rows], [r[1] for r in rows]).statistic
    return (None if rho is None or math.isnan(rho) else float(rho)), len(rows)


def trust_summary(domain: Domain) -> dict:
    """What the domain page shows about trust: quarantined count, probes, rank correlation."""
    qs = Experiment.objects.filter(domain=domain)
    rho, n = rank_correlation(domain)
    return {
        "quarantined": qs.filter(quarantine_state=Experiment.QuarantineState.QUARANTINED).count(),
        "confirmed": qs.filter(quarantine_state=Experiment.QuarantineState.CONFIRMED).count(),
        "probes": qs.filter(probe_of__isnull=False).count(),
        "rank_correlation": rho,
        "rank_correlation_n": n,
    }

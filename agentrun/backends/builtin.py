"""The built-in researcher: an LLM-free backend that does real research through the tool surface.

The plan, in order:
1. what knowledge says first (the best known configuration), then two baselines (a constant and a
   linear/logistic model with imputation, one-hot categoricals and scaling);
2. a scan of model families with default settings (boosting, forests, SVM, k-NN, interactions,
   elastic net), minus those the data is too big for or knowledge says lose;
3. for regression with a skewed-looking target, a target transform on the best family;
4. Optuna TPE (ask-and-tell) around the best two families, each trial refining its family's best;
5. a blend of the best distinct families, weighted on their out-of-fold predictions.
Experiments of one step run in parallel (up to `session.max_parallel`). Every train module also
prints its out-of-fold score on the training rows; the researcher ranks by that and the validation
score together (weighted by rows), because a small validation split alone rewards luck. A result
is "claimed" as the new best only when it beats the incumbent by more than the seed spread seen
so far; a candidate whose predictions depend on the seed is first re-run with other seeds. The search stops
on its budget, the run's limits, or a plateau (no claim in a while). Every decision depends only
on results, in a fixed order, so a run is deterministic for a given seed.

At the end, `findings` turns the evidence into knowledge atoms: the best configuration (with a
machine-readable `config=` a later run starts from), which families lose and by how much, and
whether the transform and the ensemble helped.
"""

from __future__ import annotations

import json
import logging
import math
import os
import statistics
import threading
import weakref
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import optuna
from django.db import connections

from agentrun.backends.builtin_code import (
    FAMILIES,
    Config,
    config_describe,
    family_label,
    train_code_render,
)
from agentrun.backends.builtin_plan import (
    DataProfile,
    Prior,
    boosting_early_stopping,
    confidence_from,
    config_is_stochastic,
    data_profile,
    default_params,
    knowledge_prior,
    params_round,
    scan_families,
    search_space,
)
from experiments.ranking import cv_parse, experiment_score

if TYPE_CHECKING:
    from agentrun.session import RunSession

logger = logging.getLogger(__name__)

# The experiments planned for when the run sets no experiment limit (the wall clock and the
# plateau still end it sooner).
DEFAULT_BUDGET = 40
# Seeds for re-runs are offset far from the run's seed so they never collide with it.
SEED_STRIDE = 1_000
# A regression target whose constant-baseline MAE/RMSE ratio falls below this looks skewed or
# heavy-tailed (a normal target gives 0.80); only then is a target transform worth a try.
SKEW_RATIO = 0.76
# Ensemble members must close at least this share of the best model's gain over the constant.
ENSEMBLE_MEMBER_GAP = 0.35
# Families whose tuning trials depend on the seed (bootstraps, feature sampling, early-stopping
# splits), so a new best among them is seed-checked before it is claimed.
SEEDED_TUNING = frozenset({"random_forest", "extra_trees", "hist_gradient_boosting"})

_researchers: weakref.WeakKeyDictionary[Any, Researcher] = weakref.WeakKeyDictionary()


def run(session: RunSession) -> None:
    researcher = Researcher(session)
    _researchers[session] = researcher
    researcher.research()
    session.result["builtin"] = researcher.summary()


def findings(session: RunSession) -> list[dict[str, Any]]:
    researcher = _researchers.pop(session, None)
    return researcher.findings() if researcher is not None else []


@dataclass
class Trial:
    config: Config
    phase: str  # knowledge | baseline | scan | transform | tune | seed_check | ensemble
    hypothesis: str
    parent_id: int | None = None
    seed: int = 0
    # A seed check renders the original's code verbatim (its hypothesis is the module
    # docstring), so the lab sees one configuration with several seeds (experiments/ranking.py).
    code_hypothesis: str = ""


@dataclass
class Outcome:
    order: int  # position in the researcher's own sequence: deterministic, unlike database ids
    trial: Trial
    experiment_id: int | None
    value: float | None  # validation primary metric; None when the experiment failed
    metrics: dict[str, Any]
    error: str
    elapsed: float  # seconds since the run started, when the result came back
    cv: float | None = None  # the out-of-fold primary metric the train code printed
    cv_rows: int = 0
    validation_rows: float = 0.0

    @property
    def ok(self) -> bool:
        return self.value is not None

    direction: str = "minimize"

    @property
    def search(self) -> float | None:
        """What steers the search (claims, tuning, family order): validation and out-of-fold values
        weighted by their row counts. A validation split of a few dozen rows alone would pick
        whichever model got lucky on them, and under ladder feedback many experiments are shown
        the same validation value; the out-of-fold value is this researcher's own measurement."""
        if self.value is None or self.cv is None or self.cv_rows <= 0:
            return self.value
        total = self.cv_rows + self.validation_rows
        return (self.cv * self.cv_rows + self.value * self.validation_rows) / total

    @property
    def score(self) -> float | None:
        """The one meaning of "best" (experiments/ranking.py) applied to what this researcher
        sees: validation, made worse (never better) by a worse out-of-fold value. The pick."""
        return experiment_score(
            validation=self.value, cv=self.cv, cv_rows=self.cv_rows, validation_rows=self.validation_rows,
            direction=self.direction,
        )


@dataclass
class Group:
    """One configuration and every seed it ran with."""

    config: Config
    outcomes: list[Outcome] = field(default_factory=list)

    def losses(self, sign: float) -> list[float]:
        return [sign * o.search for o in self.outcomes if o.ok]

    def rank_loss(self, sign: float) -> float:
        """The pick's key: the mean score over seeds (experiments/ranking.py)."""
        scores = [sign * o.score for o in self.outcomes if o.ok]
        return statistics.fmean(scores) if scores else math.inf

    def loss(self, sign: float) -> float:
        losses = self.losses(sign)
        return statistics.fmean(losses) if losses else math.inf

    def spread(self, sign: float) -> float | None:
        losses = self.losses(sign)
        return max(losses) - min(losses) if len(losses) > 1 else None

    @property
    def first(self) -> Outcome:
        return self.outcomes[0]


class Researcher:
    def __init__(self, session: RunSession) -> None:
        self.session = session
        ctx = session.context
        self.task_type: str = ctx["task_type"]
        self.metric: str = ctx["primary_metric"]
        self.direction: str = ctx["direction"]
        # Losses are minimised everywhere below; sign turns a "maximize" metric into one.
        self.sign = 1.0 if self.direction == "minimize" else -1.0
        self.seed = int(session.seed)
        self.domain_name: str = ctx.get("domain") or str(getattr(session.domain, "name", ""))
        # The run context carries the trainer-visible "data" summary of the snapshot.
        info = ctx.get("snapshot_info") or ctx.get("data") or {}
        self.profile: DataProfile = data_profile(info)
        classes = info.get("classes")
        self.classes: list | None = classes if isinstance(classes, list) and classes else None
        self.prior: Prior = knowledge_prior(ctx.get("knowledge") or [], self.task_type)
        remaining = session.experiments_remaining()
        self.budget = remaining if remaining is not None else DEFAULT_BUDGET
        self.outcomes: list[Outcome] = []
        self.groups: dict[str, Group] = {}
        self.claimed: Group | None = None
        self.claims: list[tuple[int, str]] = []  # (order, group key) each time the best changed
        self.studies: dict[str, optuna.Study] = {}
        self.pending_trials: dict[int, optuna.trial.Trial] = {}
        self.stop_reason = ""
        # Experiments run side by side; each gets its share of the cores so they do not fight.
        self.threads = max(1, (os.cpu_count() or 1) // max(1, session.max_parallel))
        self._order = 0
        self._lock = threading.Lock()
        self._transform_tried: dict[str, Outcome] = {}  # family → the transform experiment
        self._ensembles: list[Outcome] = []

    # --- the plan ---------------------------------------------------------------------------

    def research(self) -> None:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self._say(
            f"Built-in researcher: {self.task_type}, {self.metric} ({self.direction}), "
            f"budget {self.budget} experiments, {self.session.max_parallel} in parallel."
        )
        try:
            self._baselines()
            self._scan()
            self._transform()
            self._tune()
            self._ensemble()
        except _Stop as stop:
            self.stop_reason = str(stop)
        if not self.stop_reason:
            self.stop_reason = "plan complete"
        best = self.pick()
        if best is not None:
            self._say(
                f"Done ({self.stop_reason}). Best: {config_describe(best.config, self.task_type)}, "
                f"{self.metric} {self._fmt(best.loss(self.sign) * self.sign)} on CV + validation "
                f"(experiment {best.first.experiment_id})."
            )
        else:
            self._say(f"Done ({self.stop_reason}); no experiment completed.")

    def _baselines(self) -> None:
        trials = []
        if self.prior.best_config is not None:
            config = self.prior.best_config
            trials.append(Trial(
                config, "knowledge",
                f"Start from the best configuration known for this domain (knowledge atom "
                f"#{self.prior.best_atom_id}): {config_describe(config, self.task_type)}.",
            ))
        trials.append(Trial(
            Config("constant"), "baseline",
            "Constant baseline: predict the training "
            + ("mean" if self.task_type == "regression" else "class frequencies")
            + " for every row. Every model must beat this.",
        ))
        linear = Config("linear", default_params("linear", self.task_type))
        trials.append(Trial(
            linear, "baseline",
            f"Linear baseline: {family_label('linear', self.task_type)} with median imputation plus "
            "missing-value indicators, one-hot encoded categoricals and standard scaling.",
        ))
        self._run(trials)
        if self.prior.skip:
            skipped = ", ".join(f"{f} (atom #{a})" for f, a in sorted(self.prior.skip.items()))
            self._say(f"Knowledge says these families lose here; skipping them: {skipped}.")

    def _scan(self) -> None:
        families = scan_families(task_type=self.task_type, profile=self.profile, skip=set(self.prior.skip or {}))
        # Keep a third of the budget (at least two) for tuning and ensembles.
        room = self.budget - self._count() - max(2, self.budget // 3)
        families = families[: max(1, room)]
        trials = []
        for family in families:
            config = Config(family, default_params(family, self.task_type))
            if config.key() in self.groups:
                continue
            trials.append(Trial(
                config, "scan",
                f"{config_describe(config, self.task_type)} with default settings: does this "
                f"family fit the data better than the linear baseline?",
            ))
        self._say("Scanning model families: " + ", ".join(family_label(t.config.family, self.task_type) for t in trials) + ".")
        self._run(trials)

    def _transform(self) -> None:
        if self.task_type != "regression" or not self._target_looks_skewed():
            return
        best = self._family_bests()[:1]
        trials = []
        for group in best:
            if group.config.target_transform != "none" or group.config.members:
                continue
            config = Config(group.config.family, group.config.params, target_transform="yeo_johnson")
            trials.append(Trial(
                config, "transform",
                f"The target looks skewed (MAE/RMSE of the constant baseline is low): fit "
                f"{family_label(config.family, self.task_type)} on a Yeo-Johnson transformed "
                f"target and predict back.",
                parent_id=group.first.experiment_id,
            ))
        outcomes = self._run(trials)
        for outcome in outcomes:
            self._transform_tried[outcome.trial.config.family] = outcome

    def _tune(self) -> None:
        reserve = self._ensemble_reserve()
        patience = max(6, self.budget // 3)
        started = self._order
        slot = 0
        while self._room() - reserve > 0:
            # A plateau is counted in tuning experiments only: the scan is not a search.
            if self._order - max(started, self._last_claim_order()) >= patience:
                self._say(f"No new best in {patience} experiments: the search has plateaued.")
                self.stop_reason = "plateau"
                return
            families = [g.config.family for g in self._family_bests()]
            top = families[: 3 if self.budget >= 60 else 2]
            if not top:
                return
            # Two of every three batches go to the leading family, the rest to the runner-up.
            # A batch is one family: its trials take about as long as each other, so no slot
            # idles while a slow family's trial finishes next to a fast one's.
            family = top[0] if slot % 3 != 1 or len(top) == 1 else top[1 % len(top)]
            slot += 1
            # A seeded family's new best is re-run with other seeds before it is claimed: keep
            # room for that, so the checks never eat the ensemble's experiments.
            checks = self._seed_checks_needed() if family in SEEDED_TUNING else 0
            width = min(self.session.max_parallel, self._room() - reserve - checks)
            if width <= 0:
                return
            trials = []
            seen: set[str] = set()
            for _ in range(width):
                trial = self._ask(family, seen)
                if trial is not None:
                    trials.append(trial)
                    seen.add(trial.config.key())
            if not trials:
                return
            outcomes = self._run(trials)
            for outcome in outcomes:
                self._tell(outcome)

    def _ensemble(self) -> None:
        bests = self._family_bests()
        constant = self.groups.get(Config("constant").key())
        if len(bests) < 2:
            return
        best_loss = bests[0].loss(self.sign)
        floor = constant.loss(self.sign) if constant is not None and constant.outcomes else None
        members = []
        for group in bests:
            loss = group.loss(self.sign)
            if floor is not None and floor > best_loss:
                close = (loss - best_loss) / (floor - best_loss) <= ENSEMBLE_MEMBER_GAP
            else:
                close = loss - best_loss <= 0.05 * abs(best_loss)
            if close:
                members.append(group)
        # A small blend of the very best, and a wider one the weighting may thin out.
        sizes = sorted({min(3, len(members)), min(6, len(members))} - {0, 1})[: max(0, self._room())]
        trials = []
        for k in sizes:
            chosen = members[:k]
            config = Config("ensemble", members=tuple(g.config for g in chosen))
            if config.key() in self.groups:
                continue  # e.g. the blend knowledge started this run from
            names = " + ".join(family_label(g.config.family, self.task_type) for g in chosen)
            trials.append(Trial(
                config, "ensemble",
                f"Blend the {k} best distinct families ({names}) with weights chosen on their "
                "out-of-fold predictions: their errors differ, so part of them should cancel.",
                parent_id=chosen[0].first.experiment_id,
            ))
        self._ensembles = self._run(trials)

    # --- Optuna -----------------------------------------------------------------------------

    def _study(self, family: str) -> optuna.Study:
        study = self.studies.get(family)
        if study is not None:
            return study
        sampler = optuna.samplers.TPESampler(
            seed=self.seed * 100 + FAMILIES.index(family),
            n_startup_trials=3,
            multivariate=True,
            constant_liar=True,  # trials asked together in one batch spread out
        )
        study = optuna.create_study(direction="minimize", sampler=sampler)
        space = search_space(family, self.task_type)
        # Teach it everything this family has already shown, so the search starts around it.
        transform = self._family_transform(family)
        for group in self.groups.values():
            config = group.config
            if config.family != family or config.target_transform != transform or not group.outcomes:
                continue
            params = {k: config.params.get(k) for k in space}
            if any(not _contains(space[k], v) for k, v in params.items()):
                continue
            loss = group.loss(self.sign)
            if math.isfinite(loss):
                study.add_trial(optuna.trial.create_trial(params=params, distributions=space, value=loss))
        self.studies[family] = study
        return study

    def _ask(self, family: str, seen: set[str]) -> Trial | None:
        study = self._study(family)
        base = self._best_group(family)
        transform = self._family_transform(family)
        for _ in range(20):
            trial = study.ask(search_space(family, self.task_type))
            params = {**default_params(family, self.task_type), **params_round(trial.params)}
            if family == "hist_gradient_boosting" and boosting_early_stopping(self.task_type, self.profile):
                params["early_stopping"] = True  # max_iter becomes a cap; the fit stops when done
            config = Config(family, params, target_transform=transform)
            key = config.key()
            known = self.groups.get(key)
            if known is not None and known.outcomes:
                study.tell(trial, known.loss(self.sign) if known.first.ok else None,
                           state=None if known.first.ok else optuna.trial.TrialState.FAIL)
                continue
            if key in seen:
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                continue
            changes = ", ".join(
                f"{k}={_fmt_param(v)}" for k, v in sorted(params.items())
                if base is None or base.config.params.get(k) != v
            )
            number = len([o for o in self.outcomes if o.trial.phase == "tune" and o.trial.config.family == family]) + 1
            hypothesis = (
                f"Tune {family_label(family, self.task_type)} around experiment "
                f"{base.first.experiment_id if base else '-'} (Optuna TPE, trial {number}): "
                f"{changes or 'the same settings'}."
            )
            self.pending_trials[id(config)] = trial
            return Trial(config, "tune", hypothesis, parent_id=base.first.experiment_id if base else None)
        return None

    def _tell(self, outcome: Outcome) -> None:
        trial = self.pending_trials.pop(id(outcome.trial.config), None)
        if trial is None:
            return
        study = self.studies[outcome.trial.config.family]
        if outcome.ok:
            group = self.groups[outcome.trial.config.key()]
            study.tell(trial, group.loss(self.sign))
        else:
            study.tell(trial, state=optuna.trial.TrialState.FAIL)

    # --- running experiments ----------------------------------------------------------------

    def _run(self, trials: list[Trial]) -> list[Outcome]:
        """Run trials (in parallel up to max_parallel), record them, then decide on claims."""
        if self.session.should_stop():
            raise _Stop(self.session.stop_reason or "stop requested")
        trials = trials[: self._room()]
        if not trials:
            if self._room() <= 0:
                raise _Stop("experiment budget used")
            return []
        for trial in trials:
            if trial.phase != "seed_check":
                trial.seed = self.seed
        self.session.add_turn()
        numbered = [(self._next_order(), t) for t in trials]
        with ThreadPoolExecutor(max_workers=self.session.max_parallel, thread_name_prefix="builtin") as pool:
            outcomes = list(pool.map(self._run_one, numbered))
        for outcome in outcomes:
            self.outcomes.append(outcome)
            if outcome.experiment_id is None and not outcome.ok:
                continue
            self.groups.setdefault(outcome.trial.config.key(), Group(outcome.trial.config)).outcomes.append(outcome)
        # A limit reached by this batch ends the search at the next _run, after this decision.
        if any(o.trial.phase != "seed_check" for o in outcomes):
            self._consider([o for o in outcomes if o.ok and o.trial.phase != "seed_check"])
        return outcomes

    def _run_one(self, numbered: tuple[int, Trial]) -> Outcome:
        order, trial = numbered
        try:
            code = train_code_render(
                config=trial.config, task_type=self.task_type, metric=self.metric,
                hypothesis=trial.code_hypothesis or trial.hypothesis, threads=self.threads, classes=self.classes,
            )
            arguments: dict[str, Any] = {
                "code": code,
                "hypothesis": trial.hypothesis,
                "variables": {**trial.config.as_dict(), "phase": trial.phase},
                "seed": trial.seed,
            }
            if trial.parent_id is not None:
                arguments["parent_id"] = trial.parent_id
            result = self.session.call_tool("run_experiment", arguments)
        finally:
            # Each worker thread has its own database connection; give it back.
            connections.close_all()
        value = result.get("primary_value") if result.get("state") == "completed" else None
        if value is not None and not math.isfinite(value):
            value = None
        cv, cv_rows = cv_parse(result.get("stdout_tail") or "", self.metric)
        return Outcome(
            direction=self.direction,
            cv=cv,
            cv_rows=cv_rows,
            validation_rows=self._validation_rows(cv_rows),
            order=order,
            trial=trial,
            experiment_id=result.get("experiment_id"),
            value=value,
            metrics=result.get("metrics") or {},
            error=result.get("error") or "",
            elapsed=self.session.elapsed_seconds(),
        )

    def _consider(self, candidates: list[Outcome]) -> None:
        """Claim the batch's best result if it beats the incumbent by more than the seed spread."""
        if not candidates:
            return
        candidate = min(candidates, key=lambda o: (self.sign * o.search, o.order))
        group = self.groups[candidate.trial.config.key()]
        if self.claimed is not None:
            margin = self.claimed.loss(self.sign) - group.loss(self.sign)
            if margin <= self._threshold(group, self.claimed):
                return
        can_check = self._room() > 0 and not self.session.should_stop()
        if config_is_stochastic(group.config, self.profile) and len(group.outcomes) == 1 and can_check:
            self._seed_check(group)
            if self.claimed is not None:
                margin = self.claimed.loss(self.sign) - group.loss(self.sign)
                if margin <= self._threshold(group, self.claimed):
                    self._say(
                        f"Experiment {candidate.experiment_id} looked better, but over "
                        f"{len(group.outcomes)} seeds its margin ({self._fmt(margin)}) is within "
                        f"the seed spread; the best stays experiment {self.claimed.first.experiment_id}."
                    )
                    return
        previous = self.claimed
        self.claimed = group
        self.claims.append((candidate.order, group.config.key()))
        mean = group.loss(self.sign) * self.sign
        seeds = f" (mean of {len(group.losses(self.sign))} seeds)" if len(group.outcomes) > 1 else ""
        gain = ""
        if previous is not None:
            gain = f", {self._fmt(previous.loss(self.sign) - group.loss(self.sign))} better than experiment {previous.first.experiment_id}"
        self._say(
            f"New best: experiment {candidate.experiment_id}, {config_describe(group.config, self.task_type)}: "
            f"{self.metric} {self._fmt(mean)} on CV + validation{seeds}{gain}."
        )

    def _seed_checks_needed(self) -> int:
        """How many re-runs a seed check takes: two until a seed spread has been seen, then one."""
        return 1 if self._pooled_spread() is not None else 2

    def _seed_check(self, group: Group) -> None:
        n = min(self._seed_checks_needed(), self._room())
        base = group.first
        trials = [
            Trial(
                group.config, "seed_check",
                f"Seed check of experiment {base.experiment_id}: the same code with seed "
                f"{self.seed + SEED_STRIDE * (k + 1)}, to measure the seed spread before claiming a new best.",
                parent_id=base.experiment_id,
                seed=self.seed + SEED_STRIDE * (k + 1),
                code_hypothesis=base.trial.code_hypothesis or base.trial.hypothesis,
            )
            for k in range(n)
        ]
        self._run(trials)

    def _threshold(self, a: Group, b: Group) -> float:
        spreads = [s for s in (a.spread(self.sign), b.spread(self.sign), self._pooled_spread()) if s is not None]
        return max(spreads, default=0.0)

    def _pooled_spread(self) -> float | None:
        spreads = [s for g in self.groups.values() if (s := g.spread(self.sign)) is not None]
        return statistics.median(spreads) if spreads else None

    # --- bookkeeping ------------------------------------------------------------------------

    def _next_order(self) -> int:
        with self._lock:
            self._order += 1
            return self._order

    def _count(self) -> int:
        return self._order

    def _room(self) -> int:
        """Experiments this run may still start: the plan's budget and the session's limit."""
        left = self.budget - self._order
        remaining = self.session.experiments_remaining()
        return max(0, min(left, remaining) if remaining is not None else left)

    def _validation_rows(self, cv_rows: int) -> float:
        if self.profile.n_validation:
            return float(self.profile.n_validation)
        if self.profile.n_test:
            return self.profile.n_test * 0.5  # the framework's default holdout share is half
        return cv_rows / 8  # an 80/20 split with half of the test rows for validation

    def _ensemble_reserve(self) -> int:
        return 2 if self.budget >= 15 else (1 if self.budget >= 8 else 0)

    def _last_claim_order(self) -> int:
        return self.claims[-1][0] if self.claims else 0

    def _family_bests(self) -> list[Group]:
        """The best group of each single-model family (constant excluded), best first."""
        best: dict[str, Group] = {}
        for group in self.groups.values():
            if group.config.family in ("constant", "ensemble") or not group.losses(self.sign):
                continue
            current = best.get(group.config.family)
            if current is None or _rank(group, self.sign) < _rank(current, self.sign):
                best[group.config.family] = group
        return sorted(best.values(), key=lambda g: _rank(g, self.sign))

    def _best_group(self, family: str) -> Group | None:
        return next((g for g in self._family_bests() if g.config.family == family), None)

    def _family_transform(self, family: str) -> str:
        group = self._best_group(family)
        return group.config.target_transform if group is not None else "none"

    def _target_looks_skewed(self) -> bool:
        constant = self.groups.get(Config("constant").key())
        if constant is None or not constant.first.ok:
            return False
        metrics = constant.first.metrics
        mae, rmse = metrics.get("mae"), metrics.get("rmse")
        if not isinstance(mae, int | float) or not isinstance(rmse, int | float) or rmse <= 0:
            return False
        return mae / rmse < SKEW_RATIO

    def _say(self, text: str) -> None:
        self.session.emit("text", {"text": text, "source": "builtin"})

    def _fmt(self, value: float) -> str:
        return f"{value:.4g}"

    # --- results and knowledge --------------------------------------------------------------

    def pick(self) -> Group | None:
        """The researcher's pick: the best configuration by the one meaning of "best"
        (experiments/ranking.py: mean score over its seeds), applied to what it saw. Claims
        (with their seed-spread margin) steer the search; the pick is this ranking's #1."""
        groups = [g for g in self.groups.values() if g.losses(self.sign)]
        # Ties (common under ladder feedback, where many are shown one released value) go to the
        # better search value, then to the earlier configuration.
        return min(groups, key=lambda g: (g.rank_loss(self.sign), *_rank(g, self.sign)), default=None)

    def summary(self) -> dict[str, Any]:
        """What the run record keeps: the pick and when the search reached it."""
        best = self.pick()
        data: dict[str, Any] = {"stop_reason": self.stop_reason, "experiments": self._order}
        if best is not None:
            reached = best.first  # when the search first ran the configuration it claims
            data.update({
                "claimed_experiment_id": best.first.experiment_id,
                "claimed_value": best.loss(self.sign) * self.sign,
                "claimed_seeds": len(best.losses(self.sign)),
                "claimed_config": best.config.as_dict(),
                "reached_at_experiment": reached.order if reached else None,
                "reached_at_seconds": round(reached.elapsed, 2) if reached else None,
                "seed_spread": self._pooled_spread(),
            })
        return data

    def _first_reaching(self, loss: float) -> Outcome | None:
        """The first experiment (in the researcher's order) at least as good as `loss`."""
        for outcome in sorted(self.outcomes, key=lambda o: o.order):
            if outcome.ok and self.sign * outcome.value <= loss + 1e-12:
                return outcome
        return None

    def findings(self) -> list[dict[str, Any]]:
        best = self.pick()
        if best is None:
            return []
        label = lambda config: config_describe(config, self.task_type)  # noqa: E731
        metric = self.metric.upper() if self.metric in ("rmse", "mae") else self.metric
        spread = self._pooled_spread() or 0.0
        best_loss = best.loss(self.sign)
        scale = best_loss
        out: list[dict[str, Any]] = []
        bests = self._family_bests()
        runner_up = next((g for g in bests if g.config.family not in _families_of(best.config)), None)
        margin = (runner_up.loss(self.sign) - best_loss) if runner_up is not None else 0.0
        seeds = len(best.losses(self.sign))
        spread_text = (
            f"; seed spread {self._fmt(best.spread(self.sign) or 0.0)} over {seeds} seeds" if seeds > 1 else ""
        )
        out.append({
            "context": f"Which model to start from on domain {self.domain_name} "
            f"({self.task_type}, {self.metric}).",
            "claim": f"The best configuration found is {label(best.config)}: {self.metric} "
            f"{self._fmt(best_loss * self.sign)} on CV + validation (experiment "
            f"{best.first.experiment_id}{spread_text}).",
            "action": "Start the next search from this configuration. config="
            + json.dumps(best.config.as_dict(), sort_keys=True),
            "confidence": confidence_from(margin=margin, spread=spread, scale=scale),
            "evidence": [(o.experiment_id, "supports") for o in best.outcomes if o.experiment_id],
        })
        # Families that lose to the best family, largest gaps first (at most three atoms).
        if bests:
            leader = bests[0]
            losers = sorted(bests[1:], key=lambda g: -(g.loss(self.sign) - leader.loss(self.sign)))
            for group in losers[:3]:
                gap = group.loss(self.sign) - leader.loss(self.sign)
                relative = gap / abs(group.loss(self.sign)) if group.loss(self.sign) else 0.0
                confidence = confidence_from(margin=gap, spread=spread, scale=scale)
                skip = relative >= 0.10 and confidence >= 0.8
                out.append({
                    "context": f"Choosing a model family on domain {self.domain_name} "
                    f"({self.task_type}): {family_label(group.config.family, self.task_type)}.",
                    "claim": f"{family_label(leader.config.family, self.task_type)} beats "
                    f"{family_label(group.config.family, self.task_type)} by {relative:.0%} "
                    f"{metric} on CV + validation (experiments {leader.first.experiment_id} vs "
                    f"{group.first.experiment_id}).",
                    "action": (
                        f"Skip {family_label(group.config.family, self.task_type)} when scanning "
                        f"families here. skip_family={group.config.family}"
                        if skip else "Keep it in the scan: the gap is small."
                    ),
                    "confidence": confidence,
                    "evidence": [
                        (leader.first.experiment_id, "supports"),
                        (group.first.experiment_id, "supports"),
                    ],
                })
        for family, outcome in self._transform_tried.items():
            base = self._plain_group(family, outcome.trial.parent_id)
            if base is None or not outcome.ok:
                continue
            gap = base.loss(self.sign) - self.groups[outcome.trial.config.key()].loss(self.sign)
            verb = "improves" if gap > 0 else "hurts"
            relative = abs(gap) / abs(base.loss(self.sign)) if base.loss(self.sign) else 0.0
            out.append({
                "context": f"Target transform for {family_label(family, self.task_type)} on domain "
                f"{self.domain_name} (regression).",
                "claim": f"A Yeo-Johnson target transform {verb} {family_label(family, self.task_type)} "
                f"by {relative:.1%} {metric} on CV + validation (experiments {outcome.experiment_id} vs "
                f"{base.first.experiment_id}).",
                "action": "Use the transformed target." if gap > 0 else "Keep the raw target.",
                "confidence": confidence_from(margin=abs(gap), spread=spread, scale=scale),
                "evidence": [(outcome.experiment_id, "supports"), (base.first.experiment_id, "supports")],
            })
        for outcome in self._ensembles:
            if not outcome.ok or not bests:
                continue
            group = self.groups[outcome.trial.config.key()]
            gap = bests[0].loss(self.sign) - group.loss(self.sign)
            names = " + ".join(family_label(m.family, self.task_type) for m in outcome.trial.config.members)
            relative = abs(gap) / abs(bests[0].loss(self.sign)) if bests[0].loss(self.sign) else 0.0
            verb = "improves on" if gap > 0 else "is worse than"
            out.append({
                "context": f"Ensembling {names} on domain {self.domain_name} ({self.task_type}).",
                "claim": f"A weighted blend of {names} {verb} the best single model by {relative:.1%} "
                f"{metric} on CV + validation (experiments {outcome.experiment_id} vs "
                f"{bests[0].first.experiment_id}).",
                "action": "Finish searches here with this ensemble." if gap > 0 else "Prefer the single best model.",
                "confidence": confidence_from(margin=abs(gap), spread=spread, scale=scale),
                "evidence": [(outcome.experiment_id, "supports"), (bests[0].first.experiment_id, "supports")],
            })
        return out

    def _plain_group(self, family: str, experiment_id: int | None) -> Group | None:
        for group in self.groups.values():
            if any(o.experiment_id == experiment_id for o in group.outcomes):
                return group
        return self._best_group(family)


class _Stop(Exception):
    """The run's budget or limits ended the search."""


def _rank(group: Group, sign: float) -> tuple[float, int]:
    return (group.loss(sign), group.first.order)


def _families_of(config: Config) -> set[str]:
    return {m.family for m in config.members} if config.members else {config.family}


def _fmt_param(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _contains(distribution: Any, value: Any) -> bool:
    try:
        return value is not None and distribution._contains(distribution.to_internal_repr(value))
    except (ValueError, TypeError, AttributeError):
        return False

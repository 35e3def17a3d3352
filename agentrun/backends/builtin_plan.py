"""The built-in researcher's search plan: families, default settings, tuning spaces, the data
profile it plans from, and how its knowledge atoms are written and read back.

Everything here is pure (no Django, no tools), so the plan can be tested on its own.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from agentrun.backends.builtin_code import Config

# Families scanned after the two baselines, most often useful first: when the budget is short
# the scan is cut from the end.
SCAN_ORDER = (
    "hist_gradient_boosting",
    "random_forest",
    "svm",
    "extra_trees",
    "knn",
    "linear_interactions",
    "elastic_net",
)
# Beyond these sizes a family costs too much time for what it usually brings.
SVM_MAX_ROWS = 5_000
KNN_MAX_ROWS = 50_000
INTERACTIONS_MAX_NUMERIC = 40
INTERACTIONS_MAX_CELLS = 4_000_000


def default_params(family: str, task_type: str) -> dict[str, Any]:
    """The family's settings in the scan: scikit-learn's defaults, or close to them."""
    regression = task_type == "regression"
    return {
        "constant": {},
        "linear": {"alpha": 1.0} if regression else {"C": 1.0},
        "elastic_net": {"alpha": 0.01, "l1_ratio": 0.5},
        "linear_interactions": {"alpha": 10.0} if regression else {"C": 0.1},
        "random_forest": {"n_estimators": 200, "max_features": 1.0 if regression else "sqrt", "min_samples_leaf": 1},
        "extra_trees": {"n_estimators": 200, "max_features": 1.0 if regression else "sqrt", "min_samples_leaf": 1},
        # Exactly scikit-learn's defaults, so the scan includes "default HistGradientBoosting".
        "hist_gradient_boosting": {
            "learning_rate": 0.1,
            "max_iter": 100,
            "max_leaf_nodes": 31,
            "min_samples_leaf": 20,
            "l2_regularization": 0.0,
            "max_features": 1.0,
            "early_stopping": "auto",
        },
        "knn": {"n_neighbors": 10, "weights": "distance"},
        "svm": {"C": 1.0, "epsilon": 0.1} if regression else {"C": 1.0},
    }[family]


def search_space(family: str, task_type: str) -> dict[str, BaseDistribution]:
    """The hyper-parameters Optuna tunes for a family; the others keep their default."""
    regression = task_type == "regression"
    trees = {
        "max_features": CategoricalDistribution(["sqrt", 0.25, 0.5, 0.75, 1.0]),
        "min_samples_leaf": IntDistribution(1, 20, log=True),
    }
    spaces: dict[str, dict[str, BaseDistribution]] = {
        "constant": {},
        "linear": {"alpha": FloatDistribution(1e-3, 1e3, log=True)}
        if regression
        else {"C": FloatDistribution(1e-3, 1e2, log=True)},
        "elastic_net": {
            "alpha": FloatDistribution(1e-4, 1.0, log=True),
            "l1_ratio": FloatDistribution(0.05, 1.0),
        },
        "linear_interactions": {"alpha": FloatDistribution(1e-2, 1e4, log=True)}
        if regression
        else {"C": FloatDistribution(1e-4, 10.0, log=True)},
        "random_forest": trees,
        "extra_trees": trees,
        "hist_gradient_boosting": {
            "learning_rate": FloatDistribution(0.01, 0.3, log=True),
            "max_iter": IntDistribution(50, 400, log=True),
            "max_leaf_nodes": IntDistribution(4, 64, log=True),
            "min_samples_leaf": IntDistribution(2, 80, log=True),
            "l2_regularization": CategoricalDistribution([0.0, 0.01, 0.1, 1.0, 10.0]),
            "max_features": FloatDistribution(0.3, 1.0),
        },
        "knn": {
            "n_neighbors": IntDistribution(1, 60, log=True),
            "weights": CategoricalDistribution(["uniform", "distance"]),
        },
        "svm": {"C": FloatDistribution(0.03, 300.0, log=True), "epsilon": FloatDistribution(0.01, 1.0, log=True)}
        if regression
        else {"C": FloatDistribution(0.03, 300.0, log=True)},
    }
    return spaces[family]


def params_round(params: dict[str, Any]) -> dict[str, Any]:
    """Three significant digits: readable code, and nothing is lost that tuning could find."""
    out = {}
    for key, value in params.items():
        if isinstance(value, float) and value != 0 and math.isfinite(value):
            value = float(f"{value:.3g}")
        out[key] = value
    return out


@dataclass(frozen=True)
class DataProfile:
    """What the researcher knows about the data before it trains anything (None: unknown)."""

    n_rows: int | None = None
    n_test: int | None = None
    n_validation: int | None = None
    n_features: int | None = None
    n_categorical: int | None = None
    n_classes: int | None = None

    @property
    def n_numeric(self) -> int | None:
        if self.n_features is None or self.n_categorical is None:
            return None
        return self.n_features - self.n_categorical


_NUMERIC_DTYPE = re.compile(r"^(u?int|float|bool|Int|UInt|Float|boolean)", re.IGNORECASE)


def data_profile(snapshot_info: dict[str, Any] | None) -> DataProfile:
    """Read rows, features, categoricals and classes from the task's snapshot info, or from the
    run context's "data" summary of it, whatever of it is there. The info is written at freeze;
    its exact keys belong to the domains app."""
    info = dict(snapshot_info or {})
    # The run context's "data" summary (what an agent sees) names two of these differently.
    if "shapes" not in info and isinstance(info.get("X_train"), dict):
        info["shapes"] = {"X_train": info["X_train"].get("shape")}
    if "dtypes" not in info and "columns" in info:
        info["dtypes"] = {"X_train": info["columns"]}
    n_rows = _first_int(info, ("n_train", "train_rows", "rows_train"))
    shapes = info.get("shapes") or {}
    shape = shapes.get("X_train") if isinstance(shapes, dict) else None
    if n_rows is None and isinstance(shape, list | tuple) and shape:
        n_rows = _int_or_none(shape[0])
    n_features = _int_or_none(shape[1]) if isinstance(shape, list | tuple) and len(shape) > 1 else None
    n_features = n_features if n_features is not None else _first_int(info, ("n_features",))
    n_categorical = None
    dtypes = info.get("dtypes") or {}
    columns = dtypes.get("X_train") if isinstance(dtypes, dict) and "X_train" in dtypes else dtypes
    if isinstance(columns, dict) and columns:
        # Long column lists are summarised ("…": "N more columns"); count what is listed.
        listed = [v for k, v in columns.items() if k != "…" and isinstance(v, str)]
        n_categorical = sum(1 for v in listed if not _NUMERIC_DTYPE.match(v))
        n_features = n_features if n_features is not None else len(listed)
    elif isinstance(columns, str):  # one dtype for a whole array
        n_categorical = 0 if _NUMERIC_DTYPE.match(columns) else n_features
    classes = info.get("classes")
    n_classes = len(classes) if isinstance(classes, list) else _first_int(info, ("n_classes",))
    n_test = _first_int(info, ("n_test", "n_test_rows_to_predict", "test_rows", "rows_test"))
    test_shape = shapes.get("X_test") if isinstance(shapes, dict) else None
    if n_test is None and isinstance(test_shape, list | tuple) and test_shape:
        n_test = _int_or_none(test_shape[0])
    n_validation = _first_int(info, ("n_validation",))
    return DataProfile(n_rows=n_rows, n_test=n_test, n_validation=n_validation, n_features=n_features, n_categorical=n_categorical, n_classes=n_classes)


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _first_int(info: dict[str, Any], keys: tuple[str, ...]) -> int | None:
    for key in keys:
        if key in info:
            value = _int_or_none(info[key])
            if value is not None:
                return value
    return None


def scan_families(*, task_type: str, profile: DataProfile, skip: set[str]) -> list[str]:
    """The families to try after the baselines, in order, without those that do not fit the data
    or that knowledge says lose on this domain."""
    families = []
    for family in SCAN_ORDER:
        if family in skip:
            continue
        if family == "elastic_net" and task_type != "regression":
            continue
        if family == "svm" and profile.n_rows is not None and profile.n_rows > SVM_MAX_ROWS:
            continue
        if family == "knn" and profile.n_rows is not None and profile.n_rows > KNN_MAX_ROWS:
            continue
        if family == "linear_interactions" and not _interactions_fit(profile):
            continue
        families.append(family)
    return families


# Boosting fits one tree per class and iteration: from this many rows × trees per iteration on,
# a tuning trial holds out a tenth of its rows to stop when more iterations no longer help.
BOOSTING_EARLY_STOP_WORK = 10_000
BOOSTING_EARLY_STOP_MIN_ROWS = 1_000


def boosting_early_stopping(task_type: str, profile: DataProfile) -> bool:
    """Whether HistGradientBoosting's tuning trials stop early (on a held-out tenth of their
    training rows) instead of always fitting max_iter iterations. Multiclass boosting costs
    a tree per class per iteration, so there it pays from a few thousand rows; scikit-learn's
    own "auto" turns it on above 10,000 rows for every task."""
    if profile.n_rows is None or profile.n_rows < BOOSTING_EARLY_STOP_MIN_ROWS:
        return False
    per_iteration = profile.n_classes if task_type == "multiclass" and profile.n_classes else 1
    return profile.n_rows * per_iteration >= BOOSTING_EARLY_STOP_WORK


def _interactions_fit(profile: DataProfile) -> bool:
    """Pairwise products of up to INTERACTIONS_MAX_NUMERIC numbers; of more only while the data
    is short enough that rows × products stays small (wide, short tables are cheap)."""
    numeric = profile.n_numeric if profile.n_numeric is not None else profile.n_features
    if numeric is None or numeric <= INTERACTIONS_MAX_NUMERIC:
        return True
    products = numeric * (numeric + 1) // 2
    return profile.n_rows is not None and profile.n_rows * products <= INTERACTIONS_MAX_CELLS


def config_is_stochastic(config: Config, profile: DataProfile) -> bool:
    """Whether the seed can change this configuration's predictions (so a seed check means
    something). Forests bootstrap and sample features; boosting only when it subsamples features
    or holds out rows for early stopping; the linear, k-NN and SVM pipelines are deterministic."""
    if config.members:
        return any(config_is_stochastic(m, profile) for m in config.members)
    if config.family in ("random_forest", "extra_trees"):
        return True
    if config.family == "hist_gradient_boosting":
        p = config.params
        early = p.get("early_stopping", "auto")
        # scikit-learn's "auto" turns early stopping on above 10,000 rows.
        early_on = early is True or (early == "auto" and (profile.n_rows is None or profile.n_rows > 10_000))
        return float(p.get("max_features", 1.0)) < 1.0 or early_on
    return False


# --- Knowledge ---------------------------------------------------------------------------------
# The researcher writes atoms people read, with a machine-readable tail in the action
# ("config={...}" or "skip_family=name") so a later run can act on them.

CONFIG_RE = re.compile(r"config=(\{.*\})\s*$", re.DOTALL)
SKIP_RE = re.compile(r"skip_family=([a-z_]+)")
# Below this confidence an atom informs but does not change the plan.
ACT_ON_CONFIDENCE = 0.6


@dataclass
class Prior:
    """What earlier runs' knowledge tells this run."""

    best_config: Config | None = None
    best_atom_id: int | None = None
    skip: dict[str, int] | None = None  # family → the atom that says it loses


def knowledge_prior(atoms: list[dict[str, Any]], task_type: str) -> Prior:
    prior = Prior(skip={})
    best_confidence = -1.0
    for atom in atoms:
        confidence = float(atom.get("confidence") or 0)
        if confidence < ACT_ON_CONFIDENCE:
            continue
        action = atom.get("action") or ""
        match = CONFIG_RE.search(action)
        if match and confidence > best_confidence:
            try:
                config = Config.from_dict(json.loads(match.group(1)))
            except (ValueError, KeyError, TypeError):
                continue
            if config.family == "elastic_net" and task_type != "regression":
                continue
            prior.best_config, prior.best_atom_id = config, atom.get("atom_id") or atom.get("id")
            best_confidence = confidence
        for family in SKIP_RE.findall(action):
            prior.skip.setdefault(family, atom.get("atom_id") or atom.get("id"))
    # Never skip what the best known configuration is made of.
    if prior.best_config is not None:
        for member in prior.best_config.members or (prior.best_config,):
            prior.skip.pop(member.family, None)
    return prior


def confidence_from(*, margin: float, spread: float, scale: float) -> float:
    """Confidence in "A beats B" from the margin in units of the seed spread.

    The spread is floored at 0.5% of the metric's scale: a deterministic model's zero spread
    says nothing about how the validation sample itself varies. 0.5 at no margin, ~0.8 at two
    spreads, 0.95 at most.
    """
    noise = max(spread, 0.005 * abs(scale), 1e-12)
    z = max(0.0, margin) / noise
    return round(min(0.95, 0.5 + 0.45 * (1 - math.exp(-z / 2))), 3)

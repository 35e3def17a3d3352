"""Train code for the built-in researcher: one readable, standalone module per experiment.

A configuration (`Config`) names a model family, its hyper-parameters and, for regression, a
target transform; `train_code_render` turns it into the Python source of a module that defines
`train(X_train, y_train, X_test, *, artifacts_dir)` for one task type. The module needs only
numpy, pandas and scikit-learn, so a person can copy it out of the experiment page and run it.
It reads its seed from DOJO_SEED, so re-running the same code with another seed measures the
seed spread without changing a line.
"""

from __future__ import annotations

import json
import textwrap
from dataclasses import dataclass, field
from typing import Any

FAMILIES = (
    "constant",
    "linear",
    "elastic_net",
    "linear_interactions",
    "random_forest",
    "extra_trees",
    "hist_gradient_boosting",
    "knn",
    "svm",
    "ensemble",
)
TARGET_TRANSFORMS = ("none", "log1p", "yeo_johnson")

# What a person reads on the leaderboard: family → (regression label, classification label).
FAMILY_LABELS: dict[str, tuple[str, str]] = {
    "constant": ("Constant (training mean)", "Constant (class priors)"),
    "linear": ("Ridge", "LogisticRegression"),
    "elastic_net": ("ElasticNet", "ElasticNet"),
    "linear_interactions": ("Ridge with interactions", "LogisticRegression with interactions"),
    "random_forest": ("RandomForest", "RandomForest"),
    "extra_trees": ("ExtraTrees", "ExtraTrees"),
    "hist_gradient_boosting": ("HistGradientBoosting", "HistGradientBoosting"),
    "knn": ("k-NN", "k-NN"),
    "svm": ("SVR", "SVC"),
    "ensemble": ("Ensemble", "Ensemble"),
}


@dataclass(frozen=True)
class Config:
    """One point of the search space: what an experiment trains."""

    family: str
    params: dict[str, Any] = field(default_factory=dict)
    target_transform: str = "none"
    members: tuple[Config, ...] = ()  # ensemble members, blended with out-of-fold weights

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"unknown model family {self.family!r}")
        if self.target_transform not in TARGET_TRANSFORMS:
            raise ValueError(f"unknown target transform {self.target_transform!r}")
        if (self.family == "ensemble") != bool(self.members):
            raise ValueError("an ensemble needs members, and only an ensemble has them")

    def as_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"family": self.family, "params": dict(self.params)}
        if self.target_transform != "none":
            data["target_transform"] = self.target_transform
        if self.members:
            data["members"] = [m.as_dict() for m in self.members]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Config:
        return cls(
            family=data["family"],
            params=dict(data.get("params") or {}),
            target_transform=data.get("target_transform", "none"),
            members=tuple(cls.from_dict(m) for m in data.get("members") or ()),
        )

    def key(self) -> str:
        """A stable identity: two configs with the same key train the same model."""
        return json.dumps(self.as_dict(), sort_keys=True)


def family_label(family: str, task_type: str) -> str:
    regression, classification = FAMILY_LABELS[family]
    return regression if task_type == "regression" else classification


def config_describe(config: Config, task_type: str) -> str:
    """Return a one-line description, e.g. 'HistGradientBoosting (learning_rate=0.05)'."""
    if config.members:
        return "Ensemble of " + " + ".join(config_describe(m, task_type) for m in config.members)
    text = family_label(config.family, task_type)
    if config.params:
        text += " (" + ", ".join(f"{k}={_fmt(v)}" for k, v in sorted(config.params.items())) + ")"
    if config.target_transform != "none":
        text += f" on a {config.target_transform} target"
    return text


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


# --- Rendering -------------------------------------------------------------------------------
# The generated module is assembled from fixed blocks so every experiment reads the same way:
# header, imports, column handling, feature builders it needs, model builders, train().

_HEADER = '''\
"""{title}

{hypothesis}

Written by Dojo's built-in researcher. Standalone: it needs numpy, pandas and scikit-learn
only, and defines train(X_train, y_train, X_test, *, artifacts_dir) for a {task_type} task.
"""

'''

_PREAMBLE = '''\
TASK_TYPE = "{task_type}"
METRIC = "{metric}"  # the task's primary metric, also scored on folds of the training data
GREATER_IS_BETTER = {greater}
# Every class of the task (training and test labels), when known: the probability columns follow
# this order even if a class is missing from the training rows.
CLASSES = {classes}
# The harness passes each experiment's seed; run elsewhere, the module falls back to 0.
SEED = int(os.environ.get("DOJO_SEED", "0"))
# Threads: the harness's share (OMP_NUM_THREADS), at most {threads} because the researcher runs
# experiments side by side; more threads than cores makes OpenMP code crawl.
N_JOBS = max(1, min({threads}, int(os.environ.get("OMP_NUM_THREADS", "{threads}"))))
'''

_PREPARE = '''

def prepare_frames(X_train, X_test):
    """Return (train, test, numeric, categorical) with one consistent column typing.

    Numbers (and booleans) become floats with NaN for missing values; everything else becomes
    string categories with NaN kept as missing, so encoders see the same types in both frames.
    """
    train = pd.DataFrame(X_train).reset_index(drop=True)
    test = pd.DataFrame(X_test).reset_index(drop=True)
    train.columns = [str(c) for c in train.columns]
    test.columns = [str(c) for c in test.columns]
    numeric, categorical = [], []
    for col in train.columns:
        values = train[col]
        if isinstance(values.dtype, pd.CategoricalDtype):
            categorical.append(col)
        elif pd.api.types.is_bool_dtype(values) or pd.api.types.is_numeric_dtype(values):
            numeric.append(col)
        elif pd.to_numeric(values, errors="coerce").notna().sum() == values.notna().sum():
            numeric.append(col)  # numbers stored as objects, e.g. from a numpy object array
        else:
            categorical.append(col)
    frames = []
    for frame in (train, test):
        columns = {}
        for col in numeric:
            values = frame[col].astype(object).where(frame[col].notna(), np.nan)
            columns[col] = pd.to_numeric(values, errors="coerce").astype(float)
        for col in categorical:
            values = frame[col].astype(object)
            missing = values.isna()
            columns[col] = values.map(str).where(~missing, np.nan).astype(object)
        frames.append(pd.DataFrame(columns, index=frame.index)[numeric + categorical])
    return frames[0], frames[1], numeric, categorical
'''

_SCALED_FEATURES = '''

def scaled_features(numeric, categorical, interactions=False):
    """Impute (median plus missing indicators), one-hot the categoricals, scale everything."""
    steps = [
        ("impute", SimpleImputer(strategy="median", add_indicator=True)),
        ("scale", StandardScaler()),
    ]
    if interactions:
        steps += [
            ("interact", PolynomialFeatures(degree=2, include_bias=False)),
            ("rescale", StandardScaler()),
        ]
    onehot = Pipeline([
        ("impute", SimpleImputer(strategy="constant", fill_value="(missing)")),
        ("encode", OneHotEncoder(
            handle_unknown="infrequent_if_exist", min_frequency=5, max_categories=30,
            sparse_output=False,
        )),
        ("scale", StandardScaler()),
    ])
    return ColumnTransformer([("num", Pipeline(steps), numeric), ("cat", onehot, categorical)])
'''

_TREE_FEATURES = '''

def tree_features(numeric, categorical):
    """Median-impute numbers (with missing indicators) and number the categories."""
    codes = OrdinalEncoder(
        handle_unknown="use_encoded_value", unknown_value=-1, encoded_missing_value=-1
    )
    return ColumnTransformer([
        ("num", SimpleImputer(strategy="median", add_indicator=True), numeric),
        ("cat", codes, categorical),
    ])
'''

_HGB_FEATURES = '''

def boosting_features(numeric, categorical):
    """Categories first, numbered for native categorical splits; numbers pass with their NaNs."""
    codes = OrdinalEncoder(
        handle_unknown="use_encoded_value", unknown_value=np.nan, encoded_missing_value=np.nan,
        max_categories=250,  # HistGradientBoosting allows at most max_bins (255) categories
    )
    return ColumnTransformer([("cat", codes, categorical), ("num", "passthrough", numeric)])
'''

_FIT_REGRESSION = '''

def fit_predict(model, X_train, y_train, X_test, classes=None):
    model.fit(X_train, np.asarray(y_train, dtype=float))
    return np.asarray(model.predict(X_test), dtype=float).ravel()
'''

_FIT_BINARY = '''

def fit_predict(model, X_train, y_train, X_test, classes=None):
    """Return the probability of the positive class (the larger of the two sorted labels)."""
    y = np.asarray(y_train)
    classes = task_classes(y) if classes is None else classes
    if len(np.unique(y)) < 2:
        return np.full(len(X_test), float(y[0] == classes[-1]))  # one class only in these rows
    model.fit(X_train, y)
    proba = model.predict_proba(X_test)
    column = list(model.classes_).index(classes[-1])
    return np.asarray(proba[:, column], dtype=float)
'''

_FIT_MULTICLASS = '''

def fit_predict(model, X_train, y_train, X_test, classes=None):
    """Return class probabilities with one column per class in sorted order.

    A class the model never saw (absent from these training rows, e.g. in a fold) gets
    probability 0, so the columns always line up with `classes`.
    """
    y = np.asarray(y_train)
    classes = task_classes(y) if classes is None else classes
    model.fit(X_train, y)
    proba = np.asarray(model.predict_proba(X_test), dtype=float)
    out = np.zeros((len(X_test), len(classes)))
    position = {label: i for i, label in enumerate(classes)}
    for j, label in enumerate(model.classes_):
        out[:, position[label]] = proba[:, j]
    return out / np.clip(out.sum(axis=1, keepdims=True), 1e-12, None)
'''

# Cross-validation on the training rows. The validation split an agent sees can be small (tens
# of rows), so the researcher ranks models on these out-of-fold scores too, printed on stdout.
_CROSS_VALIDATION = '''

def task_classes(y):
    """The sorted classes the predictions are laid out by."""
    if CLASSES is not None:
        return np.array(sorted(set(CLASSES) | set(np.unique(y).tolist())))
    return np.unique(y)


def cv_folds(n_rows):
    """Folds for the out-of-fold score: more on small data, where a score of few rows is noisy;
    a single held-out fifth (1) once that alone is a few thousand rows' worth of evidence; none
    where the validation split is plenty."""
    return 5 if n_rows <= 1_000 else 3 if n_rows <= 5_000 else 1 if n_rows <= 20_000 else 0


def out_of_fold(build, numeric, categorical, X, y):
    """Predict training rows with models that did not see them: (rows, predictions), or None
    without folds. With k folds every row is scored; with one, the held-out fifth.

    The folds are fixed (random_state=0) whatever the seed, so every configuration is scored
    on the same rows and their differences are not split noise.
    """
    y = np.asarray(y)
    folds = cv_folds(len(y))
    if not folds:
        return None
    classes = task_classes(y)
    stratify = TASK_TYPE != "regression" and np.unique(y, return_counts=True)[1].min() >= max(2, folds)
    if folds == 1:
        splitter = (StratifiedShuffleSplit if stratify else ShuffleSplit)(1, test_size=0.2, random_state=0)
    else:
        splitter = (StratifiedKFold if stratify else KFold)(folds, shuffle=True, random_state=0)
    rows, preds = [], []
    for fit_rows, score_rows in splitter.split(X, y):
        model = build(numeric, categorical, y[fit_rows])
        preds.append(fit_predict(model, X.iloc[fit_rows], y[fit_rows], X.iloc[score_rows], classes))
        rows.append(score_rows)
    rows = np.concatenate(rows)
    order = np.argsort(rows)
    return rows[order], np.concatenate(preds)[order]


def report_cv(y, oof):
    if oof is not None:
        rows, pred = oof
        print(f"DOJO_CV {METRIC}={cv_score(np.asarray(y)[rows], pred):.10g} rows={len(rows)}")

'''

_ENSEMBLE_WEIGHTS = '''

def ensemble_weights(y, oofs, rounds=20):
    """Greedy forward selection with replacement on the out-of-fold predictions (Caruana et
    al., 2004): add the member that most improves the blend, `rounds` times. Without folds,
    equal weights."""
    if any(oof is None for oof in oofs):
        return np.full(len(oofs), 1 / len(oofs))
    y = np.asarray(y)[oofs[0][0]]  # every member is scored on the same rows
    oofs = [pred for _, pred in oofs]
    sign = -1.0 if GREATER_IS_BETTER else 1.0
    counts = np.zeros(len(oofs))
    blend = np.zeros_like(oofs[0])
    for step in range(rounds):
        losses = [sign * cv_score(y, (blend * step + oof) / (step + 1)) for oof in oofs]
        best = int(np.argmin(losses))
        counts[best] += 1
        blend = (blend * step + oofs[best]) / (step + 1)
    return counts / counts.sum()
'''

_TRAIN_SINGLE = '''

def train(X_train, y_train, X_test, *, artifacts_dir):
    with threadpool_limits(N_JOBS):
        X_train, X_test, numeric, categorical = prepare_frames(X_train, X_test)
        y = np.asarray(y_train)
        report_cv(y, out_of_fold(build_model, numeric, categorical, X_train, y))
        model = build_model(numeric, categorical, y)
        return fit_predict(model, X_train, y, X_test)
'''

_TRAIN_ENSEMBLE = '''

def train(X_train, y_train, X_test, *, artifacts_dir):
    with threadpool_limits(N_JOBS):
        return blend(X_train, y_train, X_test)


def blend(X_train, y_train, X_test):
    X_train, X_test, numeric, categorical = prepare_frames(X_train, X_test)
    y = np.asarray(y_train)
    oofs = [out_of_fold(build, numeric, categorical, X_train, y) for build in MEMBERS]
    weights = ensemble_weights(y, oofs)
    print("DOJO_WEIGHTS " + " ".join(f"{w:.3f}" for w in weights))
    if all(oof is not None for oof in oofs):
        rows = oofs[0][0]
        report_cv(y, (rows, np.tensordot(weights, np.stack([pred for _, pred in oofs]), axes=1)))
    prediction = 0.0
    for build, weight in zip(MEMBERS, weights):
        if weight > 0:  # a member the selection never picked is not trained again
            prediction = prediction + weight * fit_predict(build(numeric, categorical, y), X_train, y, X_test)
    return prediction
'''

# The primary metric, as the frozen evaluator names it, computed on out-of-fold predictions.
_CV_SCORES: dict[tuple[str, str], str] = {
    ("regression", "rmse"): "float(np.sqrt(mean_squared_error(y, pred)))",
    ("regression", "mae"): "mean_absolute_error(y, pred)",
    ("regression", "r2"): "r2_score(y, pred)",
    ("binary", "roc_auc"): "roc_auc_score(y == task_classes(y)[-1], pred)",
    ("binary", "log_loss"): (
        "log_loss(y == task_classes(y)[-1], np.clip(pred, 1e-15, 1 - 1e-15), labels=[False, True])"
    ),
    ("binary", "accuracy"): "accuracy_score(y == task_classes(y)[-1], pred >= 0.5)",
    ("binary", "f1"): "f1_score(y == task_classes(y)[-1], pred >= 0.5)",
    ("multiclass", "log_loss"): "log_loss(y, np.clip(pred, 1e-15, 1), labels=task_classes(y))",
    ("multiclass", "accuracy"): "accuracy_score(y, task_classes(y)[pred.argmax(axis=1)])",
    ("multiclass", "macro_f1"): 'f1_score(y, task_classes(y)[pred.argmax(axis=1)], average="macro")',
}
_METRIC_IMPORTS = (
    "mean_squared_error", "mean_absolute_error", "r2_score", "roc_auc_score", "log_loss",
    "accuracy_score", "f1_score",
)
GREATER_IS_BETTER = {"r2", "roc_auc", "accuracy", "f1", "macro_f1"}


def train_code_render(
    *, config: Config, task_type: str, metric: str, title: str = "", hypothesis: str = "",
    threads: int = 1, classes: list | None = None,
) -> str:
    """Return the source of a standalone train module for `config` on a `task_type` task.

    `metric` is the task's primary metric; the module prints its out-of-fold value on stdout
    ("DOJO_CV <metric>=<value> rows=<n>"). A metric it cannot compute raises ValueError.
    """
    if task_type not in ("regression", "binary", "multiclass"):
        raise ValueError(f"unknown task type {task_type!r}")
    if config.family == "elastic_net" and task_type != "regression":
        raise ValueError("elastic_net is a regression family")
    score = _CV_SCORES.get((task_type, metric))
    if score is None:
        raise ValueError(f"no cross-validation score for {metric!r} on a {task_type} task")
    members = config.members or (config,)
    imports = _imports(members, task_type, score)
    blocks = [
        _HEADER.format(
            title=title or config_describe(config, task_type),
            hypothesis=textwrap.fill(hypothesis or "A configuration of the built-in search.", 95),
            task_type=task_type,
        ),
        "\n".join(imports),
        "\n\n",
        _PREAMBLE.format(
            task_type=task_type, metric=metric, greater=metric in GREATER_IS_BETTER,
            threads=max(1, int(threads)),
            classes=repr(list(classes)) if classes and task_type != "regression" else "None",
        ),
        _PREPARE,
    ]
    families = {m.family for m in members}
    if families & {"linear", "elastic_net", "linear_interactions", "knn", "svm"}:
        blocks.append(_SCALED_FEATURES)
    if families & {"random_forest", "extra_trees"}:
        blocks.append(_TREE_FEATURES)
    if "hist_gradient_boosting" in families:
        blocks.append(_HGB_FEATURES)
    if config.members:
        names = []
        for i, member in enumerate(config.members, start=1):
            name = f"build_member_{i}"
            names.append(name)
            blocks.append(_builder(member, task_type, name=name))
        blocks.append("\n\n# Members are blended with weights chosen on their out-of-fold predictions.\n")
        blocks.append("MEMBERS = [" + ", ".join(names) + "]\n")
    else:
        blocks.append(_builder(config, task_type, name="build_model"))
    blocks.append(
        {"regression": _FIT_REGRESSION, "binary": _FIT_BINARY, "multiclass": _FIT_MULTICLASS}[task_type]
    )
    blocks.append(_CROSS_VALIDATION)
    blocks.append(f"\n\ndef cv_score(y, pred):\n    return {score}\n")
    if config.members:
        blocks.append(_ENSEMBLE_WEIGHTS)
    blocks.append(_TRAIN_ENSEMBLE if config.members else _TRAIN_SINGLE)
    return "".join(blocks)


def _imports(members: tuple[Config, ...], task_type: str, score: str) -> list[str]:
    regression = task_type == "regression"
    families = {m.family for m in members}
    sklearn: dict[str, set[str]] = {
        "sklearn.compose": set(),
        "sklearn.metrics": {name for name in _METRIC_IMPORTS if name + "(" in score},
        "sklearn.model_selection": {"KFold", "ShuffleSplit", "StratifiedKFold", "StratifiedShuffleSplit"},
    }
    if families & {"linear", "elastic_net", "linear_interactions", "knn", "svm"}:
        sklearn["sklearn.compose"].add("ColumnTransformer")
        sklearn.setdefault("sklearn.impute", set()).add("SimpleImputer")
        sklearn.setdefault("sklearn.pipeline", set()).add("Pipeline")
        sklearn.setdefault("sklearn.preprocessing", set()).update(
            {"OneHotEncoder", "PolynomialFeatures", "StandardScaler"}
        )
    if families & {"random_forest", "extra_trees"}:
        sklearn["sklearn.compose"].add("ColumnTransformer")
        sklearn.setdefault("sklearn.impute", set()).add("SimpleImputer")
        sklearn.setdefault("sklearn.preprocessing", set()).add("OrdinalEncoder")
    if "hist_gradient_boosting" in families:
        sklearn["sklearn.compose"].add("ColumnTransformer")
        sklearn.setdefault("sklearn.preprocessing", set()).add("OrdinalEncoder")
    if families - {"constant"}:
        sklearn.setdefault("sklearn.pipeline", set()).add("make_pipeline")
    kind = "Regressor" if regression else "Classifier"
    for family in families:
        if family == "constant":
            sklearn.setdefault("sklearn.dummy", set()).add(f"Dummy{kind}")
        elif family in ("linear", "linear_interactions"):
            sklearn.setdefault("sklearn.linear_model", set()).add(
                "Ridge" if regression else "LogisticRegression"
            )
        elif family == "elastic_net":
            sklearn.setdefault("sklearn.linear_model", set()).add("ElasticNet")
        elif family == "random_forest":
            sklearn.setdefault("sklearn.ensemble", set()).add(f"RandomForest{kind}")
        elif family == "extra_trees":
            sklearn.setdefault("sklearn.ensemble", set()).add(f"ExtraTrees{kind}")
        elif family == "hist_gradient_boosting":
            sklearn.setdefault("sklearn.ensemble", set()).add(f"HistGradientBoosting{kind}")
        elif family == "knn":
            sklearn.setdefault("sklearn.neighbors", set()).add(f"KNeighbors{kind}")
        elif family == "svm":
            if regression:
                sklearn.setdefault("sklearn.svm", set()).add("SVR")
            else:
                sklearn.setdefault("sklearn.svm", set()).add("SVC")
                sklearn.setdefault("sklearn.calibration", set()).add("CalibratedClassifierCV")
    if regression and (
        families & {"elastic_net", "svm"} or any(m.target_transform != "none" for m in members)
    ):
        sklearn.setdefault("sklearn.compose", set()).add("TransformedTargetRegressor")
        sklearn.setdefault("sklearn.preprocessing", set()).add("StandardScaler")
        if any(m.target_transform == "yeo_johnson" for m in members):
            sklearn["sklearn.preprocessing"].add("PowerTransformer")
    sklearn["threadpoolctl"] = {"threadpool_limits"}
    lines = ["import os", "", "import numpy as np", "import pandas as pd"]
    for module in sorted(sklearn):
        names = sorted(sklearn[module])
        if names:
            lines.append(f"from {module} import {', '.join(names)}")
    return lines


def _builder(config: Config, task_type: str, *, name: str) -> str:
    """Return a `def <name>(numeric, categorical, y_train)` that builds an unfitted model."""
    regression = task_type == "regression"
    kind = "Regressor" if regression else "Classifier"
    p = dict(config.params)
    family = config.family
    doc = config_describe(config, task_type)
    body: list[str] = []
    if family == "constant":
        strategy = '"mean"' if regression else '"prior"'
        body.append(f"model = Dummy{kind}(strategy={strategy})")
    elif family in ("linear", "linear_interactions"):
        interactions = family == "linear_interactions"
        features = f"scaled_features(numeric, categorical, interactions={interactions})"
        if regression:
            body.append(f"estimator = Ridge(alpha={p.get('alpha', 1.0)!r})")
        else:
            body.append(f"estimator = LogisticRegression(C={p.get('C', 1.0)!r}, max_iter=3000)")
        body.append(f"model = make_pipeline({features}, estimator)")
    elif family == "elastic_net":
        body.append(
            f"estimator = ElasticNet(alpha={p.get('alpha', 0.01)!r}, "
            f"l1_ratio={p.get('l1_ratio', 0.5)!r}, max_iter=20000)"
        )
        body.append("# Standardise the target so alpha means the same on any target scale.")
        body.append(
            "estimator = TransformedTargetRegressor(regressor=estimator, transformer=StandardScaler())"
        )
        body.append("model = make_pipeline(scaled_features(numeric, categorical), estimator)")
    elif family in ("random_forest", "extra_trees"):
        cls = ("RandomForest" if family == "random_forest" else "ExtraTrees") + kind
        body.append(
            f"estimator = {cls}(\n"
            f"    n_estimators={p.get('n_estimators', 300)!r}, "
            f"max_features={p.get('max_features', 1.0 if regression else 'sqrt')!r}, "
            f"min_samples_leaf={p.get('min_samples_leaf', 1)!r},\n"
            f"    random_state=SEED, n_jobs=N_JOBS,\n)"
        )
        body.append("model = make_pipeline(tree_features(numeric, categorical), estimator)")
    elif family == "hist_gradient_boosting":
        args = [
            f"learning_rate={p.get('learning_rate', 0.1)!r}",
            f"max_iter={p.get('max_iter', 100)!r}",
            f"max_leaf_nodes={p.get('max_leaf_nodes', 31)!r}",
            f"min_samples_leaf={p.get('min_samples_leaf', 20)!r}",
            f"l2_regularization={p.get('l2_regularization', 0.0)!r}",
            f"max_features={p.get('max_features', 1.0)!r}",
            # "auto": on above 10,000 rows, holding out 10% of them to pick the iteration count.
            f"early_stopping={p.get('early_stopping', 'auto')!r}",
        ]
        args += [
            "categorical_features=list(range(len(categorical))) or None",
            "random_state=SEED",
        ]
        body.append(
            f"estimator = HistGradientBoosting{kind}(\n    " + ",\n    ".join(args) + ",\n)"
        )
        body.append("model = make_pipeline(boosting_features(numeric, categorical), estimator)")
    elif family == "knn":
        body.append(
            f"estimator = KNeighbors{kind}(n_neighbors=min({p.get('n_neighbors', 10)!r}, "
            f"len(y_train)), weights={p.get('weights', 'distance')!r})"
        )
        body.append("model = make_pipeline(scaled_features(numeric, categorical), estimator)")
    elif family == "svm":
        if regression:
            body.append(
                f"estimator = SVR(C={p.get('C', 1.0)!r}, epsilon={p.get('epsilon', 0.1)!r}, "
                'gamma="scale")'
            )
            body.append("# SVR's epsilon and C assume a target of unit scale.")
            body.append(
                "estimator = TransformedTargetRegressor(regressor=estimator, "
                "transformer=StandardScaler())"
            )
        else:
            body.append("# Platt scaling over cross-validated decision values gives probabilities.")
            body.append("smallest_class = int(np.unique(np.asarray(y_train), return_counts=True)[1].min())")
            body.append(
                f"estimator = CalibratedClassifierCV(\n"
                f"    SVC(C={p.get('C', 1.0)!r}, gamma=\"scale\", random_state=SEED),\n"
                f"    cv=max(2, min(5, smallest_class)), ensemble=False,\n)"
            )
            body.append("if smallest_class < 2:  # a class with one row cannot be cross-validated")
            body.append(
                f"    estimator = SVC(C={p.get('C', 1.0)!r}, gamma=\"scale\", probability=True, "
                "random_state=SEED)"
            )
        body.append("model = make_pipeline(scaled_features(numeric, categorical), estimator)")
    else:
        raise ValueError(f"cannot render family {family!r} on its own")
    if regression and config.target_transform == "log1p":
        body.append("# The target is skewed and non-negative: fit on log1p(y), predict back with expm1.")
        body.append(
            "model = TransformedTargetRegressor(regressor=model, func=np.log1p, inverse_func=np.expm1)"
        )
    elif regression and config.target_transform == "yeo_johnson":
        body.append("# The target is skewed: fit on its Yeo-Johnson transform, predict back.")
        body.append(
            "model = TransformedTargetRegressor(regressor=model, transformer=PowerTransformer())"
        )
    body.append("return model")
    text = f'\n\ndef {name}(numeric, categorical, y_train):\n    """{doc}"""\n'
    text += textwrap.indent("\n".join(body), "    ") + "\n"
    return text

"""The task-type registry: what train() returns and what evaluate() must report, per task type.

Adding a task type is one entry in TASK_TYPES plus its tests.
"""

from dataclasses import dataclass

CONTRACT_VERSION = 1


# Per-experiment limits a task may override in task.config["limits"] (defaults in settings.py).
# Not part of the contract: they may change while the task is frozen.
LIMIT_KEYS: dict[str, type] = {
    "timeout_seconds": float, "memory_mb": int, "max_processes": int, "max_file_mb": int,
    "artifacts_max_file_mb": int, "artifacts_max_total_mb": int, "cpu_share": float,
}


@dataclass(frozen=True)
class TaskType:
    name: str
    label: str
    train_output: str  # plain-language shape of train()'s return value, shown to agents and users
    metrics: tuple[str, ...]  # exactly the keys evaluate() must return
    primary_metric: str
    direction: str  # "minimize" | "maximize"
    metric_directions: dict[str, str]  # direction of every metric, so any key can be primary
    is_classification: bool


TASK_TYPES: dict[str, TaskType] = {
    "regression": TaskType(
        name="regression",
        label="Regression",
        train_output="a 1-D array of floats, one prediction per row of X_test",
        metrics=("rmse", "mae", "r2"),
        primary_metric="rmse",
        direction="minimize",
        metric_directions={"rmse": "minimize", "mae": "minimize", "r2": "maximize"},
        is_classification=False,
    ),
    "binary": TaskType(
        name="binary",
        label="Binary classification",
        train_output="a 1-D array of positive-class probabilities in [0, 1], one per row of X_test",
        metrics=("roc_auc", "log_loss", "accuracy", "f1"),
        primary_metric="roc_auc",
        direction="maximize",
        metric_directions={
            "roc_auc": "maximize",
            "log_loss": "minimize",
            "accuracy": "maximize",
            "f1": "maximize",
        },
        is_classification=True,
    ),
    "multiclass": TaskType(
        name="multiclass",
        label="Multiclass classification",
        train_output=(
            "a 2-D array of class probabilities, one row per row of X_test, one column per class "
            "in sorted class order, each row summing to 1"
        ),
        metrics=("log_loss", "accuracy", "macro_f1"),
        primary_metric="log_loss",
        direction="minimize",
        metric_directions={"log_loss": "minimize", "accuracy": "maximize", "macro_f1": "maximize"},
        is_classification=True,
    ),
}


def task_type_get(name: str) -> TaskType:
    """Return the task type; raise KeyError with the valid names when unknown."""
    try:
        return TASK_TYPES[name]
    except KeyError:
        raise KeyError(
            f"unknown task type {name!r}; choose one of: {', '.join(TASK_TYPES)}"
        ) from None


# --- Predictions -----------------------------------------------------------------------------
# This file imports only the standard library at module level (numpy inside the functions), so the
# sandboxed evaluator and verifier scripts can load it by path without Django or the project.

PROBABILITY_TOLERANCE = 1e-4  # how far a multiclass row may sum from 1 (float error, not slack)


def prediction_check(
    task_type: str, y_pred: object, *, n_rows: int, n_classes: int | None = None
) -> tuple[object, str | None]:
    """Return (y_pred as a float64 numpy array, None) when y_pred fits the task type, otherwise
    (None, a one-line message saying what was expected and what was seen)."""
    import numpy as np

    spec = task_type_get(task_type)
    if y_pred is None:
        return None, f"train() returned None; expected {spec.train_output}"
    if isinstance(y_pred, (str, bytes, dict)):
        return None, f"train() returned a {type(y_pred).__name__}; expected {spec.train_output}"
    try:
        array = np.asarray(y_pred)
    except Exception as exc:  # ragged lists and the like
        return None, f"y_pred could not be read as an array ({exc}); expected {spec.train_output}"
    if array.dtype == object:
        try:
            array = array.astype(np.float64)
        except (TypeError, ValueError):
            return None, f"y_pred has non-numeric values (dtype object); expected {spec.train_output}"
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        return None, f"y_pred has dtype {array.dtype}; expected numbers ({spec.train_output})"

    if task_type == "multiclass":
        if array.ndim != 2:
            return None, (
                f"y_pred has shape {array.shape}; expected ({n_rows}, {n_classes or 'n_classes'}): "
                "one row of class probabilities per row of X_test"
            )
        if array.shape[0] != n_rows:
            return None, f"y_pred has {array.shape[0]} rows; expected {n_rows} (one per row of X_test)"
        if n_classes is not None and array.shape[1] != n_classes:
            return None, (
                f"y_pred has {array.shape[1]} columns; expected {n_classes} "
                "(one per class, in sorted class order)"
            )
    else:
        if array.ndim != 1:
            hint = " (for binary, pass predict_proba(X)[:, 1])" if task_type == "binary" else ""
            return None, f"y_pred has shape {array.shape}; expected ({n_rows},): {spec.train_output}{hint}"
        if array.shape[0] != n_rows:
            return None, f"y_pred has {array.shape[0]} values; expected {n_rows} (one per row of X_test)"

    array = array.astype(np.float64, copy=False)
    finite = np.isfinite(array)
    if not finite.all():
        bad = int((~finite).sum())
        first = int(np.argwhere(~finite)[0][0])
        return None, f"y_pred has {bad} non-finite value(s) (NaN or inf), the first at row {first}"
    if spec.is_classification and array.size:
        low, high = float(array.min()), float(array.max())
        if low < 0.0 or high > 1.0:
            return None, f"y_pred must be probabilities in [0, 1]; got values from {low:g} to {high:g}"
    if task_type == "multiclass" and array.shape[0]:
        sums = array.sum(axis=1)
        off = np.abs(sums - 1.0) > PROBABILITY_TOLERANCE
        if off.any():
            row = int(np.argwhere(off)[0][0])
            return None, (
                f"each y_pred row must sum to 1; {int(off.sum())} row(s) do not, "
                f"the first is row {row} summing to {float(sums[row]):.6g}"
            )
    return array, None


def contract_text(
    task_type: str, *, primary_metric: str | None = None, direction: str | None = None
) -> str:
    """The contract as shown to agents and users: what train() gets and returns, how it is scored."""
    spec = task_type_get(task_type)
    primary = primary_metric or spec.primary_metric
    way = direction or spec.metric_directions.get(primary, spec.direction)
    classes = (
        "Class labels may be strings; classes are ordered by sorting the labels "
        "(the positive class of a binary task is the larger label).\n"
        if spec.is_classification
        else ""
    )
    return (
        f"Task type: {spec.label} (contract version {CONTRACT_VERSION}).\n"
        "You write only:\n"
        "    def train(X_train, y_train, X_test, *, artifacts_dir) -> y_pred\n"
        f"y_pred: {spec.train_output}.\n"
        f"{classes}"
        "X_train / X_test are exactly what the frozen load_data returned (a pandas DataFrame keeps "
        "its columns and dtypes, categoricals included; numpy arrays stay arrays).\n"
        f"The frozen evaluate reports exactly: {', '.join(spec.metrics)}.\n"
        f"Primary metric: {primary} ({way}).\n"
        "Metrics come from a part of the test rows; another part is a private holdout you never see.\n"
        "load_data, evaluate and the test labels are outside your reach; files you write to "
        "artifacts_dir are kept."
    )


def tools_fingerprint(*, load_data: str, evaluate: str, contract_version: int = CONTRACT_VERSION,
                      files: dict[str, str] | None = None) -> str:
    """sha256 over both tools' code, the contract version and the workspace source files the tools
    import (`files`: relative path → sha256): what freeze stores on the task and every experiment
    checks before it runs. Without files it is the fingerprint tasks frozen before files had."""
    import hashlib

    digest = hashlib.sha256(f"dojo-contract:{contract_version}\n".encode())
    for name, code in (("load_data", load_data), ("evaluate", evaluate)):
        digest.update(f"{name}:{hashlib.sha256(code.encode()).hexdigest()}\n".encode())
    for path, sha in sorted((files or {}).items()):
        digest.update(f"file:{path}:{sha}\n".encode())
    return digest.hexdigest()

"""The task-type registry: what train() returns and what evaluate() must report, per task type.

Adding a task type is one entry in TASK_TYPES plus its tests.
"""

from dataclasses import dataclass

CONTRACT_VERSION = 1


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

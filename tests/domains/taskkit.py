"""Shared helpers of the task tests: small numpy-only tools (fast to verify) and a domain maker."""

from pathlib import Path

from domains.models import Domain, Task
from domains.services import domain_create

# numpy-only tools: verification starts no scikit-learn, so each check takes well under a second.
LOAD_REGRESSION = '''
import numpy as np


def load_data():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 3))
    y = 2 * X[:, 0] + rng.normal(size=60) * 0.1
    return X[:48], X[48:], y[:48], y[48:]
'''

EVALUATE_REGRESSION = '''
import numpy as np


def evaluate(y_pred, *, X_train, X_test, y_train, y_test, artifacts_dir):
    y = np.asarray(y_test, dtype=float)
    err = np.asarray(y_pred, dtype=float) - y
    ss = float(((y - y.mean()) ** 2).sum()) or 1.0
    return {
        "rmse": float(np.sqrt((err ** 2).mean())),
        "mae": float(np.abs(err).mean()),
        "r2": float(1 - (err ** 2).sum() / ss),
    }
'''


def make_domain(workspace: Path, *, name: str = "lab", task_type: str = "regression", setup: str | None = None,
                **kwargs) -> Domain:
    domain = domain_create(name=name, task_type=task_type, workspace=workspace, **kwargs)
    if setup is not None:
        Path(domain.setup_path).write_text(setup)
    return domain


def task_of(domain: Domain) -> Task:
    return Task.objects.get(domain=domain)

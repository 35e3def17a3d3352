"""Diagnostics from the template evaluate (issue 11 item 6): charts on the validation rows only,
shown inline on the experiment page; artifacts_dir is a pathlib.Path in verification too."""

import pytest

from domains.services import task_tools_import, task_verify
from experiments.services import experiment_run
from tests.domains.taskkit import LOAD_REGRESSION
from tests.domains.taskkit import make_domain as make_unfrozen_domain
from tests.experiments.conftest import LINEAR

pytestmark = pytest.mark.django_db

LOGISTIC = """
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

def train(X_train, y_train, X_test, *, artifacts_dir):
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(X_train, y_train)
    proba = model.predict_proba(X_test)
    return proba[:, 1] if proba.shape[1] == 2 else proba
"""


def _evaluate_files(exp) -> dict[str, str]:
    return {a.path: a.content_type for a in exp.artifacts.filter(source="evaluate")}


def test_regression_gets_residual_and_predicted_vs_actual_charts_for_validation_only(make_domain, client_logged_in):
    domain = make_domain("load_diabetes", name="diag-regression")
    exp = experiment_run(domain=domain, train_code=LINEAR)
    assert exp.state == "completed", exp.error
    files = _evaluate_files(exp)
    assert set(files) == {"evaluate/validation/residuals_vs_predicted.svg", "evaluate/validation/predicted_vs_actual.svg"}
    assert all(kind == "image/svg+xml" for kind in files.values())
    chart = exp.artifacts.get(path="evaluate/validation/predicted_vs_actual.svg")
    body = client_logged_in.get(chart.get_absolute_url() + "?inline=1")
    svg = b"".join(body.streaming_content).decode()
    # One point per validation row (diabetes: 89 test rows, about half of them validation).
    assert svg.startswith("<svg") and 30 < svg.count("<circle") < 60
    page = client_logged_in.get(exp.get_absolute_url()).content.decode()
    assert f'src="{chart.get_absolute_url()}?inline=1"' in page


@pytest.mark.parametrize(("loader", "expected"), [
    ("load_breast_cancer", {"confusion_matrix.svg", "roc_curve.svg", "calibration.svg"}),
    ("load_wine", {"confusion_matrix.svg", "calibration.svg"}),
])
def test_classification_gets_confusion_roc_and_calibration(make_domain, loader, expected):
    domain = make_domain(loader, name=f"diag-{loader}")
    exp = experiment_run(domain=domain, train_code=LOGISTIC)
    assert exp.state == "completed", exp.error
    assert set(_evaluate_files(exp)) == {f"evaluate/validation/{name}" for name in expected}
    assert not exp.artifacts.filter(path__startswith="evaluate/holdout").exists()


EVALUATE_WITH_PATH = '''
import numpy as np

def evaluate(y_pred, *, X_train, X_test, y_train, y_test, artifacts_dir):
    (artifacts_dir / "residuals.txt").write_text("written through the / operator")
    err = np.asarray(y_test, dtype=float) - np.asarray(y_pred, dtype=float)
    return {"rmse": float(np.sqrt((err ** 2).mean())), "mae": float(np.abs(err).mean()), "r2": 0.0}
'''


def test_verification_hands_evaluate_a_path(workspace):
    domain = make_unfrozen_domain(workspace, name="path-check")
    task_tools_import(task=domain.task, load_data=LOAD_REGRESSION, evaluate=EVALUATE_WITH_PATH)
    run = task_verify(task=domain.task)
    assert run.evaluate.ok, run.evaluate.errors

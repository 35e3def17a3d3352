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
    # One file per experiment (each artifact costs the harness a move and a row).
    assert _evaluate_files(exp) == {"evaluate/validation/diagnostics.svg": "image/svg+xml"}
    chart = exp.artifacts.get(path="evaluate/validation/diagnostics.svg")
    body = client_logged_in.get(chart.get_absolute_url() + "?inline=1")
    svg = b"".join(body.streaming_content).decode()
    assert svg.startswith("<svg")
    assert "Residuals vs predicted (validation rows)" in svg and "Predicted vs actual (validation rows)" in svg
    # One point per validation row in each panel (diabetes: 89 test rows, about half validation).
    assert 60 < svg.count("<circle") < 120
    page = client_logged_in.get(exp.get_absolute_url()).content.decode()
    assert f'src="{chart.get_absolute_url()}?inline=1"' in page


@pytest.mark.parametrize(("loader", "expected", "absent"), [
    ("load_breast_cancer", ["Confusion matrix", "ROC curve", "Calibration (validation rows)"], []),
    ("load_wine", ["Confusion matrix", "Calibration of the top class"], ["ROC curve"]),
])
def test_classification_gets_confusion_roc_and_calibration(make_domain, loader, expected, absent):
    from experiments.services import artifact_open

    domain = make_domain(loader, name=f"diag-{loader}")
    exp = experiment_run(domain=domain, train_code=LOGISTIC)
    assert exp.state == "completed", exp.error
    assert set(_evaluate_files(exp)) == {"evaluate/validation/diagnostics.svg"}
    assert not exp.artifacts.filter(path__startswith="evaluate/holdout").exists()
    with artifact_open(artifact=exp.artifacts.get(source="evaluate")) as stored:
        svg = stored.read().decode()
    assert all(title in svg for title in expected) and not any(title in svg for title in absent)


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

import pytest

from experiments.services import experiment_run
from tests.experiments.conftest import LINEAR

PLOT = """
def train(X_train, y_train, X_test, *, artifacts_dir):
    (artifacts_dir / "note.txt").write_text("hello")
    from sklearn.linear_model import LinearRegression
    return LinearRegression().fit(X_train, y_train).predict(X_test)
"""


@pytest.fixture
def mlflow_store(tmp_path, settings):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    settings.DOJO_TRACKING = "mlflow"
    settings.MLFLOW_TRACKING_URI = uri
    return uri


def test_it_logs_one_mlflow_run_per_experiment(diabetes, mlflow_store, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)  # the sqlite store's default artifact root is relative to cwd
    exp = experiment_run(domain=diabetes, train_code=PLOT, hypothesis="tracked", variables={"alpha": 1})
    assert exp.state == "completed", exp.error
    assert not [w for w in exp.warnings if w.startswith("tracking")]
    client = MlflowClient(tracking_uri=mlflow_store)
    mlflow_experiment = client.get_experiment_by_name("dojo/diabetes")
    runs = client.search_runs([mlflow_experiment.experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.data.metrics["validation.rmse"] == pytest.approx(exp.metrics["rmse"])
    assert run.data.metrics["holdout.rmse"] == pytest.approx(exp.holdout_metrics["rmse"])
    assert run.data.params["var.alpha"] == "1"
    assert run.data.tags["dojo.experiment_id"] == str(exp.pk)
    assert run.data.tags["dojo.task_fingerprint"] == exp.task_fingerprint
    paths = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"train.py", "artifacts"} <= paths
    experiment_run(domain=diabetes, train_code=LINEAR)
    assert len(client.search_runs([mlflow_experiment.experiment_id])) == 2


def test_it_records_a_tracking_failure_as_a_warning(diabetes, settings, tmp_path):
    settings.DOJO_TRACKING = "mlflow"
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    settings.MLFLOW_TRACKING_URI = f"sqlite:///{blocker}/store.db"
    exp = experiment_run(domain=diabetes, train_code=LINEAR)
    assert exp.state == "completed"
    assert any(w.startswith("tracking: MLflow failed") for w in exp.warnings)
    exp.refresh_from_db()
    assert exp.state == "completed" and exp.metrics


def test_it_keeps_the_store_and_artifacts_under_dojo_home_by_default(diabetes, settings, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    settings.DOJO_TRACKING = "mlflow"
    settings.MLFLOW_TRACKING_URI = ""
    settings.DOJO_MLFLOW_EXPERIMENT_PREFIX = "lab/"
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    exp = experiment_run(domain=diabetes, train_code=PLOT)
    assert exp.state == "completed" and not [w for w in exp.warnings if w.startswith("tracking")], exp.warnings
    home = settings.DOJO_HOME / "mlflow"
    client = MlflowClient(tracking_uri=f"sqlite:///{home / 'mlflow.db'}")
    found = client.get_experiment_by_name("lab/diabetes")
    assert found.artifact_location == (home / "artifacts" / "diabetes").as_uri()
    run = client.search_runs([found.experiment_id])[0]
    assert (home / "artifacts" / "diabetes" / run.info.run_id / "artifacts" / "train.py").is_file()
    assert not any(cwd.iterdir())  # no ./mlruns in the current directory

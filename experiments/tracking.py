"""MLflow tracking: one MLflow experiment per domain, one MLflow run per Dojo experiment.

The DB stays the system of record; this only mirrors a finished experiment. Imported lazily
(mlflow is slow to import) and only when DOJO_TRACKING=mlflow.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from django.conf import settings

from experiments.models import Experiment


def mlflow_locations() -> tuple[str, Path]:
    """(tracking URI, artifact root): MLFLOW_TRACKING_URI (setting or environment) or a SQLite
    store at DOJO_HOME/mlflow/mlflow.db; artifacts under DOJO_MLFLOW_ARTIFACTS or
    DOJO_HOME/mlflow/artifacts — never mlflow's default ./mlruns in the current directory."""
    home = Path(settings.DOJO_HOME) / "mlflow"
    uri = getattr(settings, "MLFLOW_TRACKING_URI", "") or os.environ.get("MLFLOW_TRACKING_URI", "")
    if not uri:
        home.mkdir(parents=True, exist_ok=True)
        uri = f"sqlite:///{home / 'mlflow.db'}"
    root = Path(getattr(settings, "DOJO_MLFLOW_ARTIFACTS", "") or home / "artifacts")
    return uri, root


def mlflow_experiment_name(domain_name: str) -> str:
    return f"{getattr(settings, 'DOJO_MLFLOW_EXPERIMENT_PREFIX', 'dojo/')}{domain_name}"


def mlflow_log_experiment(exp: Experiment, *, uri: str, artifacts_dir: Path, artifact_root: Path | None = None) -> str:
    """Log the experiment as one MLflow run; return the MLflow run id. The MLflow experiment is
    named by Dojo (mlflow_experiment_name) and, when Dojo creates it, keeps its artifacts in
    `artifact_root`/<domain>."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    name = mlflow_experiment_name(exp.domain.name)
    found = client.get_experiment_by_name(name)
    if found:
        mlflow_experiment_id = found.experiment_id
    else:
        location = None
        if artifact_root is not None:
            folder = Path(artifact_root).absolute() / re.sub(r"[^A-Za-z0-9_.-]", "_", exp.domain.name)
            folder.mkdir(parents=True, exist_ok=True)
            location = folder.as_uri()
        mlflow_experiment_id = client.create_experiment(name, artifact_location=location)
    tags = {
        "dojo.domain": exp.domain.name,
        "dojo.domain_id": str(exp.domain_id),
        "dojo.experiment_id": str(exp.pk),
        "dojo.run_id": str(exp.run_id or ""),
        "dojo.parent_id": str(exp.parent_id or ""),
        "dojo.task_fingerprint": exp.task_fingerprint,
        "dojo.data_fingerprint": exp.data_fingerprint,
        "dojo.code_sha256": exp.code_sha256,
        "dojo.isolation": exp.isolation,
        "mlflow.note.content": exp.hypothesis,
    }
    run = client.create_run(mlflow_experiment_id, run_name=f"experiment-{exp.pk}", tags=tags)
    run_id = run.info.run_id
    params = {f"var.{k}": str(v)[:500] for k, v in (exp.variables or {}).items()}
    params["seed"] = str(exp.seed)
    for key, value in params.items():
        client.log_param(run_id, key, value)
    # Validation and holdout are told apart by prefix.
    for key, value in (exp.metrics or {}).items():
        client.log_metric(run_id, f"validation.{key}", float(value))
    for key, value in (exp.holdout_metrics or {}).items():
        client.log_metric(run_id, f"holdout.{key}", float(value))
    for key, value in (("train_seconds", exp.train_seconds), ("total_seconds", exp.total_seconds),
                       ("peak_memory_mb", exp.peak_memory_mb)):
        if value is not None:
            client.log_metric(run_id, key, float(value))
    client.log_text(run_id, exp.train_code, "train.py")
    if artifacts_dir.is_dir() and any(artifacts_dir.rglob("*")):
        client.log_artifacts(run_id, str(artifacts_dir), "artifacts")
    client.set_terminated(run_id, status="FINISHED")
    return run_id

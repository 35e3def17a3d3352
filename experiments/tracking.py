"""MLflow tracking: one MLflow experiment per domain, one MLflow run per Dojo experiment.

The DB stays the system of record; this only mirrors a finished experiment. Imported lazily
(mlflow is slow to import) and only when DOJO_TRACKING=mlflow.
"""

from __future__ import annotations

from pathlib import Path

from experiments.models import Experiment


def mlflow_log_experiment(exp: Experiment, *, uri: str, artifacts_dir: Path) -> str:
    """Log the experiment as one MLflow run; return the MLflow run id."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    name = f"dojo/{exp.domain.name}"
    found = client.get_experiment_by_name(name)
    mlflow_experiment_id = found.experiment_id if found else client.create_experiment(name)
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

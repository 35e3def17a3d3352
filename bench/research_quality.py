"""Research quality of the built-in researcher, against two references on the same splits.

    .venv/bin/python bench/research_quality.py [--datasets diabetes,wine] [--budget 30] [--no-references]

For each dataset it creates a domain through the real pipeline (SETUP.md → template tools →
verification → freeze) in a throw-away DOJO_HOME, runs the built-in researcher with a budget of
30 experiments, and runs two reference experiments through the same harness and frozen evaluator:
scikit-learn's HistGradientBoosting with default settings, and LightGBM tuned by Optuna for 60 s
inside train() (it tunes on a split of the training rows, never on the validation rows). It
prints, per dataset: the validation and holdout primary metric of the researcher's pick, the
experiments and seconds it took to reach it, and the references' figures.

Datasets: scikit-learn's diabetes, breast_cancer, wine, digits, and two synthetic tables with
categorical columns, missing values, a skewed target and class imbalance (written as CSV files,
loaded by the CSV template). The product is judged on data it has not seen: nothing here tunes
the researcher to these datasets.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SKLEARN = {
    "diabetes": ("load_diabetes", "regression"),
    "breast_cancer": ("load_breast_cancer", "binary"),
    "wine": ("load_wine", "multiclass"),
    "digits": ("load_digits", "multiclass"),
}
SYNTHETIC = {"synth_regression": "regression", "synth_binary": "binary"}
TUNED_SECONDS = 60

HGB_DEFAULT = '''"""Reference: scikit-learn's HistGradientBoosting with default settings."""
import numpy as np
import pandas as pd
from sklearn.ensemble import HistGradientBoosting{kind}
from sklearn.preprocessing import OrdinalEncoder


def train(X_train, y_train, X_test, *, artifacts_dir):
    X_train, X_test = pd.DataFrame(X_train), pd.DataFrame(X_test)
    categorical = [c for c in X_train.columns if not pd.api.types.is_numeric_dtype(X_train[c])]
    if categorical:
        codes = OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=np.nan)
        X_train[categorical] = codes.fit_transform(X_train[categorical].astype(str))
        X_test[categorical] = codes.transform(X_test[categorical].astype(str))
    mask = [c in categorical for c in X_train.columns]
    model = HistGradientBoosting{kind}(categorical_features=mask if categorical else None, random_state=0)
    model.fit(X_train, y_train)
    {predict}
'''

LIGHTGBM_TUNED = '''"""Reference: LightGBM tuned by Optuna (TPE) for {seconds} s on a split of the training rows."""
import time

import lightgbm as lgb
import numpy as np
import optuna
import pandas as pd
from sklearn.model_selection import train_test_split

TASK = "{task_type}"
SECONDS = {seconds}


def frame(X, categories=None):
    X = pd.DataFrame(X).copy()
    X.columns = [str(c) for c in X.columns]
    for c in X.columns:
        if not pd.api.types.is_numeric_dtype(X[c]):
            X[c] = pd.Categorical(X[c].astype(str), categories=None if categories is None else categories[c])
    return X


def score(y, pred, classes):
    from sklearn.metrics import log_loss, mean_squared_error, roc_auc_score
    if TASK == "regression":
        return mean_squared_error(y, pred) ** 0.5
    if TASK == "binary":
        return -roc_auc_score(y == classes[-1], pred)
    return log_loss(y, np.clip(pred, 1e-15, 1), labels=classes)


def model_for(params, n_classes):
    common = dict(n_estimators=2000, verbose=-1, random_state=0, n_jobs=1, **params)
    if TASK == "regression":
        return lgb.LGBMRegressor(**common)
    return lgb.LGBMClassifier(**common)


def predict(model, X, classes):
    if TASK == "regression":
        return model.predict(X)
    proba = model.predict_proba(X)
    if TASK == "binary":
        return proba[:, list(model.classes_).index(classes[-1])]
    out = np.zeros((len(X), len(classes)))
    for j, label in enumerate(model.classes_):
        out[:, list(classes).index(label)] = proba[:, j]
    return out


def train(X_train, y_train, X_test, *, artifacts_dir):
    started = time.monotonic()
    X = frame(X_train)
    categories = {{c: X[c].cat.categories for c in X.columns if isinstance(X[c].dtype, pd.CategoricalDtype)}}
    X_test = frame(X_test, categories)
    y = np.asarray(y_train)
    classes = np.unique(y)
    stratify = y if TASK != "regression" and np.unique(y, return_counts=True)[1].min() >= 2 else None
    X_fit, X_val, y_fit, y_val = train_test_split(X, y, test_size=0.2, random_state=0, stratify=stratify)
    best = {{}}

    def objective(trial):
        params = {{
            "learning_rate": trial.suggest_float("learning_rate", 0.01, 0.3, log=True),
            "num_leaves": trial.suggest_int("num_leaves", 4, 128, log=True),
            "min_child_samples": trial.suggest_int("min_child_samples", 2, 100, log=True),
            "subsample": trial.suggest_float("subsample", 0.5, 1.0),
            "subsample_freq": 1,
            "colsample_bytree": trial.suggest_float("colsample_bytree", 0.3, 1.0),
            "reg_alpha": trial.suggest_float("reg_alpha", 1e-8, 10.0, log=True),
            "reg_lambda": trial.suggest_float("reg_lambda", 1e-8, 10.0, log=True),
        }}
        model = model_for(params, len(classes))
        model.fit(X_fit, y_fit, eval_set=[(X_val, y_val)], callbacks=[lgb.early_stopping(50, verbose=False)])
        value = score(y_val, predict(model, X_val, classes), classes)
        if not best or value < best["value"]:
            best.update(value=value, params=params, iterations=max(1, model.best_iteration_ or 100))
        return value

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0))
    study.optimize(objective, timeout=max(1.0, SECONDS - (time.monotonic() - started) - 5))
    print(f"trials={{len(study.trials)}} best_inner={{best['value']:.6g}}")
    final = {{**best["params"], "n_estimators": int(best["iterations"] * 1.1)}}
    common = dict(verbose=-1, random_state=0, n_jobs=1, **final)
    model = lgb.LGBMRegressor(**common) if TASK == "regression" else lgb.LGBMClassifier(**common)
    model.fit(X, y)
    return predict(model, X_test, classes)
'''


def synthetic_write(name: str, path: Path) -> str:
    """Write a synthetic table (categoricals, missing values, skew or imbalance); return its target."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(7 if name == "synth_regression" else 11)
    n = 1500 if name == "synth_regression" else 2000
    region = rng.choice(["north", "south", "east", "west", "centre", "islands"], size=n, p=[0.3, 0.25, 0.2, 0.15, 0.07, 0.03])
    segment = rng.choice([f"s{i:02d}" for i in range(25)], size=n)
    x = rng.normal(size=(n, 5))
    effect = {"north": 0.0, "south": 0.4, "east": -0.3, "west": 0.8, "centre": -0.6, "islands": 1.2}
    seg_effect = {f"s{i:02d}": e for i, e in enumerate(rng.normal(scale=0.5, size=25))}
    signal = (
        np.sin(x[:, 0] * 1.5) + 0.5 * x[:, 1] ** 2 - 0.7 * x[:, 2] * (x[:, 3] > 0)
        + np.vectorize(effect.get)(region) + np.vectorize(seg_effect.get)(segment)
    )
    frame = pd.DataFrame(x, columns=[f"x{i}" for i in range(5)])
    frame["region"] = region
    frame["segment"] = segment
    frame["flag"] = rng.random(n) > 0.7
    for col in ("x0", "x2", "x4"):
        frame.loc[rng.random(n) < 0.12, col] = np.nan
    frame.loc[rng.random(n) < 0.08, "region"] = np.nan
    if name == "synth_regression":
        frame["target"] = np.exp(0.8 * signal + rng.normal(scale=0.4, size=n)) * 10  # right-skewed
    else:
        logit = 1.6 * signal - 4.2  # about 8% positives
        frame["target"] = np.where(rng.random(n) < 1 / (1 + np.exp(-logit)), "churn", "stay")
    frame.to_csv(path, index=False)
    return "target"


def dataset_domain(name: str, home: Path):
    from domains.services import domain_create, task_setup

    workspace = home / "workspaces" / name
    workspace.mkdir(parents=True, exist_ok=True)
    if name in SKLEARN:
        loader, task_type = SKLEARN[name]
        domain = domain_create(name=name.replace("_", "-"), task_type=task_type, workspace=workspace,
                               data_path=f"sklearn:{loader}")
    else:
        target = synthetic_write(name, workspace / "data.csv")
        domain = domain_create(name=name.replace("_", "-"), task_type=SYNTHETIC[name], workspace=workspace,
                               data_path="data.csv", target_column=target)
    task_setup(task=domain.task)
    domain.refresh_from_db()
    return domain


def reference_codes(task_type: str) -> dict[str, str]:
    kind = "Regressor" if task_type == "regression" else "Classifier"
    predict = {
        "regression": "return model.predict(X_test)",
        "binary": "return model.predict_proba(X_test)[:, list(model.classes_).index(np.unique(y_train)[-1])]",
        "multiclass": "return model.predict_proba(X_test)",
    }[task_type]
    return {
        "hgb_default": HGB_DEFAULT.format(kind=kind, predict=predict),
        "lightgbm_tuned": LIGHTGBM_TUNED.format(task_type=task_type, seconds=TUNED_SECONDS),
    }


def bench_one(name: str, home: Path, budget: int, references: bool = True) -> dict:
    from agentrun.services import run_create, run_execute
    from experiments.models import Experiment
    from experiments.services import experiment_run

    t0 = time.monotonic()
    domain = dataset_domain(name, home)
    setup_seconds = time.monotonic() - t0
    task = domain.task
    row: dict = {"dataset": name, "task_type": task.task_type, "metric": task.primary_metric,
                 "direction": task.direction, "setup_seconds": round(setup_seconds, 1)}
    t0 = time.monotonic()
    run = run_execute(run_id=run_create(domain=domain, max_experiments=budget, seed=0).pk)
    row["run_seconds"] = round(time.monotonic() - t0, 1)
    summary = run.result.get("builtin") or {}
    pick = Experiment.objects.filter(pk=summary.get("claimed_experiment_id")).first()
    row["researcher"] = {
        "status": run.status,
        "experiments": Experiment.objects.filter(run=run).count(),
        "validation": pick.primary_value if pick else None,
        "holdout": pick.holdout_primary_value if pick else None,
        "reached_at_experiment": summary.get("reached_at_experiment"),
        "reached_at_seconds": summary.get("reached_at_seconds"),
        "pick": pick.hypothesis[:120] if pick else None,
        # The audit (experiments/quarantine.py) on an honest run: every one of these is a false positive.
        "quarantined": Experiment.objects.filter(domain=domain).exclude(quarantine_state="").count(),
        "scored": Experiment.objects.filter(domain=domain, state="completed").count(),
    }
    for ref, code in reference_codes(task.task_type).items():
        if not references:
            row[ref] = {"state": "skipped", "validation": None, "holdout": None}
            continue
        t0 = time.monotonic()
        exp = experiment_run(domain=domain, train_code=code, hypothesis=f"reference: {ref}", seed=0)
        row[ref] = {
            "state": exp.state, "error": exp.error[:300],
            "validation": exp.primary_value, "holdout": exp.holdout_primary_value,
            "seconds": round(time.monotonic() - t0, 1),
            "stdout": exp.stdout_tail[-200:],
        }
    return row


def better_or_equal(a: float | None, b: float | None, direction: str, tolerance: float = 0.0) -> bool | None:
    if a is None or b is None:
        return None
    if direction == "minimize":
        return a <= b * (1 + tolerance) + 1e-12
    return a >= b * (1 - tolerance) - 1e-12


def table_print(rows: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="Research quality (holdout is the private split; budget 30 experiments)")
    for col in ("dataset", "metric", "researcher val / holdout", "to best (exp, s)", "run s",
                "HGB default val / holdout", "LightGBM 60s val / holdout", "≥HGB", "≤1% of tuned", "<60s"):
        table.add_column(col)
    fmt = lambda v: f"{v:.4g}" if isinstance(v, int | float) else "-"  # noqa: E731
    for r in rows:
        res, hgb, ref = r["researcher"], r["hgb_default"], r["lightgbm_tuned"]
        table.add_row(
            r["dataset"], f"{r['metric']} ({'↓' if r['direction'] == 'minimize' else '↑'})",
            f"{fmt(res['validation'])} / {fmt(res['holdout'])}",
            f"{res['reached_at_experiment']}, {fmt(res['reached_at_seconds'])}", fmt(r["run_seconds"]),
            f"{fmt(hgb['validation'])} / {fmt(hgb['holdout'])}",
            f"{fmt(ref['validation'])} / {fmt(ref['holdout'])}",
            str(better_or_equal(res["holdout"], hgb["holdout"], r["direction"])),
            str(better_or_equal(res["holdout"], ref["holdout"], r["direction"], 0.01)),
            str((res["reached_at_seconds"] or 1e9) < TUNED_SECONDS),
        )
    Console(width=200).print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", default=",".join([*SKLEARN, *SYNTHETIC]))
    parser.add_argument("--budget", type=int, default=30)
    parser.add_argument("--no-references", action="store_true",
                        help="Skip the two reference experiments (faster; for timing the researcher).")
    parser.add_argument("--json", type=Path, help="Also write the rows as JSON here.")
    args = parser.parse_args()
    names = [n.strip() for n in args.datasets.split(",") if n.strip()]
    unknown = [n for n in names if n not in SKLEARN and n not in SYNTHETIC]
    if unknown:
        parser.error(f"unknown datasets: {', '.join(unknown)}")

    home = Path(tempfile.mkdtemp(prefix="dojo-bench-"))
    os.environ["DOJO_HOME"] = str(home)
    os.environ.pop("DATABASE_URL", None)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dojo_site.settings")
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    rows = []
    for name in names:
        print(f"== {name}", flush=True)
        row = bench_one(name, home, args.budget, references=not args.no_references)
        print(json.dumps(row, default=str), flush=True)
        rows.append(row)
    table_print(rows)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1, default=str))
    print(f"(state in {home})")


if __name__ == "__main__":
    main()

import hashlib
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from django.db import connections

from dojo_site.errors import InvalidInput, NotReady
from domains.models import TaskTool
from domains.services import domain_create
from experiments.harness import pool
from experiments.models import Experiment
from experiments.services import (
    artifact_open,
    experiment_best,
    experiment_leaderboard,
    experiment_reproduce,
    experiment_run,
)
from tests.experiments.conftest import LINEAR
from tests.experiments.test_integrity import HONEST_TAIL

PLOT = """
import pickle

def train(X_train, y_train, X_test, *, artifacts_dir):
    from sklearn.linear_model import LinearRegression
    model = LinearRegression().fit(X_train, y_train)
    (artifacts_dir / "plots").mkdir()
    (artifacts_dir / "plots" / "coef.png").write_bytes(b"\\x89PNG\\r\\n\\x1a\\n" + bytes(100))
    with open(artifacts_dir / "model.pkl", "wb") as fh:
        pickle.dump(model, fh)
    print("fitted", model.coef_.shape)
    return model.predict(X_test)
"""


def test_it_records_everything_about_a_completed_experiment(diabetes, settings):
    exp = experiment_run(domain=diabetes, train_code=PLOT, hypothesis="linear baseline", variables={"model": "ols"}, seed=7)
    assert exp.state == Experiment.State.COMPLETED, exp.error
    exp.refresh_from_db()
    task = diabetes.task
    assert exp.code_sha256 == hashlib.sha256(PLOT.encode()).hexdigest()
    assert exp.hypothesis == "linear baseline" and exp.variables == {"model": "ols"} and exp.seed == 7
    assert exp.task_fingerprint == task.fingerprint and exp.data_fingerprint == task.data_fingerprint
    assert set(exp.metrics) == set(task.expected_metrics) == set(exp.holdout_metrics)
    assert exp.primary_value == exp.metrics["rmse"] and exp.holdout_primary_value == exp.holdout_metrics["rmse"]
    assert exp.metrics != exp.holdout_metrics  # two different row sets
    assert 0 < exp.train_seconds < exp.total_seconds
    assert exp.peak_memory_mb > 1
    assert {"python", "numpy", "pandas", "scikit-learn"} <= set(exp.environment)
    assert exp.isolation == "bwrap"
    assert "fitted (10,)" in exp.stdout_tail
    assert exp.started_at and exp.finished_at
    paths = {a.path: a for a in exp.artifacts.all()}
    assert paths["train/plots/coef.png"].content_type == "image/png"
    assert paths["train/model.pkl"].source == "train"
    with artifact_open(artifact=paths["train/model.pkl"]) as model:
        assert len(model.read()) == paths["train/model.pkl"].size
    assert not list((Path(settings.DOJO_CACHE_DIR) / "jobs").glob(f"e{exp.pk}-*"))


def test_it_keeps_evaluate_artifacts(make_domain, settings, tmp_path):
    domain = make_domain(name="plotted-eval")
    tool = TaskTool.objects.get(task=domain.task, name="evaluate", is_current=True)
    assert "artifacts_dir" in tool.code  # the template's evaluate takes it; write one through a train-side check instead
    exp = experiment_run(domain=domain, train_code=LINEAR)
    assert exp.state == "completed"
    assert all(a.source in ("train", "evaluate") for a in exp.artifacts.all())


def test_it_refuses_an_unfrozen_task_without_recording_anything(db, workspace):
    domain = domain_create(name="raw", task_type="regression", workspace=workspace, data_path="sklearn:load_diabetes")
    with pytest.raises(NotReady, match="not frozen"):
        experiment_run(domain=domain, train_code=LINEAR)
    assert Experiment.objects.count() == 0


def test_it_refuses_a_task_whose_tools_no_longer_match_the_fingerprint(make_domain):
    domain = make_domain(name="tampered")
    TaskTool.objects.filter(task=domain.task, name="evaluate").update(code="def evaluate(y_pred, **kw):\n    return {}\n")
    with pytest.raises(NotReady, match="fingerprint"):
        experiment_run(domain=domain, train_code=LINEAR)
    assert Experiment.objects.count() == 0


def test_it_rejects_bad_arguments(diabetes, make_domain):
    other = make_domain(name="other")
    foreign = experiment_run(domain=other, train_code=LINEAR)
    with pytest.raises(InvalidInput, match="empty"):
        experiment_run(domain=diabetes, train_code="   ")
    with pytest.raises(InvalidInput, match="another domain"):
        experiment_run(domain=diabetes, train_code=LINEAR, parent=foreign)
    with pytest.raises(InvalidInput, match="does not exist"):
        experiment_run(domain=diabetes, train_code=LINEAR, parent=999999)
    with pytest.raises(InvalidInput, match="variables"):
        experiment_run(domain=diabetes, train_code=LINEAR, variables=["a"])
    assert Experiment.objects.filter(domain=diabetes).count() == 0


@pytest.mark.parametrize(
    ("code", "message"),
    [
        ("def train(X_train, y_train, X_test, *, artifacts_dir):\n    return [1.0, 2.0]\n", "y_pred has 2 values; expected"),
        ("def train(X_train, y_train, X_test, *, artifacts_dir):\n    return [float('nan')] * len(X_test)\n", "non-finite"),
        ("def train(X_train, y_train, X_test, *, artifacts_dir):\n    return None\n", "returned None"),
        ("def train(X_train, y_train, X_test, *, artifacts_dir):\n    return ['a'] * len(X_test)\n", "numbers"),
        ("def train(X_train, y_train, X_test, *, artifacts_dir):\n    x = 1\n    raise ValueError('bad feature')\n", "ValueError: bad feature (train.py line 3)"),
        ("def train(X_train, y_train, X_test, *, artifacts_dir)\n    pass\n", "does not compile"),
        ("def fit():\n    pass\n", "defines no train"),
    ],
)
def test_it_fails_with_a_precise_reason(diabetes, code, message):
    exp = experiment_run(domain=diabetes, train_code=code)
    assert exp.state == Experiment.State.FAILED
    assert message in exp.error
    assert exp.metrics == {} and exp.finished_at is not None


def test_it_validates_binary_and_multiclass_probabilities(make_domain):
    binary = make_domain("load_breast_cancer", name="cancer")
    ok = experiment_run(domain=binary, train_code="""
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

def train(X_train, y_train, X_test, *, artifacts_dir):
    model = make_pipeline(StandardScaler(), LogisticRegression()).fit(X_train, y_train)
    return model.predict_proba(X_test)[:, 1]
""")
    assert ok.state == "completed", ok.error
    assert ok.metrics["roc_auc"] > 0.9
    bad = experiment_run(domain=binary, train_code="def train(X_train, y_train, X_test, *, artifacts_dir):\n    return [1.5] * len(X_test)\n")
    assert bad.state == "failed" and "probabilities in [0, 1]" in bad.error

    multi = make_domain("load_wine", name="wine")
    ok = experiment_run(domain=multi, train_code="""
from sklearn.ensemble import RandomForestClassifier

def train(X_train, y_train, X_test, *, artifacts_dir):
    return RandomForestClassifier(n_estimators=20, random_state=0).fit(X_train, y_train).predict_proba(X_test)
""")
    assert ok.state == "completed", ok.error
    assert ok.metrics["accuracy"] > 0.8
    bad = experiment_run(domain=multi, train_code="""
import numpy as np

def train(X_train, y_train, X_test, *, artifacts_dir):
    return np.full((len(X_test), 3), 0.5)
""")
    assert bad.state == "failed" and "sum to 1" in bad.error


def test_it_stops_when_asked(diabetes):
    started = time.monotonic()
    exp = experiment_run(
        domain=diabetes,
        train_code="import time\n\ndef train(X_train, y_train, X_test, *, artifacts_dir):\n    time.sleep(60)\n",
        should_stop=lambda: time.monotonic() - started > 1.0,
    )
    assert exp.state == "stopped" and exp.error == "stopped"
    assert time.monotonic() - started < 15


def test_it_runs_experiments_from_several_threads(transactional_db, make_domain):
    domain = make_domain(name="parallel")

    def one(i: int) -> tuple[str, str]:
        try:
            exp = experiment_run(domain=domain, train_code=LINEAR, hypothesis=f"thread {i}")
            return exp.state, exp.error
        finally:
            connections.close_all()

    with ThreadPoolExecutor(3) as executor:
        results = list(executor.map(one, range(3)))
    assert results == [("completed", "")] * 3
    assert Experiment.objects.filter(domain=domain, state="completed").count() == 3
    assert len({tuple(sorted(e.metrics.items())) for e in Experiment.objects.filter(domain=domain)}) == 1


def test_it_spawns_cold_when_the_pool_died_and_restarts_it(diabetes):
    first = experiment_run(domain=diabetes, train_code=LINEAR)
    assert first.environment["warm"] is True
    for slots in pool._trainers.values():
        for wp in slots:
            wp.proc.kill()
            wp.proc.wait()
    cold = experiment_run(domain=diabetes, train_code=LINEAR)
    assert cold.state == "completed", cold.error
    assert cold.environment["warm"] is False
    assert any("cold start" in w for w in cold.warnings)
    assert cold.metrics == first.metrics
    again = experiment_run(domain=diabetes, train_code=LINEAR)
    assert again.environment["warm"] is True and again.metrics == first.metrics


def test_it_bounds_the_pool_per_machine(make_domain, settings):
    settings.DOJO_POOL_MAX = 1
    pool.pool_stop_all()
    a = make_domain(name="pool-a")
    b = make_domain("load_breast_cancer", name="pool-b")
    assert experiment_run(domain=a, train_code=LINEAR).state == "completed"
    assert experiment_run(domain=b, train_code="""
def train(X_train, y_train, X_test, *, artifacts_dir):
    return [0.5] * len(X_test)
""").state == "completed"
    trainers = [s for s in pool.pool_status() if s["kind"] == "trainer"]
    assert len(trainers) == 1
    pool.pool_stop_all()


def test_it_lets_an_idle_warm_process_exit(diabetes, settings):
    settings.DOJO_POOL_IDLE_SECONDS = 1
    pool.pool_stop_all()
    assert experiment_run(domain=diabetes, train_code=LINEAR).state == "completed"
    procs = [wp for slots in pool._trainers.values() for wp in slots] + list(pool._evaluators.values())
    assert procs
    deadline = time.monotonic() + 10
    while any(wp.alive() for wp in procs) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(wp.alive() for wp in procs)
    pool.pool_stop_all()


def test_it_falls_back_without_bwrap_and_says_so(diabetes, settings):
    settings.DOJO_SANDBOX = "fallback"
    exp = experiment_run(domain=diabetes, train_code=LINEAR)
    assert exp.state == "completed", exp.error
    assert exp.isolation == "fallback"
    assert any("apt-get install bubblewrap" in w for w in exp.warnings)
    sealed = Path(diabetes.task.snapshot_path) / "sealed" / "y_test.pkl"
    attack = experiment_run(domain=diabetes, train_code=f"""
import pickle

def train(X_train, y_train, X_test, *, artifacts_dir):
    return pickle.load(open({str(sealed)!r}, "rb"))
""")
    assert attack.state == "failed" and "Permission denied" in attack.error
    pool.pool_stop_all()


def test_it_reproduces_an_experiment(diabetes):
    original = experiment_run(domain=diabetes, train_code=LINEAR, hypothesis="ols", seed=3,
                              variables={"family": "linear", "params": {"fit_intercept": True}})
    assert original.family == "linear"  # the leaderboard filters on it
    again = experiment_reproduce(experiment=original)
    assert again.reproduction_of_id == original.pk and again.parent_id is None and again.seed == 3
    assert again.state == "completed" and again.metrics == original.metrics
    assert again.variables == original.variables and again.family == "linear"


def test_it_ranks_experiments_by_validation_or_holdout(diabetes):
    good = experiment_run(domain=diabetes, train_code=LINEAR)
    mean = experiment_run(domain=diabetes, train_code="""
import numpy as np

def train(X_train, y_train, X_test, *, artifacts_dir):
    return np.full(len(X_test), float(np.mean(y_train)))
""")
    failed = experiment_run(domain=diabetes, train_code="def train(*a, **k):\n    raise SystemExit(3)\n")
    assert failed.state == "failed"
    assert list(experiment_leaderboard(domain=diabetes, sort="validation")) == [good, mean, failed]
    assert list(experiment_leaderboard(domain=diabetes, sort="holdout"))[0] == good
    assert list(experiment_leaderboard(domain=diabetes, state="failed")) == [failed]
    assert experiment_best(domain=diabetes) == good
    with pytest.raises(InvalidInput):
        experiment_leaderboard(domain=diabetes, sort="bogus")


def test_it_never_leaves_an_experiment_running_on_an_internal_error(diabetes, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr("experiments.services._collect_artifacts", boom)
    exp = experiment_run(domain=diabetes, train_code=LINEAR)
    assert exp.state == "failed" and "disk on fire" in exp.error
    exp.refresh_from_db()
    assert exp.state == "failed"


def test_it_hands_the_seed_to_the_trainer(diabetes):
    exp = experiment_run(domain=diabetes, seed=42, train_code=f"""
import os, random

def train(X_train, y_train, X_test, *, artifacts_dir):
    print("seed", os.environ["DOJO_SEED"], random.random())
{HONEST_TAIL}""")
    import random

    random.seed(42)
    assert f"seed 42 {random.random()}" in exp.stdout_tail




def test_it_fails_by_hand_experiments_left_running_by_a_dead_process(diabetes):
    from datetime import timedelta

    from django.utils import timezone

    stale = Experiment.objects.create(domain=diabetes, train_code=LINEAR, code_sha256="x", state="running")
    Experiment.objects.filter(pk=stale.pk).update(created_at=timezone.now() - timedelta(hours=3))
    fresh = Experiment.objects.create(domain=diabetes, train_code=LINEAR, code_sha256="y", state="running")
    experiment_run(domain=diabetes, train_code=LINEAR)
    stale.refresh_from_db()
    fresh.refresh_from_db()
    assert stale.state == "failed" and "stopped before it finished" in stale.error
    assert fresh.state == "running"

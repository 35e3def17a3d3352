"""The built-in researcher's decisions. Most tests drive it through a small in-process lab
(the researcher only ever calls session.call_tool, so a stand-in session can score its train code
directly and fast); the last ones run it through the real run loop, harness and knowledge."""

import contextlib
import io
import threading
import time
import types

import numpy as np
import pytest
from sklearn import datasets
from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

from agentrun.backends import builtin
from agentrun.backends.builtin_code import Config
from agentrun.models import AgentRun
from agentrun.services import run_create, run_execute
from experiments.models import Experiment
from knowledge.models import KnowledgeAtom


class Lab:
    """A RunSession stand-in: runs each train module in this process on a fixed split and scores
    the validation half with the regression metrics. `value_of(variables, seed)` may replace the
    real score with a scripted one."""

    def __init__(self, *, budget=12, seed=0, knowledge=(), value_of=None, n=160):
        X, y = datasets.load_diabetes(return_X_y=True)
        X, y = X[:n], y[:n]
        cut = int(n * 0.75)
        self.X_train, self.y_train, self.X_test, self.y_test = X[:cut], y[:cut], X[cut:], y[cut:]
        self.context = {
            "task_type": "regression", "primary_metric": "rmse", "direction": "minimize",
            "knowledge": list(knowledge), "domain": "lab",
            "snapshot_info": {"n_train": cut, "n_test": n - cut, "n_validation": (n - cut) // 2},
        }
        self.seed, self.max_parallel, self.budget = seed, 2, budget
        self.value_of = value_of
        self.calls: list[dict] = []
        self.events: list[dict] = []
        self.result: dict = {}
        self.stop_reason = None
        self._lock = threading.Lock()
        self._train_lock = threading.Lock()
        self._t0 = time.monotonic()

    def emit(self, type, data):
        self.events.append(data)

    def add_turn(self):
        pass

    def should_stop(self):
        return False

    def elapsed_seconds(self):
        return time.monotonic() - self._t0

    def experiments_remaining(self):
        return max(0, self.budget - len(self.calls))

    def call_tool(self, name, arguments):
        assert name == "run_experiment"
        with self._lock:
            if len(self.calls) >= self.budget:
                return {"ok": False, "error": "experiment limit reached"}
            self.calls.append(arguments)
            experiment_id = len(self.calls)
        out = io.StringIO()
        with self._train_lock, contextlib.redirect_stdout(out):
            module = types.ModuleType("train")
            exec(compile(arguments["code"], "train.py", "exec"), module.__dict__)
            module.SEED = arguments.get("seed", 0)
            pred = module.train(self.X_train, self.y_train, self.X_test, artifacts_dir="/tmp")
        half = len(self.y_test) // 2
        y, p = self.y_test[:half], np.asarray(pred)[:half]
        metrics = {"rmse": mean_squared_error(y, p) ** 0.5, "mae": mean_absolute_error(y, p), "r2": r2_score(y, p)}
        stdout = out.getvalue()
        if self.value_of is not None:
            metrics["rmse"] = self.value_of(arguments["variables"], arguments.get("seed", 0))
            stdout = ""  # scripted values: no out-of-fold score to blend in
        return {"ok": True, "experiment_id": experiment_id, "state": "completed", "metrics": metrics,
                "primary_value": metrics["rmse"], "error": "", "stdout_tail": stdout}


def plan_of(lab: Lab) -> list[tuple]:
    return [(c["variables"]["phase"], c["variables"]["family"], str(c["variables"].get("params")),
             c.get("seed"), c.get("parent_id")) for c in lab.calls]


def test_it_runs_baselines_then_families_within_its_budget_and_names_parents():
    lab = Lab(budget=12)
    builtin.run(lab)
    phases = [c["variables"]["phase"] for c in lab.calls]
    assert len(lab.calls) == 12
    assert phases[:2] == ["baseline", "baseline"]
    assert [c["variables"]["family"] for c in lab.calls[:2]] == ["constant", "linear"]
    assert "scan" in phases and ("tune" in phases or "ensemble" in phases)
    for call in lab.calls:
        if call["variables"]["phase"] in ("tune", "seed_check", "ensemble", "transform"):
            assert call.get("parent_id"), call["hypothesis"]
    assert lab.result["builtin"]["claimed_experiment_id"]


def test_it_is_deterministic_for_a_given_seed():
    first, second = Lab(budget=10, seed=3), Lab(budget=10, seed=3)
    builtin.run(first)
    builtin.run(second)
    assert plan_of(first) == plan_of(second)
    timing = {"reached_at_seconds"}
    assert {k: v for k, v in first.result["builtin"].items() if k not in timing} == {
        k: v for k, v in second.result["builtin"].items() if k not in timing
    }


def test_it_claims_a_new_best_only_beyond_the_seed_spread():
    """Random forest looks better on seed 0 (48 vs the linear 50), but its other seeds say 53 and
    54: the researcher re-runs it before claiming, and keeps the linear model."""

    def value_of(variables, seed):
        family = variables["family"]
        if family == "random_forest":
            return {0: 48.0}.get(seed, 53.0 + (seed % 7) / 7)
        return {"constant": 80.0, "linear": 50.0}.get(family, 60.0)

    lab = Lab(budget=12, value_of=value_of)
    builtin.run(lab)
    checks = [c for c in lab.calls if c["variables"]["phase"] == "seed_check"]
    forest = next(i + 1 for i, c in enumerate(lab.calls) if c["variables"]["family"] == "random_forest")
    assert checks and all(c["parent_id"] == forest for c in checks if c["variables"]["family"] == "random_forest")
    assert {c["seed"] for c in checks} - {0}
    assert lab.result["builtin"]["claimed_config"]["family"] == "linear"


def test_it_starts_from_knowledge_and_reaches_the_earlier_best_sooner():
    first = Lab(budget=14)
    builtin.run(first)
    summary = first.result["builtin"]
    atoms = [
        {"atom_id": i + 1, **f} for i, f in enumerate(builtin.findings(first))
    ]
    best_atom = atoms[0]
    assert "config=" in best_atom["action"] and best_atom["confidence"] >= 0.6
    second = Lab(budget=6, knowledge=atoms)
    builtin.run(second)
    assert second.calls[0]["variables"]["phase"] == "knowledge"
    assert Config.from_dict(second.calls[0]["variables"]) == Config.from_dict(summary["claimed_config"])
    # The same configuration with the same seed scores the same: reached at experiment 1.
    assert second.result["builtin"]["reached_at_experiment"] == 1 < summary["reached_at_experiment"]
    assert second.calls[0]["variables"]["family"] != "constant"


def test_it_skips_families_knowledge_says_lose():
    atoms = [{"atom_id": 7, "confidence": 0.9, "claim": "Ridge beats k-NN by 30% RMSE",
              "action": "Skip k-NN when scanning families here. skip_family=knn"}]
    lab = Lab(budget=10, knowledge=atoms)
    builtin.run(lab)
    assert "knn" not in {c["variables"]["family"] for c in lab.calls}
    assert any("atom #7" in e.get("text", "") for e in lab.events)


# --- through the real run loop, harness and knowledge -----------------------------------------


@pytest.mark.django_db(transaction=True)
def test_it_compounds_knowledge_across_real_runs(frozen_domain):
    """Run 1 writes atoms from its evidence; run 2 starts from its best configuration and gets
    there in fewer experiments."""
    first = run_execute(run_id=run_create(domain=frozen_domain, max_experiments=7).pk)
    assert first.status == AgentRun.Status.COMPLETED, first.error
    atoms = KnowledgeAtom.objects.filter(domain=frozen_domain, created_by_run=first)
    assert atoms.exists()
    best_atom = atoms.filter(action__contains="config=").get()
    assert best_atom.evidence_links.exists()
    reached_first = first.result["builtin"]["reached_at_experiment"]
    best_first = Experiment.objects.get(pk=first.result["builtin"]["claimed_experiment_id"]).primary_value

    second = run_execute(run_id=run_create(domain=frozen_domain, max_experiments=4).pk)
    assert second.status == AgentRun.Status.COMPLETED, second.error
    experiments = list(Experiment.objects.filter(run=second).order_by("pk"))
    opening = [e for e in experiments if e.variables.get("phase") == "knowledge"]
    assert opening and opening[0].primary_value == pytest.approx(best_first)
    assert second.result["builtin"]["reached_at_experiment"] == 1
    assert reached_first > 1  # experiment 1 of a fresh run is the constant baseline
    # The rewrite of the same finding became a new version, not a duplicate.
    best_atom.refresh_from_db()
    assert best_atom.status == KnowledgeAtom.Status.SUPERSEDED


def test_it_plans_from_the_data_summary_a_real_run_context_carries():
    from agentrun.backends.builtin_plan import data_profile, scan_families

    summary = {  # agentrun.services' "data" summary of a snapshot manifest
        "n_train": 8_000, "n_test_rows_to_predict": 2_000,
        "X_train": {"type": "ndarray", "shape": [8_000, 64]}, "columns": "float64",
        "classes": list(range(10)),
    }
    profile = data_profile(summary)
    assert (profile.n_rows, profile.n_test, profile.n_features, profile.n_categorical, profile.n_classes) == (
        8_000, 2_000, 64, 0, 10)
    families = scan_families(task_type="multiclass", profile=profile, skip=set())
    assert "svm" not in families and "linear_interactions" not in families

"""Issue 11 item 1: the workspace's own modules in train() and in the frozen tools."""

import os
import time

import pytest

from dojo_site.errors import NotReady
from domains.services import domain_create, task_freeze, task_status, task_tools_import, task_verify
from experiments.harness import pool
from experiments.services import experiment_run
from tests.factories import frozen_domain

TRAIN_WITH_MODULE = """
import os
import numpy as np
from mypipe.features import version

def train(X_train, y_train, X_test, *, artifacts_dir):
    print("FEATURES", version())
    try:
        open(os.path.join(os.getcwd(), "mypipe", "planted.py"), "w").write("x = 1")
        print("WORKSPACE WRITABLE")
    except OSError:
        print("WORKSPACE READ-ONLY")
    return np.full(len(X_test), float(np.mean(y_train)))
"""


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    # Same size, same second: an mtime-based bytecode check could not tell these edits apart.
    os.utime(path, (1_700_000_000, 1_700_000_000))


@pytest.fixture(autouse=True)
def _fresh_pool():
    yield
    pool.pool_stop_all()


def test_it_imports_workspace_modules_and_sees_each_edit(db, tmp_path):
    workspace = tmp_path / "repo"
    workspace.mkdir()
    module = workspace / "mypipe" / "features.py"
    _write(workspace / "mypipe" / "__init__.py", "")
    _write(module, "def version():\n    return 'v1'\n")
    domain = frozen_domain(workspace=workspace, loader="load_diabetes", name="own-code")

    first = experiment_run(domain=domain, train_code=TRAIN_WITH_MODULE)
    assert first.state == "completed", first.error
    assert "FEATURES v1" in first.stdout_tail
    if first.isolation == "bwrap":  # the fallback relies on file permissions for this
        assert "WORKSPACE READ-ONLY" in first.stdout_tail
        assert not (workspace / "mypipe" / "planted.py").exists()

    _write(module, "def version():\n    return 'v2'\n")
    second = experiment_run(domain=domain, train_code=TRAIN_WITH_MODULE)
    assert second.state == "completed", second.error
    assert second.environment["warm"] is True  # the same warm parent served both
    assert "FEATURES v2" in second.stdout_tail

    # A __pycache__ the user's own tools left behind does not stand in for the source either.
    import importlib.util
    import py_compile

    py_compile.compile(str(module), cfile=importlib.util.cache_from_source(str(module)))
    _write(module, "def version():\n    return 'v3'\n")
    third = experiment_run(domain=domain, train_code=TRAIN_WITH_MODULE)
    assert "FEATURES v3" in third.stdout_tail


LOAD_WITH_MODULE = '''
from helpers.data import make

def load_data():
    return make()
'''

HELPERS_DATA = '''
import numpy as np

def make():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 3))
    y = 2 * X[:, 0] + rng.normal(size=60) * 0.1
    return X[:48], X[48:], y[:48], y[48:]
'''

EVALUATE_WITH_MODULE = '''
def evaluate(y_pred, *, X_train, X_test, y_train, y_test, artifacts_dir):
    from helpers.scoring import scores   # imported lazily, inside the call
    return scores(y_pred, y_test)
'''

HELPERS_SCORING = '''
import numpy as np

def scores(y_pred, y_test):
    y = np.asarray(y_test, dtype=float)
    err = np.asarray(y_pred, dtype=float) - y
    ss = float(((y - y.mean()) ** 2).sum()) or 1.0
    return {"rmse": float(np.sqrt((err ** 2).mean())), "mae": float(np.abs(err).mean()),
            "r2": float(1 - (err ** 2).sum() / ss)}
'''

MEAN_TRAIN = """
import numpy as np

def train(X_train, y_train, X_test, *, artifacts_dir):
    return np.full(len(X_test), float(np.mean(y_train)))
"""


@pytest.fixture
def contract_on_modules(db, tmp_path):
    workspace = tmp_path / "repo"
    workspace.mkdir()
    _write(workspace / "helpers" / "__init__.py", "")
    _write(workspace / "helpers" / "data.py", HELPERS_DATA)
    _write(workspace / "helpers" / "scoring.py", HELPERS_SCORING)
    _write(workspace / "helpers" / "unused.py", "X = 1\n")
    domain = domain_create(name="modules", task_type="regression", workspace=workspace)
    task_tools_import(task=domain.task, load_data=LOAD_WITH_MODULE, evaluate=EVALUATE_WITH_MODULE)
    run = task_verify(task=domain.task)
    assert run.ok, run.errors
    return domain, workspace


def test_it_fingerprints_the_workspace_modules_the_tools_import(contract_on_modules):
    domain, workspace = contract_on_modules
    task = task_freeze(task=domain.task)
    assert sorted(task.contract_files) == ["helpers/__init__.py", "helpers/data.py", "helpers/scoring.py"]
    assert task_status(task=task)["tools_fingerprint"] == task.fingerprint

    ok = experiment_run(domain=domain, train_code=MEAN_TRAIN)
    assert ok.state == "completed", ok.error  # the trusted evaluator imported helpers.scoring too
    assert set(ok.metrics) == {"rmse", "mae", "r2"}

    scoring = workspace / "helpers" / "scoring.py"
    scoring.write_text(HELPERS_SCORING.replace("np.sqrt", "0.5 * np.sqrt"))
    with pytest.raises(NotReady, match="helpers/scoring.py changed after the task was frozen"):
        experiment_run(domain=domain, train_code=MEAN_TRAIN)

    scoring.write_text(HELPERS_SCORING)  # put back: the contract holds again
    again = experiment_run(domain=domain, train_code=MEAN_TRAIN)
    assert again.state == "completed" and again.metrics == ok.metrics

    (workspace / "helpers" / "data.py").unlink()
    with pytest.raises(NotReady, match="helpers/data.py"):
        experiment_run(domain=domain, train_code=MEAN_TRAIN)

    # Editing a module the tools never imported changes nothing.
    (workspace / "helpers" / "data.py").write_text(HELPERS_DATA)
    (workspace / "helpers" / "unused.py").write_text("X = 2\n")
    assert experiment_run(domain=domain, train_code=MEAN_TRAIN).state == "completed"


def test_it_refuses_to_freeze_after_a_module_changed_since_verification(contract_on_modules):
    domain, workspace = contract_on_modules
    time.sleep(0.01)
    (workspace / "helpers" / "data.py").write_text(HELPERS_DATA + "\n# edited\n")
    with pytest.raises(NotReady, match="helpers/data.py, imported by load_data/evaluate, changed since verification"):
        task_freeze(task=domain.task)
    assert not domain.task.is_frozen

"""Public-source tasks: the trainer sandbox hides the bundled datasets, so looking labels up fails;
and the runtime audit trail of train()."""

import pytest

from domains.sandbox import sandbox_isolation
from experiments.models import Experiment
from experiments.services import experiment_run
from tests.experiments.test_scan import LOOKUP

needs_bwrap = pytest.mark.skipif(sandbox_isolation(None) != "bwrap",
                                 reason="only bubblewrap can hide the bundled dataset folders from the trainer")

READ_THE_FILE = '''
import gzip
import os

import numpy as np
import sklearn


def train(X_train, y_train, X_test, *, artifacts_dir):
    folder = os.path.join(os.path.dirname(sklearn.__file__), "datasets", "data")
    with gzip.open(os.path.join(folder, "diabetes_target.csv.gz")) as fh:
        y = np.loadtxt(fh)
    return np.full(len(X_test), y.mean())
'''


@needs_bwrap
def test_the_lookup_attack_on_a_bundled_dataset_gets_no_labels(diabetes):
    assert any(f["check"] == "public_source" for f in diabetes.task.audit)
    exp = experiment_run(domain=diabetes, train_code=LOOKUP, hypothesis="look the labels up")
    assert exp.state == Experiment.State.FAILED, (exp.metrics, exp.holdout_metrics)
    assert exp.primary_value is None and ("FileNotFoundError" in exp.error or "No such file" in exp.error), exp.error
    direct = experiment_run(domain=diabetes, train_code=READ_THE_FILE, hypothesis="read the package file")
    assert direct.state == Experiment.State.FAILED and ("No such file" in direct.error or "FileNotFoundError" in direct.error), direct.error


SNOOP = '''
import os
import socket
import subprocess

import numpy as np


def train(X_train, y_train, X_test, *, artifacts_dir):
    for path in ("/etc/hostname", "/proc/1/cmdline", "notes.txt"):
        try:
            open(path).close()
        except OSError:
            pass
    try:
        socket.create_connection(("10.0.0.1", 80), timeout=0.2)
    except OSError:
        pass
    subprocess.run(["true"], check=False)
    import ctypes
    ctypes.CDLL(None).getpid()
    try:
        from sklearn.datasets import load_diabetes
        load_diabetes()
    except Exception:
        pass
    return np.full(len(X_test), float(np.mean(y_train)))
'''

HONEST = '''
from sklearn.linear_model import Ridge
from sklearn.ensemble import RandomForestRegressor
import numpy as np


def train(X_train, y_train, X_test, *, artifacts_dir):
    np.save(artifacts_dir / "coef.npy", np.zeros(3))
    forest = RandomForestRegressor(n_estimators=10, random_state=0).fit(X_train, y_train)
    ridge = Ridge().fit(X_train, y_train)
    return (forest.predict(X_test) + ridge.predict(X_test)) / 2
'''

CLOSE_THE_PIPE = '''
import os

import numpy as np


def train(X_train, y_train, X_test, *, artifacts_dir):
    for fd in range(3, 64):
        if fd != 3:
            try:
                os.close(fd)
            except OSError:
                pass
    open("/etc/hostname").close()
    return np.full(len(X_test), float(np.mean(y_train)))
'''


def _kinds(exp):
    return {(e["kind"], e["detail"]) for e in exp.audit_trail}


def test_the_audit_trail_records_what_train_did(diabetes, client_logged_in):
    exp = experiment_run(domain=diabetes, train_code=SNOOP, hypothesis="snoop around")
    assert exp.state == Experiment.State.COMPLETED, exp.error
    exp.refresh_from_db()
    kinds = {e["kind"] for e in exp.audit_trail}
    assert {"open", "proc", "socket", "subprocess", "ctypes", "dataset_loader"} <= kinds, exp.audit_trail
    details = " | ".join(e["detail"] for e in exp.audit_trail)
    assert "/etc/hostname" in details and "/proc/1/cmdline" in details and "notes.txt" in details
    assert "import sklearn.datasets" in details and "10.0.0.1" in details
    assert "tampered" not in kinds and len(exp.audit_trail) <= 202
    page = client_logged_in.get(exp.get_absolute_url()).content.decode()
    assert 'id="audit-trail"' in page and "/proc/1/cmdline" in page


def test_honest_code_leaves_a_quiet_trail(diabetes):
    exp = experiment_run(domain=diabetes, train_code=HONEST, hypothesis="forest + ridge")
    assert exp.state == Experiment.State.COMPLETED, exp.error
    exp.refresh_from_db()
    assert not [e for e in exp.audit_trail if e["kind"] in ("dataset_loader", "socket", "subprocess", "proc", "tampered")], exp.audit_trail


def test_closing_the_audit_pipe_is_recorded_as_tampering(diabetes):
    exp = experiment_run(domain=diabetes, train_code=CLOSE_THE_PIPE, hypothesis="hide")
    assert exp.state == Experiment.State.COMPLETED, exp.error
    exp.refresh_from_db()
    assert [e["kind"] for e in exp.audit_trail] == ["tampered"], exp.audit_trail


def test_the_trail_is_bounded(diabetes):
    code = '''
import numpy as np


def train(X_train, y_train, X_test, *, artifacts_dir):
    for i in range(500):
        try:
            open(f"/nonexistent/{i}")
        except OSError:
            pass
    return np.full(len(X_test), float(np.mean(y_train)))
'''
    exp = experiment_run(domain=diabetes, train_code=code, hypothesis="flood")
    exp.refresh_from_db()
    assert exp.state == Experiment.State.COMPLETED, exp.error
    assert len(exp.audit_trail) == 201 and exp.audit_trail[-1]["kind"] == "truncated"


def test_the_trainer_knows_the_same_dataset_modules_as_the_audit():
    from domains.audit import DATASET_MODULES
    from experiments.harness import trainer

    assert trainer.DATASET_MODULES == DATASET_MODULES

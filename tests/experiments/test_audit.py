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

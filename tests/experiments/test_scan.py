"""The static scan of train code at submission (experiments/scan.py), through experiment_run, the
API, the CLI and the experiment page; and no severe flag on the built-in researcher's code."""

import json

import pytest
from django.core.management import call_command

from agentrun.backends.builtin_code import FAMILIES, Config, train_code_render
from agentrun.backends.builtin_plan import default_params
from experiments.models import Experiment
from experiments.scan import scan_train_code
from experiments.services import experiment_run

LOOKUP = '''import numpy as np
from sklearn.datasets import load_diabetes


def train(X_train, y_train, X_test, *, artifacts_dir):
    X, y = load_diabetes(return_X_y=True)
    return np.array([y[np.abs(X - row).sum(axis=1).argmin()] for row in np.asarray(X_test)])
'''


def _kinds(flags):
    return {(f["line"], f["kind"]) for f in flags}


@pytest.mark.parametrize(("code", "expected"), [
    ("import sklearn.datasets as d\n", {(1, "dataset_loader")}),
    ("from sklearn import datasets\n", {(1, "dataset_loader")}),
    ("import sklearn\nX = sklearn.datasets.load_iris()\n", {(2, "dataset_loader")}),
    ("import seaborn as sns\nsns.load_dataset('iris')\n", set()),  # the attribute is on an alias
    ("from seaborn import load_dataset\n", {(1, "dataset_loader")}),
    ("import importlib\nm = importlib.import_module('sklearn.datasets')\n", {(2, "dynamic_code"), (2, "dataset_loader")}),
    ("x = open('/data/raw.csv').read()\n", {(1, "literal_path_read")}),
    ("open('notes.txt', 'w').write('x')\n", set()),
    ("import pandas as pd\n\ndf = pd.read_csv('train.csv')\n", {(3, "literal_path_read")}),
    ("from pathlib import Path\nt = Path('/etc/passwd').read_text()\n", {(2, "literal_path_read")}),
    ("import numpy as np\na = np.load(f'/srv/{1}.npy')\n", {(2, "literal_path_read")}),
    ("import os\nos.listdir('/home')\n", {(2, "literal_path_read")}),
    ("eval('1+1')\n", {(1, "dynamic_code")}),
    ("f = exec\n", {(1, "dynamic_code")}),
    ("m = __import__('os')\n", {(1, "dynamic_code")}),
    ("import ctypes\n", {(1, "ctypes")}),
    ("p = '/proc/1/environ'\n", {(1, "proc")}),
    ("import socket\n", {(1, "network")}),
    ("from urllib.request import urlopen\n", {(1, "network")}),
    ("u = 'https://example.org/data.csv'\n", {(1, "network")}),
    ("import subprocess\n", {(1, "subprocess")}),
    ("import os\nos.system('ls')\n", {(2, "subprocess")}),
    ("import re\nr = re.compile('a+')\n", set()),
])
def test_it_flags_each_kind_with_its_line(code, expected):
    assert _kinds(scan_train_code(code)) == expected


def test_unparseable_code_gives_one_flag_and_no_crash():
    flags = scan_train_code("def train(:\n    pass\n")
    assert len(flags) == 1 and flags[0]["kind"] == "syntax" and flags[0]["line"] == 1
    assert [f["kind"] for f in scan_train_code("x = " + "(" * 500 + ")" * 500 + "\n")] == ["syntax"]
    assert [f["kind"] for f in scan_train_code("x = " + "-" * 100000 + "1\n")] in (["syntax"], [])


@pytest.mark.parametrize("task_type", ["regression", "binary", "multiclass"])
def test_the_builtin_researchers_code_has_no_severe_flag(task_type):
    metric = {"regression": "rmse", "binary": "roc_auc", "multiclass": "log_loss"}[task_type]
    configs = [Config(f, default_params(f, task_type)) for f in FAMILIES
               if f != "ensemble" and not (f == "elastic_net" and task_type != "regression")]
    configs.append(Config("ensemble", {}, members=tuple(configs[1:4])))
    for config in configs:
        code = train_code_render(config=config, task_type=task_type, metric=metric)
        severe = [f for f in scan_train_code(code) if f["severity"] == "severe"]
        assert severe == [], (config.family, severe)


def test_flags_are_stored_at_submission_and_shown_everywhere(diabetes, client_logged_in, user):
    exp = experiment_run(domain=diabetes, train_code=LOOKUP, hypothesis="look it up")
    exp.refresh_from_db()
    assert {(f["line"], f["kind"], f["severity"]) for f in exp.code_flags} == {(2, "dataset_loader", "severe")}
    assert "sklearn.datasets" in exp.code_flags[0]["text"]

    page = client_logged_in.get(exp.get_absolute_url())
    assert page.status_code == 200
    html = page.content.decode()
    assert 'id="code-flags"' in html and "dataset_loader" in html and "<strong>severe</strong>" in html

    from domains.services import token_create
    _, token = token_create(user=user)
    answer = client_logged_in.get(f"/api/experiments/{exp.pk}", HTTP_AUTHORIZATION=f"Bearer {token}")
    assert answer.status_code == 200, answer.content
    assert answer.json()["code_flags"] == exp.code_flags

    import io
    out = io.StringIO()
    call_command("dojo_experiments", "show", str(exp.pk), "--json", stdout=out)
    assert json.loads(out.getvalue())["code_flags"] == exp.code_flags


def test_unparseable_train_code_is_flagged_and_fails_cleanly(diabetes):
    exp = experiment_run(domain=diabetes, train_code="def train(:\n", hypothesis="broken")
    exp.refresh_from_db()
    assert exp.state == Experiment.State.FAILED
    assert [f["kind"] for f in exp.code_flags] == ["syntax"]

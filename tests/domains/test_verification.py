"""Verification runs the tools in the sandbox and checks them against the contract."""

import os
import time
import uuid

import pytest

from domains.models import TaskTool
from domains.services import task_tools_import, task_update, task_verify
from tests.domains.taskkit import EVALUATE_REGRESSION, LOAD_REGRESSION, make_domain, task_of

pytestmark = pytest.mark.django_db


def _verify(workspace, *, load=LOAD_REGRESSION, evaluate=EVALUATE_REGRESSION, task_type="regression", config=None):
    domain = make_domain(workspace, task_type=task_type)
    task = task_of(domain)
    if config:
        task = task_update(task=task, config=config)
    task_tools_import(task=task, load_data=load, evaluate=evaluate)
    return task_verify(task=task)


def test_it_verifies_good_tools_and_records_it_on_their_versions(workspace):
    run = _verify(workspace)
    assert run.ok, run.errors
    tools = {t.name: t for t in TaskTool.objects.filter(is_current=True)}
    assert all(t.is_verified for t in tools.values())
    ld, ev = tools["load_data"], tools["evaluate"]
    assert ld.verification_errors == [] and ld.verification_sample["shapes"]["X_train"] == [48, 3]
    assert ev.verification_sample["true_labels"]["rmse"] == 0.0
    assert ev.verification_sample["constant"]["rmse"] > 0.5
    assert ev.verification_sample["validation_rows"]["rmse"] == 0.0 and "holdout_rows" in ev.verification_sample
    assert ld.verified_code_sha256 == ld.code_sha256 and ld.verified_at is not None


def _load(returned: str) -> str:
    return f'''
import numpy as np


def load_data():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(20, 2))
    y = X[:, 0]
    return {returned}
'''


@pytest.mark.parametrize(
    ("returned", "expected"),
    [
        ("X[:15], X[15:], y[:15]", "load_data returned a tuple of length 3; expected a 4-tuple (X_train, X_test, y_train, y_test)"),
        ("X[:20], X[20:], y[:20], y[20:]", "load_data: X_test is empty (0 rows)"),
        ("X[:15], X[15:], y[:14], y[15:]", "load_data: X_train has 15 rows but y_train has 14; they must be aligned"),
        ("X[:15, 0], X[15:, 0], y[:15], y[15:]", "load_data: X_train must be 2-D (rows × features); got shape (15,)"),
        ("X[:15], X[15:], X[:15], y[15:]", "load_data: y_train must be 1-D (one label per row); got shape (15, 2)"),
        ("{'X': X}", "load_data returned a dict; expected a 4-tuple"),
    ],
)
def test_it_rejects_a_bad_load_data_with_one_line(workspace, returned, expected):
    run = _verify(workspace, load=_load(returned))
    assert not run.ok
    assert run.load_data.errors[0].startswith(expected)
    assert run.evaluate.errors == ["evaluate: not checked, because load_data failed"]
    tool = TaskTool.objects.get(name="load_data", is_current=True)
    assert tool.verified_ok is False and tool.verification_errors[0].startswith(expected)


def test_it_names_the_line_where_load_data_raised(workspace):
    run = _verify(workspace, load="def load_data():\n    x = 1\n    raise FileNotFoundError('data.csv')\n")
    assert run.load_data.errors == ["load_data raised FileNotFoundError: data.csv (load_data.py line 3)"]


def test_it_checks_the_target_fits_a_binary_task(workspace):
    load = _load("X[:15], X[15:], np.array(['a', 'b', 'c'] * 5), np.array(['a', 'b', 'c', 'a', 'b'])")
    run = _verify(workspace, load=load, task_type="binary")
    assert run.load_data.errors == [
        "load_data: a binary target needs exactly 2 classes; y_train and y_test hold 3: ['a', 'b', 'c']"
    ]


def test_it_checks_a_regression_target_is_numeric(workspace):
    run = _verify(workspace, load=_load("X[:15], X[15:], np.array(['x'] * 15), y[15:]"))
    assert run.load_data.errors[0].startswith("load_data: a regression target must be numeric; y_train has dtype <U1")


def _evaluate(body: str) -> str:
    return f'''
import numpy as np


def evaluate(y_pred, *, X_train, X_test, y_train, y_test, artifacts_dir):
    err = np.asarray(y_pred, dtype=float) - np.asarray(y_test, dtype=float)
    rmse = float(np.sqrt((err ** 2).mean()))
    {body}
'''


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ('return {"rmse": rmse, "mae": rmse, "r2": 0.0, "n_test": 5}',
         "evaluate on the true labels returned unexpected key(s) ['n_test']; expected exactly ['rmse', 'mae', 'r2']"),
        ('return {"rmse": rmse, "r2": 0.0}',
         "evaluate on the true labels is missing the key(s) ['mae']; expected exactly ['rmse', 'mae', 'r2']"),
        ('return {"rmse": rmse, "mae": float("nan"), "r2": 0.0}',
         "evaluate on the true labels returned mae=nan; expected a finite number"),
        ('return [rmse, rmse, 0.0]',
         "evaluate on the true labels returned a list; expected a dict with exactly the keys ['rmse', 'mae', 'r2']"),
        ('return {"rmse": "low", "mae": rmse, "r2": 0.0}',
         "evaluate on the true labels returned rmse='low' (str); expected a finite number"),
        ('return {"rmse": 1.0, "mae": 1.0, "r2": 0.0}',
         "evaluate scores the true labels no better than a constant prediction on rmse (true labels 1, constant 1, minimize); it must respond to y_pred"),
        ('return {"rmse": rmse, "mae": rmse, "r2": float(np.corrcoef(y_pred, y_test)[0, 1]) if len(y_test) > 6 else float("inf")}',
         "evaluate on a subset of 6 test rows (the validation part) returned r2=inf; expected a finite number"),
    ],
)
def test_it_rejects_a_bad_evaluate_with_one_line(workspace, body, expected):
    run = _verify(workspace, evaluate=_evaluate(body))
    assert run.load_data.ok
    assert run.evaluate.errors[0] == expected
    assert TaskTool.objects.get(name="evaluate", is_current=True).verified_ok is False


def test_it_checks_evaluate_on_a_constant_prediction_too(workspace):
    body = 'return {"rmse": rmse, "mae": rmse, "r2": 0.0 if rmse == 0 else float("nan")}'
    run = _verify(workspace, evaluate=_evaluate(body))
    assert run.evaluate.errors == ["evaluate on a constant prediction returned r2=nan; expected a finite number"]


def _alive(token: str) -> list[int]:
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                if token.encode() in handle.read():
                    found.append(int(pid))
        except OSError:
            continue
    return found


def test_it_times_out_a_tool_that_sleeps_forever_and_leaves_no_process(workspace):
    token = f"dojo-sleeper-{uuid.uuid4().hex}"
    load = f'''
import subprocess, sys, time


def load_data():
    subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)", "{token}"])
    time.sleep(600)
'''
    started = time.monotonic()
    run = _verify(workspace, load=load, config={"verify_timeout_seconds": 2})
    assert time.monotonic() - started < 30
    assert run.load_data.errors == [
        "load_data: did not finish within 2 s; it was stopped and its processes killed "
        "(raise the task config's verify_timeout_seconds if it is just slow)"
    ]
    deadline = time.monotonic() + 3
    while _alive(token) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _alive(token) == []


def test_it_refuses_a_tool_that_prints_50_mb(workspace):
    load = LOAD_REGRESSION.replace("    rng = ", "    print('x' * 50_000_000)\n    rng = ")
    run = _verify(workspace, load=load)
    assert run.load_data.errors == [
        "load_data printed 50.0 MB; a tool may print at most 1 MB (its output is kept with every experiment)"
    ]


def test_it_hides_dojo_home_from_the_tools(workspace, dojo_home):
    secret = dojo_home / "secret.txt"
    secret.write_text("labels")
    load = LOAD_REGRESSION.replace("    rng = ", f"    assert not open({str(secret)!r}).read()\n    rng = ")
    run = _verify(workspace, load=load)
    from domains.sandbox import sandbox_isolation

    if sandbox_isolation() != "bwrap":
        pytest.skip("bubblewrap is not available here: only bwrap hides DOJO_HOME from the tools")
    assert run.load_data.errors[0].startswith("load_data raised FileNotFoundError")

"""The leak audit (domains/audit.py): measured at verification, shown by `dojo_task show`, the API
and the task page; a severe finding blocks freezing until an explicit override, which is recorded."""

import json
import shutil
from io import StringIO
from pathlib import Path

import pytest
import sklearn
from django.core.management import CommandError, call_command

from dojo_site.errors import NotReady
from domains.services import task_freeze, task_tools_import, task_verify
from tests.domains.taskkit import EVALUATE_REGRESSION, LOAD_REGRESSION, make_domain, task_of

pytestmark = pytest.mark.django_db

# Three leaks at once: a column that is the target, a row id, and test rows copied from train.
LOAD_LEAKY = '''
import numpy as np


def load_data():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 3))
    y = X[:, 0] + rng.normal(size=200)
    X = np.column_stack([X, y, np.arange(200)])
    X_test = np.vstack([X[:30], X[170:]])
    y_test = np.concatenate([y[:30], y[170:]])
    return X[:170], X_test, y[:170], y_test
'''

# A column that predicts the class almost perfectly without being equal to it.
LOAD_PROXY = '''
import numpy as np


def load_data():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, size=300)
    X = np.column_stack([rng.normal(size=300), y * 10.0 + rng.normal(size=300) * 0.01])
    return X[:240], X[240:], y[:240], y[240:]
'''

EVALUATE_BINARY = '''
import numpy as np


def evaluate(y_pred, *, X_train, X_test, y_train, y_test, artifacts_dir):
    y = np.asarray(y_test, dtype=float)
    p = np.clip(np.asarray(y_pred, dtype=float), 1e-6, 1 - 1e-6)
    order = np.argsort(p)
    ranks = np.empty(len(p)); ranks[order] = np.arange(1, len(p) + 1)
    pos = y == 1
    auc = (ranks[pos].sum() - pos.sum() * (pos.sum() + 1) / 2) / max(pos.sum() * (~pos).sum(), 1)
    return {"roc_auc": float(auc), "log_loss": float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))),
            "accuracy": float(np.mean((p >= 0.5) == pos)), "f1": 0.5}
'''


def _verified(workspace, load, evaluate=EVALUATE_REGRESSION, **kwargs):
    domain = make_domain(workspace, **kwargs)
    task = task_of(domain)
    task_tools_import(task=task, load_data=load, evaluate=evaluate)
    run = task_verify(task=task)
    assert run.ok, run.errors
    return task_of(domain)


def _checks(task):
    return {(f["check"], f["severity"]) for f in task.audit}


def test_an_honest_task_has_no_severe_finding_and_freezes(workspace):
    task = _verified(workspace, LOAD_REGRESSION)
    # y = 2·x0 + a little noise: worth a warning (R² 0.997 from one column), not a block.
    assert [(f["check"], f["severity"], f["column"]) for f in task.audit if f["severity"] != "info"] == [
        ("feature_alone", "warning", "column 0")], task.audit
    assert task.audit[-1]["check"] == "summary" and "checked 3 column(s)" in task.audit[-1]["detail"]
    task = task_freeze(task=task)
    assert task.is_frozen and task.audit_override == {}


def test_severe_findings_block_freezing_until_an_override_is_recorded(workspace):
    task = _verified(workspace, LOAD_LEAKY)
    checks = _checks(task)
    assert {("target_copy", "severe"), ("duplicates", "severe"), ("id_like", "warning")} <= checks, task.audit
    assert ("feature_alone", "severe") not in checks  # column 0 is informative but far from perfect
    dup = next(f for f in task.audit if f["check"] == "duplicates")
    assert dup["rows"] == 30 and "30 of 60 test rows" in dup["detail"]
    with pytest.raises(NotReady, match="leak audit found 2 severe problem"):
        task_freeze(task=task)
    assert not task_of(task.domain).is_frozen
    task = task_freeze(task=task, override_reason="synthetic teaching data", by="ada")
    assert task.is_frozen
    override = task_of(task.domain).audit_override
    assert override["reason"] == "synthetic teaching data" and override["by"] == "ada" and override["at"]
    assert any(f.startswith("target_copy:") for f in override["findings"])


def test_a_near_perfect_proxy_of_a_class_is_severe(workspace):
    task = _verified(workspace, LOAD_PROXY, EVALUATE_BINARY, task_type="binary")
    proxy = [f for f in task.audit if f["check"] == "feature_alone"]
    assert [(f["severity"], f["column"]) for f in proxy] == [("severe", "column 1")], task.audit


def test_the_cli_shows_the_audit_and_needs_the_override_flag(workspace):
    task = _verified(workspace, LOAD_LEAKY, name="leaky")
    out = StringIO()
    call_command("dojo_task", "show", "--domain", "leaky", stdout=out)
    assert "Leak audit" in out.getvalue() and "target_copy" in out.getvalue()
    with pytest.raises(CommandError, match="leak audit found"):
        call_command("dojo_task", "freeze", "--domain", "leaky", stdout=StringIO())
    out = StringIO()
    call_command("dojo_task", "freeze", "--domain", "leaky", "--override-audit", "known and accepted", "--json", stdout=out)
    shown = json.loads(out.getvalue())
    assert shown["frozen"] and shown["audit_override"]["reason"] == "known and accepted"
    assert shown["audit_override"]["by"].startswith("cli")
    assert task_of(task.domain).is_frozen


def test_the_api_shows_the_audit_and_takes_the_override(client_logged_in, user, workspace):
    task = _verified(workspace, LOAD_LEAKY)
    base = f"/api/domains/{task.domain.pk}/task"
    shown = client_logged_in.get(base).json()
    assert shown["audit_blocks_freeze"] and any(f["check"] == "target_copy" for f in shown["audit"])
    refused = client_logged_in.post(f"{base}/freeze")
    assert 400 <= refused.status_code < 500 and "leak audit" in refused.json()["detail"]
    bad = client_logged_in.post(f"{base}/freeze", {"override_audit": 3}, content_type="application/json")
    assert bad.status_code == 422 and "override_audit must be a string" in bad.json()["detail"]
    assert client_logged_in.post(f"{base}/freeze", "{", content_type="application/json").status_code == 422
    frozen = client_logged_in.post(f"{base}/freeze", {"override_audit": "accepted"}, content_type="application/json")
    assert frozen.status_code == 200, frozen.content
    assert frozen.json()["audit_override"]["by"] == user.username and frozen.json()["frozen"]


def test_the_task_page_shows_the_audit_and_freezes_with_a_reason(client_logged_in, workspace):
    task = _verified(workspace, LOAD_LEAKY)
    htmx = {"HTTP_HX_REQUEST": "true"}
    url = f"/domains/{task.domain.pk}/task/freeze/"
    panel = client_logged_in.get(f"/domains/{task.domain.pk}/task/", **htmx).content.decode()
    assert 'id="task-audit"' in panel and "target_copy" in panel and 'name="override_audit"' in panel
    body = client_logged_in.post(url, {}, **htmx).content.decode()
    assert "leak audit found" in body and not task_of(task.domain).is_frozen
    body = client_logged_in.post(url, {"override_audit": "on"}, **htmx).content.decode()
    assert "Say why" in body and not task_of(task.domain).is_frozen
    body = client_logged_in.post(url, {"override_audit": "on", "override_reason": "teaching set"}, **htmx).content.decode()
    assert task_of(task.domain).is_frozen and "Audit overridden by ada" in body


def test_a_data_file_copied_from_an_installed_package_is_a_public_source(workspace):
    source = Path(sklearn.__file__).parent / "datasets" / "data" / "wine_data.csv"
    shutil.copyfile(source, workspace / "wine.csv")
    load = '''
import numpy as np


def load_data():
    table = np.loadtxt("wine.csv", delimiter=",", skiprows=1)
    X, y = table[:, :-1], table[:, -1]
    return X[::2], X[1::2], y[::2], y[1::2]
'''
    task = _verified(workspace, load, data_path="wine.csv")
    public = [f for f in task.audit if f["check"] == "public_source"]
    assert len(public) == 1 and public[0]["severity"] == "warning", task.audit
    assert str(source.resolve()) in public[0]["hide"] and "wine.csv" in public[0]["detail"]
    task = task_freeze(task=task)
    assert str(source.resolve()) in task.snapshot_info["public_source_paths"]


def test_a_scikit_learn_loader_is_a_public_source(workspace):
    domain = make_domain(workspace, name="diab", data_path="sklearn:load_diabetes")
    call_command("dojo_task", "setup", "--domain", "diab", stdout=StringIO())
    task = task_of(domain)
    public = [f for f in task.audit if f["check"] == "public_source"]
    assert public and public[0]["severity"] == "warning" and "load_diabetes" in public[0]["detail"]
    assert any(p.endswith("sklearn/datasets/data") for p in public[0]["hide"])
    assert not [f for f in task.audit if f["severity"] == "severe"], task.audit


def test_a_date_column_is_not_taken_for_an_id(workspace):
    load = '''
import numpy as np
import pandas as pd


def load_data():
    n = 80
    rng = np.random.default_rng(0)
    X = pd.DataFrame({"day": pd.date_range("2024-01-01", periods=n), "x": rng.normal(size=n),
                      "customer_id": np.arange(n)})
    y = X["x"].to_numpy() + rng.normal(size=n)
    return X.iloc[:60], X.iloc[60:], y[:60], y[60:]
'''
    task = _verified(workspace, load)
    assert [(f["check"], f["column"]) for f in task.audit if f["severity"] != "info"] == [("id_like", "customer_id")], task.audit

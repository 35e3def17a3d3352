"""Fixtures for agent-run tests: a frozen domain (built once per session through the real
pipeline, then cloned per test), a scripted backend, and run helpers."""

import shutil
from pathlib import Path

import pytest
from django.db import transaction
from django.forms.models import model_to_dict
from django.test import override_settings

from agentrun.backends import BACKENDS
from domains.models import Domain, Task, TaskTool
from tests.agentrun import scripted_backend

PROGRAM = "# Program: diabetes\n\n## Goal\nPredict disease progression; beat the linear baseline.\n"


class _Rollback(Exception):
    pass


@pytest.fixture(scope="session")
def frozen_template(tmp_path_factory, django_db_setup, django_db_blocker):
    """One real domain_create + task_setup (template generation, verification in the sandbox,
    freeze with its snapshot) on scikit-learn's diabetes; its rows are captured and rolled back."""
    from domains.services import domain_create, task_setup

    home = tmp_path_factory.mktemp("frozen-home")
    workspace = tmp_path_factory.mktemp("frozen-workspace")
    captured: dict = {}
    with django_db_blocker.unblock(), override_settings(DOJO_HOME=home):
        try:
            with transaction.atomic():
                domain = domain_create(
                    name="template", task_type="regression", workspace=workspace, data_path="sklearn:load_diabetes"
                )
                task = task_setup(task=domain.task)
                captured["task"] = model_to_dict(task, exclude=["id", "domain"])
                captured["tools"] = [model_to_dict(t, exclude=["id", "task"]) for t in task.tools.all()]
                captured["snapshot"] = Path(task.snapshot_path)
                raise _Rollback
        except _Rollback:
            pass
    return captured


def frozen_domain_make(template: dict, *, name: str, workspace: Path, home: Path) -> Domain:
    """A frozen domain like the template's, with its own snapshot copy under this test's DOJO_HOME."""
    (workspace / "PROGRAM.md").write_text(PROGRAM)
    (workspace / "SETUP.md").write_text("# Setup\nscikit-learn's diabetes.\n")
    domain = Domain.objects.create(
        name=name,
        workspace_path=str(workspace),
        program_path=str(workspace / "PROGRAM.md"),
        setup_path=str(workspace / "SETUP.md"),
    )
    snapshot = home / "snapshots" / f"{name}-{template['snapshot'].name}"
    shutil.copytree(template["snapshot"], snapshot)
    task = Task.objects.create(domain=domain, **{**template["task"], "snapshot_path": str(snapshot)})
    for tool in template["tools"]:
        TaskTool.objects.create(task=task, **tool)
    return Domain.objects.select_related("task").get(pk=domain.pk)


@pytest.fixture
def frozen_domain(frozen_template, workspace, dojo_home, transactional_db) -> Domain:
    return frozen_domain_make(frozen_template, name="diabetes", workspace=workspace, home=dojo_home)


@pytest.fixture
def other_frozen_domain(frozen_template, tmp_path, dojo_home, transactional_db) -> Domain:
    other = tmp_path / "other-workspace"
    other.mkdir()
    return frozen_domain_make(frozen_template, name="other", workspace=other, home=dojo_home)


@pytest.fixture
def scripted(monkeypatch):
    """The scripted backend under the name "scripted"; call with steps (and findings) to set its script."""
    monkeypatch.setitem(BACKENDS, "scripted", "tests.agentrun.scripted_backend")

    def set_script(steps: list[dict], findings: list[dict] | None = None) -> None:
        monkeypatch.setattr(scripted_backend, "SCRIPT", steps)
        monkeypatch.setattr(scripted_backend, "FINDINGS", findings or [])

    return set_script


GOOD_TRAIN = """
from sklearn.linear_model import Ridge

def train(X_train, y_train, X_test, *, artifacts_dir):
    return Ridge(alpha=1.0).fit(X_train, y_train).predict(X_test)
"""

MEAN_TRAIN = """
import numpy as np

def train(X_train, y_train, X_test, *, artifacts_dir):
    return np.full(len(X_test), float(np.mean(y_train)))
"""

SLOW_TRAIN = """
import time

def train(X_train, y_train, X_test, *, artifacts_dir):
    print("training started", flush=True)
    time.sleep(60)
    return [0.0] * len(X_test)
"""


@pytest.fixture
def frozen_domain_in_transaction(frozen_template, workspace, dojo_home, db) -> Domain:
    """The same, inside the test's transaction (for on_commit assertions); no threads may use it."""
    return frozen_domain_make(frozen_template, name="diabetes", workspace=workspace, home=dojo_home)

"""Issue 13 item 2: a git workspace cloned per worker at the commit recorded on the domain, where the
workspace folder is missing (a local bare repository made in each test is the remote)."""

import os
from pathlib import Path

import pytest
from sklearn.datasets import load_diabetes

from dojo_site.errors import NotReady
from domains import snapshot_share
from domains.models import Domain
from domains.services import domain_create, task_freeze, task_tools_import, task_verify
from domains.workspaces import git_head
from experiments.harness import pool
from experiments.models import Experiment
from experiments.services import experiment_run
from tests.domains.test_git_workspaces import Origin, _git
from tests.experiments.test_snapshot_share import (
    EVALUATE_WITH_MODULE,
    HELPERS_DATA,
    HELPERS_SCORING,
    LOAD_FROM_CSV,
    _other_machine,
)

pytestmark = pytest.mark.django_db

# A module of the repository that no frozen tool imports: not in the workspace bundle.
FEATURES = '''
import numpy as np

def centre(y):
    return float(np.mean(y))
'''

TRAIN_WITH_MODULE = """
import numpy as np
from features import centre   # a repository module outside the contract

def train(X_train, y_train, X_test, *, artifacts_dir):
    return np.full(len(X_test), centre(y_train))
"""

PROBE = """
import numpy as np

def train(X_train, y_train, X_test, *, artifacts_dir):
    for path in ("data.csv", ".git/HEAD", ".git/config"):
        try:
            with open(path, "rb") as handle:
                print(path, "READ" if handle.read(1) else "EMPTY")
        except OSError as exc:
            print(path, "DENIED", exc.errno)
    return np.zeros(len(X_test))
"""


@pytest.fixture(autouse=True)
def _fresh_pool():
    yield
    pool.pool_stop_all()


@pytest.fixture
def origin(tmp_path):
    (tmp_path / "remote").mkdir()
    return Origin(tmp_path / "remote")


def _repo_files() -> dict[str, str]:
    return {"helpers/__init__.py": "", "helpers/data.py": HELPERS_DATA, "helpers/scoring.py": HELPERS_SCORING,
            "features.py": FEATURES, "data.csv": load_diabetes(as_frame=True).frame.to_csv(index=False)}


def _frozen_git_domain(origin: Origin, name: str) -> Domain:
    """A git-workspace domain frozen on "machine A" (the test's DOJO_HOME)."""
    domain = domain_create(name=name, task_type="regression", workspace="", git_url=origin.url, git_ref="main",
                           data_path="data.csv", target_column="target")
    task_tools_import(task=domain.task, load_data=LOAD_FROM_CSV, evaluate=EVALUATE_WITH_MODULE)
    assert task_verify(task=domain.task).ok
    task_freeze(task=domain.task)
    domain.refresh_from_db()
    return domain


def _machine_b(settings, tmp_path, domain: Domain) -> Path:
    """A machine with fresh DOJO_HOME and DOJO_CACHE_DIR: neither the snapshot folder nor the workspace
    folder of machine A is here (both moved away); the shared storage and the remote are."""
    cache = _other_machine(settings, tmp_path, domain.task)
    os.rename(domain.workspace_path, tmp_path / "workspace-elsewhere")
    return cache


def test_a_worker_without_the_workspace_clones_it_at_the_recorded_commit(
        origin, dojo_home, settings, tmp_path, monkeypatch):
    commit = origin.commit(_repo_files(), "first")
    domain = _frozen_git_domain(origin, "gitrun")
    assert domain.git_commit == commit
    here = experiment_run(domain=domain, train_code=TRAIN_WITH_MODULE)
    assert here.state == "completed", here.error

    cache = _machine_b(settings, tmp_path, domain)
    clones = []
    real_clone = snapshot_share.git_clone
    monkeypatch.setattr(snapshot_share, "git_clone", lambda **kw: clones.append(kw) or real_clone(**kw))
    there = experiment_run(domain=domain, train_code=TRAIN_WITH_MODULE)
    assert there.state == "completed", there.error
    assert there.metrics == here.metrics and there.holdout_metrics == here.holdout_metrics
    assert there.provenance["git_commit"] == commit

    local = cache / "workspaces" / f"{domain.pk}-{commit}"
    assert git_head(local) == commit and (local / "features.py").is_file()
    assert [c["target"].parent for c in clones] == [local.parent] and clones[0]["ref"] == commit
    assert not list((cache / "workspaces").glob("*.partial"))

    # The second experiment reuses the clone: no second clone.
    again = experiment_run(domain=domain, train_code=TRAIN_WITH_MODULE)
    assert again.state == "completed" and again.metrics == here.metrics
    assert len(clones) == 1

    # The raw data file checked out in the clone and the clone's history stay hidden from train().
    probe = experiment_run(domain=domain, train_code=PROBE)
    assert probe.state == "completed", probe.error
    assert "READ" not in probe.stdout_tail, probe.stdout_tail
    assert probe.stdout_tail.count("DENIED") + probe.stdout_tail.count("EMPTY") == 3
    assert len(clones) == 1


def test_a_recorded_commit_gone_from_the_remote_is_refused_and_nothing_runs(origin, dojo_home, settings, tmp_path):
    first = origin.commit(_repo_files(), "first")
    recorded = origin.commit({"notes.md": "to be rewritten\n"}, "second")
    domain = _frozen_git_domain(origin, "gone")
    assert domain.git_commit == recorded
    # The branch is rewritten and the old commit pruned from the remote.
    _git("push", "--quiet", "--force", "origin", f"{first}:refs/heads/main", cwd=origin.work)
    _git("reflog", "expire", "--expire=now", "--all", cwd=Path(origin.url))
    _git("gc", "--quiet", "--prune=now", cwd=Path(origin.url))

    cache = _machine_b(settings, tmp_path, domain)
    with pytest.raises(NotReady, match=f"cannot be cloned at its recorded commit {recorded[:12]}.*does not exist"):
        experiment_run(domain=domain, train_code=TRAIN_WITH_MODULE)
    assert not Experiment.objects.exists()
    assert not list((cache / "workspaces").iterdir())  # no clone, nothing half-cloned


def test_a_commit_whose_contract_files_drifted_is_refused(origin, dojo_home, settings, tmp_path):
    origin.commit(_repo_files(), "first")
    domain = _frozen_git_domain(origin, "drift")
    changed = origin.commit({"helpers/scoring.py": HELPERS_SCORING.replace("0.5", "0.9")}, "scoring changed")
    # Recorded without the folder moving (as a sync on another machine would record it).
    Domain.objects.filter(pk=domain.pk).update(git_commit=changed)
    domain.refresh_from_db()

    _machine_b(settings, tmp_path, domain)
    with pytest.raises(NotReady, match=f"helpers/scoring.py at the domain's git commit {changed[:12]}.*drifted"):
        experiment_run(domain=domain, train_code=TRAIN_WITH_MODULE)
    assert not Experiment.objects.exists()

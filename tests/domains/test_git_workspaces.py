"""Issue 11 item 2: domains from git repositories (a local bare repository made in each test)."""

import json
import subprocess
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from django.urls import reverse

from dojo_site.errors import NotReady
from domains.models import Domain
from domains.services import task_freeze, task_tools_import, task_verify
from experiments.harness import pool
from experiments.services import experiment_run

pytestmark = pytest.mark.django_db


def _git(*args, cwd):
    return subprocess.run(
        ["git", "-c", "user.name=T", "-c", "user.email=t@example.org", *args], cwd=cwd, check=True,
        capture_output=True, text=True,
    ).stdout.strip()


class Origin:
    """A bare repository at `url` and a working copy `work` that pushes to it."""

    def __init__(self, root: Path) -> None:
        self.url = str(root / "origin.git")
        self.work = root / "work"
        _git("init", "--quiet", "--bare", "--initial-branch=main", self.url, cwd=root)
        _git("clone", "--quiet", self.url, str(self.work), cwd=root)

    def commit(self, files: dict[str, str], message: str = "change", branch: str = "main") -> str:
        for rel, text in files.items():
            path = self.work / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        _git("add", "-A", cwd=self.work)
        _git("commit", "--quiet", "-m", message, cwd=self.work)
        _git("push", "--quiet", "origin", f"HEAD:{branch}", cwd=self.work)
        return _git("rev-parse", "HEAD", cwd=self.work)


@pytest.fixture
def origin(tmp_path):
    return Origin(tmp_path)


def _call(*args):
    out = StringIO()
    call_command(*args, stdout=out, stderr=StringIO())
    return out.getvalue()


def test_it_clones_a_repository_at_a_ref_and_records_the_commit(origin, dojo_home):
    first = origin.commit({"mypipe/__init__.py": "", "README.md": "one\n"}, "first")
    _git("tag", "v1", cwd=origin.work)
    _git("push", "--quiet", "origin", "v1", cwd=origin.work)
    origin.commit({"README.md": "two\n"}, "second")

    out = _call("dojo_init", "--name", "repo", "--task-type", "regression", "--git-url", origin.url,
                "--git-ref", "v1", "--non-interactive")

    domain = Domain.objects.get(name="repo")
    assert Path(domain.workspace_path) == dojo_home / "workspaces" / "repo"
    assert (domain.workspace / "README.md").read_text() == "one\n"
    assert (domain.workspace / "SETUP.md").exists()
    assert (domain.git_url, domain.git_ref, domain.git_commit) == (origin.url, "v1", first)
    assert first[:12] in out


def test_it_fails_loudly_on_a_missing_ref_and_leaves_nothing(origin, dojo_home):
    origin.commit({"a.py": "A = 1\n"})
    with pytest.raises(CommandError, match="git ref 'no-such-branch' does not exist"):
        _call("dojo_init", "--name", "repo", "--task-type", "regression", "--git-url", origin.url,
              "--git-ref", "no-such-branch", "--non-interactive")
    assert not Domain.objects.exists()
    assert not (dojo_home / "workspaces" / "repo").exists()


@pytest.mark.parametrize("url, message", [
    ("ext::sh -c touch% /tmp/dojo-pwned", "no spaces"),
    ("ext::true", "is not accepted"),
    ("--upload-pack=touch /tmp/dojo-pwned", "may not start with '-'"),
    ("file:///etc", "is not accepted"),
    ("http://example.org/repo.git", "is not accepted"),
    ("relative/path", "absolute path"),
    ("/no/such/repository", "no git repository"),
])
def test_it_refuses_unsafe_or_unknown_urls(url, message, dojo_home):
    with pytest.raises(CommandError, match=message):
        _call("dojo_init", "--name", "repo", "--task-type", "regression", "--git-url", url, "--non-interactive")
    assert not Domain.objects.exists()
    assert not Path("/tmp/dojo-pwned").exists()


def test_it_refuses_an_option_as_a_ref(origin):
    origin.commit({"a.py": "A = 1\n"})
    with pytest.raises(CommandError, match="invalid git ref"):
        _call("dojo_init", "--name", "repo", "--task-type", "regression", "--git-url", origin.url,
              "--git-ref=--orphan", "--non-interactive")
    assert not Domain.objects.exists()


def test_the_api_and_the_form_clone_too(origin, client_logged_in):
    commit = origin.commit({"a.py": "A = 1\n"})
    response = client_logged_in.post(
        "/api/domains", {"name": "api-repo", "task_type": "regression", "git_url": origin.url},
        content_type="application/json",
    )
    assert response.status_code == 201, response.content
    assert response.json()["git_commit"] == commit

    bad = client_logged_in.post(
        "/api/domains", {"name": "bad", "task_type": "regression", "git_url": origin.url, "git_ref": "nope"},
        content_type="application/json",
    )
    assert bad.status_code == 422 and "does not exist" in bad.json()["detail"]

    form = {"name": "web-repo", "task_type": "regression", "workspace": "", "git_url": origin.url,
            "git_ref": "main", "data_path": "", "target_column": "", "id_columns": "", "metric": "",
            "description": ""}
    response = client_logged_in.post(reverse("domains:new"), form)
    assert response.status_code == 302
    assert Domain.objects.get(name="web-repo").git_commit == commit
    response = client_logged_in.post(reverse("domains:new"), form | {"name": "both", "workspace": "/tmp"})
    assert "not both" in response.content.decode()
    assert not Domain.objects.filter(name="both").exists()


LOAD = '''
from helpers.data import make

def load_data():
    return make()
'''
DATA = '''
import numpy as np

def make(scale=1.0):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 3))
    y = scale * 2 * X[:, 0] + rng.normal(size=60) * 0.1
    return X[:48], X[48:], y[:48], y[48:]
'''
EVALUATE = '''
import numpy as np

def evaluate(y_pred, *, X_train, X_test, y_train, y_test, artifacts_dir):
    err = np.asarray(y_pred, dtype=float) - np.asarray(y_test, dtype=float)
    return {"rmse": float(np.sqrt((err ** 2).mean())), "mae": float(np.abs(err).mean()), "r2": 0.0}
'''
TRAIN = """
import numpy as np

def train(X_train, y_train, X_test, *, artifacts_dir):
    return np.full(len(X_test), float(np.mean(y_train)))
"""


def test_sync_moves_to_a_new_commit_and_a_contract_change_stops_experiments(origin, client_logged_in, user):
    first = origin.commit({"helpers/__init__.py": "", "helpers/data.py": DATA, "notes.md": "x\n"})
    _call("dojo_init", "--name", "repo", "--task-type", "regression", "--git-url", origin.url,
          "--git-ref", "main", "--non-interactive")
    domain = Domain.objects.get(name="repo")
    task_tools_import(task=domain.task, load_data=LOAD, evaluate=EVALUATE)
    assert task_verify(task=domain.task).ok
    task_freeze(task=domain.task)
    try:
        exp = experiment_run(domain=domain, train_code=TRAIN)
        assert exp.state == "completed", exp.error
        assert exp.provenance["git_commit"] == first and exp.provenance["git_url"] == origin.url

        # A commit that leaves the contract's files alone: experiments go on, with the new commit.
        second = origin.commit({"notes.md": "y\n"})
        out = _call("dojo_domain", "sync", "--domain", "repo")
        assert f"{first[:12]} -> {second[:12]}" in out and "frozen contract" not in out
        domain.refresh_from_db()
        assert domain.git_commit == second
        assert experiment_run(domain=domain, train_code=TRAIN).provenance["git_commit"] == second

        # A commit on another branch that changes a module load_data imports: a contract change.
        third = origin.commit({"helpers/data.py": DATA.replace("scale=1.0", "scale=3.0")}, branch="v2")
        Domain.objects.filter(pk=domain.pk).update(owner=user)
        response = client_logged_in.post(f"/api/domains/{domain.pk}/workspace/sync", {"ref": "v2"},
                                         content_type="application/json")
        assert response.status_code == 200, response.content
        body = response.json()
        assert body["commit"] == third and body["contract_files_changed"] == ["helpers/data.py"]
        domain.refresh_from_db()
        with pytest.raises(NotReady, match="helpers/data.py changed after the task was frozen"):
            experiment_run(domain=domain, train_code=TRAIN)

        # The domain page's panel syncs too (owner), and says when the contract changed.
        hx = {"HTTP_HX_REQUEST": "true"}
        back = client_logged_in.post(f"/domains/{domain.pk}/workspace/sync/", {"ref": "main"}, **hx).content.decode()
        assert f"Checked out {second[:12]}" in back and "helpers/data.py" not in back  # the contract holds again
        assert experiment_run(domain=domain, train_code=TRAIN).state == "completed"
        forward = client_logged_in.post(f"/domains/{domain.pk}/workspace/sync/", {"ref": "v2"}, **hx).content.decode()
        assert f"Checked out {third[:12]}" in forward and "helpers/data.py" in forward

        # A ref that does not exist leaves the checkout where it was.
        with pytest.raises(CommandError, match="does not exist"):
            _call("dojo_domain", "sync", "--domain", "repo", "--ref", "nope")
        domain.refresh_from_db()
        assert domain.git_commit == third and _git("rev-parse", "HEAD", cwd=domain.workspace) == third
        assert json.loads(_call("dojo_domain", "sync", "--domain", "repo", "--json"))["commit"] == third
    finally:
        pool.pool_stop_all()


def test_sync_refuses_a_local_workspace(workspace):
    _call("dojo_init", "--name", "local", "--task-type", "regression", "--workspace", str(workspace),
          "--non-interactive")
    with pytest.raises(CommandError, match="has no git URL"):
        _call("dojo_domain", "sync", "--domain", "local")

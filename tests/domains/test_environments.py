"""Issue 11 item 3: per-domain environments, built offline from a tiny wheel made in the test."""

import base64
import hashlib
import json
import zipfile
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from django_q.conf import Conf

from domains.models import Domain
from experiments.harness import pool
from experiments.services import experiment_run
from tests.factories import frozen_domain

pytestmark = pytest.mark.django_db


def _wheel(folder: Path, name: str, version: str) -> Path:
    """A pure-Python wheel holding `name/__init__.py` with VERSION = version."""
    dist = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": f"VERSION = {version!r}\n",
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(text.encode())}")
    record.append(f"{dist}/RECORD,,")
    files[f"{dist}/RECORD"] = "\n".join(record) + "\n"
    target = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(target, "w") as zf:
        for path, text in files.items():
            zf.writestr(path, text)
    return target


@pytest.fixture
def wheels(tmp_path, settings):
    folder = tmp_path / "wheels"
    folder.mkdir()
    _wheel(folder, "tinypkg", "1.0")
    _wheel(folder, "tinypkg", "2.0")
    settings.DOJO_PIP_ARGS = f"--no-index --find-links {folder}"
    return folder


def _call(*args):
    out = StringIO()
    call_command(*args, stdout=out, stderr=StringIO())
    return out.getvalue()


TRAIN = """
import sys
import numpy as np
import tinypkg

def train(X_train, y_train, X_test, *, artifacts_dir):
    print("TINY", tinypkg.VERSION, "PREFIX", sys.prefix)
    return np.full(len(X_test), float(np.mean(y_train)))
"""


def test_setup_builds_a_locked_env_the_trainer_runs_in(wheels, tmp_path, dojo_home):
    workspace = tmp_path / "repo"
    workspace.mkdir()
    (workspace / "requirements.txt").write_text("tinypkg==1.0\n")
    domain = frozen_domain(workspace=workspace, loader="load_diabetes", name="envs")
    try:
        out = _call("dojo_domain", "setup", "--domain", "envs")
        domain.refresh_from_db()
        assert "Environment ready" in out and "tinypkg" in out  # the pip log is streamed
        assert Path(domain.env_python).is_relative_to(dojo_home / "envs")
        assert "tinypkg==1.0" in domain.env_lock.splitlines()
        assert domain.env_state == "ready"
        assert not (workspace / ".venv").exists()  # nothing written into the user's repository

        exp = experiment_run(domain=domain, train_code=TRAIN)
        assert exp.state == "completed", exp.error
        assert f"TINY 1.0 PREFIX {Path(domain.env_python).parent.parent}" in exp.stdout_tail
        assert exp.environment["interpreter"] == domain.env_python
        assert exp.provenance["env_lock_sha256"] == hashlib.sha256(domain.env_lock.encode()).hexdigest()

        # A failing install is a clear error with the log's tail; the previous env stays in use.
        (workspace / "requirements.txt").write_text("tinypkg==9.9\n")
        with pytest.raises(CommandError, match=r"pip install failed[\s\S]*tinypkg==9.9"):
            _call("dojo_domain", "setup", "--domain", "envs")
        before = domain.env_python
        domain.refresh_from_db()
        assert domain.env_state == "failed" and "pip install failed" in domain.env_error
        assert "tinypkg" in domain.env_log
        assert domain.env_python == before and Path(before).exists()
        assert experiment_run(domain=domain, train_code=TRAIN).state == "completed"

        # A new build replaces the old one (which is deleted) and the next experiment uses it.
        (workspace / "requirements.txt").write_text("tinypkg==2.0\n")
        _call("dojo_domain", "setup", "--domain", "envs")
        domain.refresh_from_db()
        assert domain.env_python != before and not Path(before).exists()
        assert "TINY 2.0" in experiment_run(domain=domain, train_code=TRAIN).stdout_tail
    finally:
        pool.pool_stop_all()


def test_pyproject_dependencies_are_installed_and_nothing_to_do_is_an_error(wheels, workspace):
    _call("dojo_init", "--name", "pp", "--task-type", "regression", "--workspace", str(workspace), "--non-interactive")
    with pytest.raises(CommandError, match="nothing to set up"):
        _call("dojo_domain", "setup", "--domain", "pp")
    (workspace / "pyproject.toml").write_text('[project]\nname = "mine"\nversion = "0"\ndependencies = ["tinypkg>=2"]\n')
    _call("dojo_domain", "setup", "--domain", "pp")
    assert "tinypkg==2.0" in Domain.objects.get(name="pp").env_lock


def test_setup_script_runs_only_when_the_owner_asks(wheels, workspace, client_logged_in, user, django_user_model,
                                                    monkeypatch, django_capture_on_commit_callbacks):
    from django.test import Client

    monkeypatch.setattr(Conf, "SYNC", True)  # the queued build runs inline, as a worker would
    (workspace / "requirements.txt").write_text("tinypkg==1.0\n")
    (workspace / "setup.sh").write_text('echo "from setup.sh" > made-by-setup.txt\necho "VENV=$VIRTUAL_ENV"\n')
    response = client_logged_in.post(
        "/api/domains", {"name": "api-env", "task_type": "regression", "workspace": str(workspace)},
        content_type="application/json",
    )
    domain_id = response.json()["id"]

    # Someone who is not the owner may not set up the environment or run the script.
    other = django_user_model.objects.create_user(username="bob", password="pw-for-tests-only")
    client = Client()
    client.force_login(other)
    assert client.post(f"/api/domains/{domain_id}/workspace/setup", {"run_setup_script": True},
                       content_type="application/json").status_code in (403, 404)

    with django_capture_on_commit_callbacks(execute=True):
        response = client_logged_in.post(f"/api/domains/{domain_id}/workspace/setup", {},
                                         content_type="application/json")
    assert response.status_code == 202 and response.json()["environment"]["state"] == "building"
    status = client_logged_in.get(f"/api/domains/{domain_id}/workspace").json()
    assert status["environment"]["state"] == "ready" and status["environment"]["ready"]
    assert "tinypkg" in status["environment"]["log"]
    assert status["interpreter"]["source"] == "environment" and status["interpreter"]["version"].startswith("3.")
    assert not (workspace / "made-by-setup.txt").exists()

    with django_capture_on_commit_callbacks(execute=True):
        client_logged_in.post(f"/api/domains/{domain_id}/workspace/setup", {"run_setup_script": True},
                              content_type="application/json")
    assert (workspace / "made-by-setup.txt").read_text() == "from setup.sh\n"
    env = Domain.objects.get(pk=domain_id)
    assert f"VENV={Path(env.env_python).parent.parent}" in env.env_log

    # A failing script fails the build with its output; the environment before it stays.
    (workspace / "setup.sh").write_text("echo broken on purpose\nexit 3\n")
    with django_capture_on_commit_callbacks(execute=True):
        client_logged_in.post(f"/api/domains/{domain_id}/workspace/setup", {"run_setup_script": True},
                              content_type="application/json")
    status = client_logged_in.get(f"/api/domains/{domain_id}/workspace").json()
    assert status["environment"]["state"] == "failed"
    assert "setup.sh failed (exit code 3)" in status["environment"]["error"]
    assert "broken on purpose" in status["environment"]["log"]
    assert status["environment"]["python"] == env.env_python


def test_the_domain_page_polls_the_build_log_and_a_second_build_waits(wheels, workspace, client_logged_in, user,
                                                                      django_capture_on_commit_callbacks):
    from domains.services import domain_create
    from domains.workspaces import env_root

    (workspace / "requirements.txt").write_text("tinypkg==9.9\n")
    domain = domain_create(name="poll", task_type="regression", workspace=workspace, owner=user)
    with django_capture_on_commit_callbacks(execute=False) as queued:  # no worker picks it up
        response = client_logged_in.post(f"/api/domains/{domain.pk}/workspace/setup", {},
                                         content_type="application/json")
    assert response.status_code == 202 and len(queued) == 1
    env_root(domain.pk).mkdir(parents=True)
    (env_root(domain.pk) / "build.log").write_text("Collecting tinypkg (from the log file)\n")

    hx = {"HTTP_HX_REQUEST": "true"}
    panel = client_logged_in.get(f"/domains/{domain.pk}/workspace/", **hx).content.decode()
    assert 'hx-trigger="every 2s"' in panel and "Collecting tinypkg (from the log file)" in panel
    assert client_logged_in.get(f"/api/domains/{domain.pk}/workspace").json()["environment"]["log"].startswith("Collecting")

    again = client_logged_in.post(f"/api/domains/{domain.pk}/workspace/setup", {}, content_type="application/json")
    assert again.status_code == 409 and "already running" in again.json()["detail"]
    with pytest.raises(CommandError, match="--force"):
        _call("dojo_domain", "setup", "--domain", "poll")

    with pytest.raises(CommandError, match="pip install failed"):
        _call("dojo_domain", "setup", "--domain", "poll", "--force")
    panel = client_logged_in.get(f"/domains/{domain.pk}/workspace/", **hx).content.decode()
    assert "every 2s" not in panel and "Last build failed: pip install failed" in panel
    assert "tinypkg==9.9" in panel  # pip's own words, from the log's tail
    assert not list(env_root(domain.pk).glob("*/bin/python"))  # the failed build left nothing


def test_a_repository_with_its_own_venv_keeps_it(workspace):
    import subprocess
    import sys
    import sysconfig

    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(workspace / ".venv")], check=True)
    site = subprocess.run([str(workspace / ".venv" / "bin" / "python"), "-c",
                           "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    # The user's venv reaches numpy the way theirs would have it installed (here: Dojo's packages).
    Path(site, "deps.pth").write_text(str(Path(sysconfig.get_paths()["purelib"]).resolve()) + "\n")
    _call("dojo_init", "--name", "own-venv", "--task-type", "regression", "--workspace", str(workspace),
          "--non-interactive")
    out = _call("dojo_domain", "setup", "--domain", "own-venv")
    domain = Domain.objects.get(name="own-venv")
    assert "repository's own environment" in out
    assert domain.env_python == str(workspace / ".venv" / "bin" / "python")
    assert any(line.startswith("numpy==") for line in domain.env_lock.splitlines())
    status = json.loads(_call("dojo_domain", "status", "--domain", "own-venv", "--json"))
    assert status["interpreter"]["source"] == "environment" and status["environment"]["declared"]["venv"]

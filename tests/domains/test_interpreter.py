"""A workspace interpreter must answer like Python when run with -c inside the sandbox before it is
accepted (API, web form, admin, service); each change of the interpreter, the workspace or the env
vars is kept in the domain's history."""

import json
import os
import sys

import pytest
from django.urls import reverse

from dojo_site.errors import InvalidInput
from domains.models import DomainChange
from domains.sandbox import bwrap_works
from domains.services import domain_create, domain_update, workspace_python_check

pytestmark = pytest.mark.django_db

# How domain_update stores sys.executable: its folder without symlinks (a worktree's .venv may be one).
PYTHON = os.path.join(os.path.realpath(os.path.dirname(sys.executable)), os.path.basename(sys.executable))


@pytest.fixture
def domain(workspace, user):
    return domain_create(name="houses", task_type="regression", workspace=workspace, owner=user)


def _script(folder, name: str, body: str):
    path = folder / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return path


def _patch(client, domain, body: dict):
    return client.patch(f"/api/domains/{domain.pk}", json.dumps(body), content_type="application/json")


def test_it_accepts_a_real_interpreter_and_records_the_change(client_logged_in, domain, user):
    response = _patch(client_logged_in, domain, {"workspace_python": sys.executable})
    assert response.status_code == 200, response.content
    assert response.json()["workspace_python"] == PYTHON
    change = DomainChange.objects.get(domain=domain)
    assert (change.field, change.old_value, change.new_value, change.user) == ("workspace_python", "", PYTHON, user)
    history = client_logged_in.get(f"/api/domains/{domain.pk}/history").json()
    assert [(h["field"], h["new_value"], h["user"]) for h in history] == [("workspace_python", PYTHON, "ada")]


def test_it_refuses_a_program_that_only_prints_a_version(client_logged_in, domain, tmp_path):
    """The attack from the issue: an executable that speaks the protocols but is no Python."""
    fake = _script(tmp_path, "python3", 'echo "3.11.7"\necho 42\n')
    response = _patch(client_logged_in, domain, {"workspace_python": str(fake)})
    assert response.status_code == 422
    assert "is not a Python 3 interpreter" in response.json()["detail"]
    domain.refresh_from_db()
    assert domain.workspace_python == ""
    assert not DomainChange.objects.exists()


@pytest.mark.parametrize("make", [
    lambda tmp: tmp / "missing-python",
    lambda tmp: (tmp / "plain.txt").write_text("x") and tmp / "plain.txt",
    lambda tmp: _script(tmp, "failing", "exit 3\n"),
    lambda tmp: _script(tmp, "python2ish", 'echo "2.7.18"\n'),
])
def test_it_refuses_what_is_not_an_interpreter(domain, tmp_path, make):
    with pytest.raises(InvalidInput):
        domain_update(domain=domain, workspace_python=str(make(tmp_path)))
    domain.refresh_from_db()
    assert domain.workspace_python == ""


def test_it_refuses_a_relative_path(domain):
    with pytest.raises(InvalidInput, match="absolute"):
        workspace_python_check(python="python3", workspace=domain.workspace_path)


@pytest.mark.skipif(not bwrap_works(), reason="needs bubblewrap to tell the sandbox from the host")
@pytest.mark.skipif(not os.path.exists("/usr/bin/python3"), reason="needs a system python3 the sandbox can see")
def test_it_runs_the_check_inside_the_sandbox(domain):
    """A wrapper that leaves a mark where it runs: inside bwrap its folder is read-only (or private),
    so the host never sees the mark. (Readable by the sandbox user, as any workspace interpreter must be.)"""
    import shutil
    import tempfile
    from pathlib import Path

    folder = Path(tempfile.mkdtemp(prefix="dojo-interp-", dir="/var/tmp"))
    try:
        folder.chmod(0o755)
        mark = folder / "ran-on-host"
        wrapper = _script(folder, "python-wrapper", f'touch {mark} 2>/dev/null\nexec /usr/bin/python3 "$@"\n')
        assert workspace_python_check(python=str(wrapper), workspace=domain.workspace_path).startswith("3.")
        assert not mark.exists()
        # The same wrapper run on the host leaves the mark: the test can tell the two apart.
        import subprocess

        subprocess.run([str(wrapper), "-c", "pass"], check=True)
        assert mark.exists()
    finally:
        shutil.rmtree(folder)


def test_it_lets_only_the_owner_change_the_interpreter(client, domain, other_user):
    from domains.models import DomainMember

    DomainMember.objects.create(domain=domain, user=other_user, role="editor")
    client.force_login(other_user)
    response = _patch(client, domain, {"workspace_python": sys.executable})
    assert response.status_code == 403
    domain.refresh_from_db()
    assert domain.workspace_python == ""


def test_it_records_env_var_and_workspace_changes_with_who_made_them(domain, tmp_path, user, workspace):
    domain_update(domain=domain, env_vars={"SEED": "1"}, user=user)
    domain_update(domain=domain, env_vars={"SEED": "1"}, user=user)  # unchanged: nothing recorded
    moved = tmp_path / "moved"
    moved.mkdir()
    domain_update(domain=domain, workspace=moved)  # a management command: no user
    rows = list(DomainChange.objects.order_by("pk").values_list("field", "old_value", "new_value", "user__username"))
    assert rows == [
        ("env_vars", "{}", '{"SEED": "1"}', "ada"),
        ("workspace_path", str(workspace), str(moved), None),
    ]


def test_it_sets_the_interpreter_from_the_domain_page(client_logged_in, domain, tmp_path):
    url = reverse("domains:settings", args=[domain.pk])
    fake = _script(tmp_path, "python3", 'echo "3.12.0"\n')
    refused = client_logged_in.post(url, {"workspace_python": str(fake), "env_vars": ""})
    assert refused.status_code == 422
    assert "is not a Python 3 interpreter" in refused.content.decode()
    saved = client_logged_in.post(url, {"workspace_python": sys.executable, "env_vars": "A=1\nB=two", "hide_holdout_from_viewers": "on"})
    assert saved.status_code == 302
    domain.refresh_from_db()
    assert (domain.workspace_python, domain.env_vars, domain.hide_holdout_from_viewers) == (PYTHON, {"A": "1", "B": "two"}, True)
    page = client_logged_in.get(reverse("domains:detail", args=[domain.pk]) + "?tab=settings").content.decode()
    assert 'id="history"' in page and PYTHON in page and "env_vars" in page


def test_it_sets_the_interpreter_in_the_admin(client, domain, tmp_path, django_user_model):
    admin = django_user_model.objects.create_superuser(username="root-admin", password="pw")
    client.force_login(admin)
    url = reverse("admin:domains_domain_change", args=[domain.pk])
    form = {
        "name": domain.name, "description": "", "status": "active", "owner": domain.owner_id or "",
        "workspace_python": "", "env_vars": "{}", "git_url": "", "git_ref": "",
        "members-TOTAL_FORMS": "0", "members-INITIAL_FORMS": "0",
        "changes-TOTAL_FORMS": "0", "changes-INITIAL_FORMS": "0",
    }
    fake = _script(tmp_path, "python3", 'echo "3.12.0"\n')
    refused = client.post(url, {**form, "workspace_python": str(fake)})
    assert refused.status_code == 200 and "is not a Python 3 interpreter" in refused.content.decode()
    domain.refresh_from_db()
    assert domain.workspace_python == ""
    saved = client.post(url, {**form, "workspace_python": sys.executable})
    assert saved.status_code == 302, saved.content.decode()[:3000]
    domain.refresh_from_db()
    assert domain.workspace_python == PYTHON
    assert DomainChange.objects.get(domain=domain, field="workspace_python").user == admin


def test_it_sets_the_interpreter_env_and_owner_from_the_command_line(domain, tmp_path, other_user):
    from django.core.management import CommandError, call_command

    fake = _script(tmp_path, "python3", 'echo "3.12.0"\n')
    with pytest.raises(CommandError, match="is not a Python 3 interpreter"):
        call_command("dojo_domain", "set", "--domain", domain.name, "--python", str(fake))
    with pytest.raises(CommandError, match="NAME=VALUE"):
        call_command("dojo_domain", "set", "--domain", domain.name, "--env", "NOEQUALS")
    call_command("dojo_domain", "set", "--domain", domain.name, "--python", sys.executable,
                 "--env", "A=1", "--env", "B=x=y", "--owner", other_user.username, "--hide-holdout")
    domain.refresh_from_db()
    assert (domain.workspace_python, domain.env_vars, domain.owner, domain.hide_holdout_from_viewers) == (
        PYTHON, {"A": "1", "B": "x=y"}, other_user, True)
    rows = {c.field: (c.old_value, c.new_value, c.user) for c in DomainChange.objects.filter(domain=domain)}
    assert rows == {
        "workspace_python": ("", PYTHON, None),
        "env_vars": ("{}", '{"A": "1", "B": "x=y"}', None),
        "owner": ("ada", other_user.username, None),
    }


def test_it_asks_an_interpreters_version_inside_the_sandbox_only(domain, tmp_path):
    """The workspace status shows the interpreter's version without running it on the trusted side."""
    import shutil
    import subprocess
    import tempfile
    from pathlib import Path

    from domains.models import Domain
    from domains.services import domain_workspace_status

    if not bwrap_works() or not os.path.exists("/usr/bin/python3"):
        pytest.skip("needs bubblewrap and a system python3 the sandbox can see")
    folder = Path(tempfile.mkdtemp(prefix="dojo-interp-", dir="/var/tmp"))
    try:
        folder.chmod(0o755)
        mark = folder / "ran-on-host"
        wrapper = _script(folder, "python-wrapper", f'touch {mark} 2>/dev/null\nexec /usr/bin/python3 "$@"\n')
        Domain.objects.filter(pk=domain.pk).update(workspace_python=str(wrapper))  # as if accepted earlier
        domain.refresh_from_db()
        status = domain_workspace_status(domain=domain)
        assert status["interpreter"]["version"].startswith("3.")
        assert not mark.exists()
        subprocess.run([str(wrapper), "-c", "pass"], check=True)
        assert mark.exists()  # the mark does show when it runs on the host
    finally:
        shutil.rmtree(folder)


def test_it_stores_the_interpreter_without_symlinked_folders(domain, tmp_path):
    """A path through a symlinked folder (a venv linked elsewhere) is kept with its real folder, so
    the sandbox can bind it; the file name stays, so a venv's python is still the venv's."""
    from pathlib import Path

    real_bin = Path(sys.executable).parent
    link = tmp_path / "linked-bin"
    link.symlink_to(real_bin, target_is_directory=True)
    domain_update(domain=domain, workspace_python=str(link / Path(sys.executable).name))
    domain.refresh_from_db()
    assert domain.workspace_python == str(real_bin.resolve() / Path(sys.executable).name)

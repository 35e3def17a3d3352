import json
import os
import shutil
import subprocess
import sys
from io import StringIO

import pytest
from django.conf import settings
from django.core.management import CommandError, call_command

from dojo_site.auth import token_hash
from domains.models import ApiToken, CurrentDomain, Domain
from tests.dburl import subprocess_database_url

pytestmark = pytest.mark.django_db


def run(*args, **options) -> str:
    out = StringIO()
    call_command(*args, stdout=out, stderr=StringIO(), **options)
    return out.getvalue()


def init(workspace, name="houses", task_type="regression", *extra):
    return run("dojo_init", "--name", name, "--task-type", task_type, "--workspace", str(workspace),
               "--non-interactive", *extra)


def test_it_initialises_a_domain_from_the_command_line(workspace):
    out = init(workspace, "houses", "binary", "--data-path", "train.csv", "--target-column", "sold",
               "--id-columns", "id,ref", "--metric", "accuracy", "--description", "Who buys?")

    domain = Domain.objects.get(name="houses")
    assert "Created domain houses" in out
    assert domain.task.config["id_columns"] == ["id", "ref"]
    assert (domain.task.primary_metric, domain.task.direction) == ("accuracy", "maximize")
    assert CurrentDomain.objects.get().domain == domain
    assert (workspace / "PROGRAM.md").exists() and (workspace / "SETUP.md").exists()


def test_it_prints_json_when_asked(workspace):
    data = json.loads(init(workspace, "houses", "regression", "--json"))

    assert data["name"] == "houses"
    assert data["task"]["primary_metric"] == "rmse"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--task-type", "classification"], "unknown task type 'classification'; choose one of: regression, binary, multiclass"),
        (["--task-type", "regression", "--metric", "accuracy"], "metric 'accuracy' is not a regression metric"),
        (["--task-type", "regression", "--workspace", "/nonexistent/dojo-ws"], "workspace does not exist: /nonexistent/dojo-ws"),
        (["--task-type", "regression", "--name", ""], "--name is required"),
    ],
)
def test_it_fails_with_one_line_and_creates_nothing(workspace, args, message):
    base = ["--name", "houses", "--workspace", str(workspace), "--non-interactive"]
    with pytest.raises(CommandError) as excinfo:
        run("dojo_init", *base, *args)

    assert message in str(excinfo.value)
    assert "\n" not in str(excinfo.value)
    assert excinfo.value.returncode == 1
    assert not Domain.objects.exists()
    assert list(workspace.iterdir()) == []


def test_it_refuses_a_duplicate_name_from_the_command_line(workspace, tmp_path):
    init(workspace)
    other = tmp_path / "other"
    other.mkdir()

    with pytest.raises(CommandError, match="a domain named 'houses' already exists"):
        init(other)
    assert Domain.objects.count() == 1
    assert list(other.iterdir()) == []


def _manage(args: list[str], *, wrap: list[str] | None = None) -> subprocess.CompletedProcess:
    env = os.environ | {
        "DATABASE_URL": subprocess_database_url(),
        "DOJO_HOME": str(settings.DOJO_HOME),
    }
    cmd = (wrap or []) + [sys.executable, str(settings.BASE_DIR / "manage.py"), *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)


@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif(not shutil.which("bwrap"), reason="needs bubblewrap (bwrap) to mount the workspace read-only")
def test_it_refuses_an_unwritable_workspace_and_exits_non_zero(workspace):
    # A real read-only mount of the workspace (root ignores permission bits, not a read-only mount).
    result = _manage(
        ["dojo_init", "--name", "houses", "--task-type", "regression", "--workspace", str(workspace), "--non-interactive"],
        wrap=["bwrap", "--dev-bind", "/", "/", "--ro-bind", str(workspace), str(workspace)],
    )

    assert result.returncode == 1
    assert result.stderr.strip() == f"CommandError: workspace is not writable: {workspace} (Read-only file system)"
    assert not Domain.objects.exists()
    assert list(workspace.iterdir()) == []


def test_it_lists_uses_and_shows_domains(workspace, tmp_path):
    init(workspace, "houses")
    other = tmp_path / "o"
    other.mkdir()
    init(other, "churn", "binary")

    listed = json.loads(run("dojo_domain", "ls", "--json"))
    assert [(d["name"], d["current"]) for d in listed] == [("churn", True), ("houses", False)]
    assert "houses" in run("dojo_domain", "ls")

    assert run("dojo_domain", "use", "houses").strip() == "Current domain: houses"
    assert run("dojo_domain", "current").strip() == "houses"
    assert json.loads(run("dojo_domain", "show", "--json"))["name"] == "houses"
    assert json.loads(run("dojo_domain", "show", "churn", "--json"))["task"]["task_type"] == "binary"
    assert json.loads(run("dojo_domain", "--domain", "churn", "show", "--json"))["name"] == "churn"
    assert "roc_auc (maximize)" in run("dojo_domain", "show", "--domain", "churn")


def test_it_explains_a_missing_domain_or_current_domain():
    with pytest.raises(CommandError, match="no current domain"):
        run("dojo_domain", "current")
    with pytest.raises(CommandError, match="no domain named 'nope'"):
        run("dojo_domain", "use", "nope")
    with pytest.raises(CommandError, match="no current domain"):
        run("dojo_program", "show")


def test_it_shows_the_program(workspace):
    init(workspace)
    (workspace / "PROGRAM.md").write_text("# Program\nbeat the baseline\n")

    assert run("dojo_program", "show") == "# Program\nbeat the baseline\n"
    assert json.loads(run("dojo_program", "show", "--domain", "houses", "--json"))["text"].endswith("baseline\n")


def test_it_creates_a_token_printed_once_and_stored_hashed(user):
    plain = run("dojo_token", "create", "--user", "ada", "--name", "ci").strip()

    token = ApiToken.objects.get()
    assert plain.startswith("dojo_")
    assert token.token_hash == token_hash(plain)
    assert plain not in (token.token_hash, token.prefix)
    assert token.user == user and token.name == "ci"
    assert plain not in run("dojo_token", "ls")


def test_it_revokes_a_token(user):
    run("dojo_token", "create", "--user", "ada")
    token = ApiToken.objects.get()

    run("dojo_token", "revoke", str(token.pk))

    token.refresh_from_db()
    assert token.revoked_at is not None


def test_it_refuses_a_token_for_an_unknown_user():
    with pytest.raises(CommandError, match="no user named 'bob'"):
        run("dojo_token", "create", "--user", "bob")
    assert not ApiToken.objects.exists()


def test_it_lists_a_domain_without_a_task_and_a_frozen_one():
    from django.utils import timezone

    from tests.factories import DomainFactory, TaskFactory

    DomainFactory(name="bare")
    TaskFactory(domain__name="sealed", frozen_at=timezone.now())

    listed = {d["name"]: d["task"] for d in json.loads(run("dojo_domain", "ls", "--json"))}
    assert listed["bare"] is None
    assert listed["sealed"]["frozen"] is True
    table = run("dojo_domain", "ls")
    assert "no task" in table and "frozen" in table

"""`manage.py dojo_task`: thin over the services; exit 3 for "not ready", 1 for other errors."""

import json
import os
import subprocess
import sys
from io import StringIO

import pytest
from django.conf import settings
from django.core.management import CommandError, call_command

from domains.models import TaskTool
from tests.dburl import subprocess_database_url
from tests.domains.taskkit import EVALUATE_REGRESSION, LOAD_REGRESSION, make_domain, task_of

pytestmark = pytest.mark.django_db


def run(*args) -> str:
    out = StringIO()
    call_command("dojo_task", *args, stdout=out)
    return out.getvalue()


@pytest.fixture
def tool_files(tmp_path):
    load, evaluate = tmp_path / "load_data.py", tmp_path / "evaluate.py"
    load.write_text(LOAD_REGRESSION)
    evaluate.write_text(EVALUATE_REGRESSION)
    return load, evaluate


def test_it_sets_up_a_bundled_dataset_in_one_go_and_shows_it(workspace):
    make_domain(workspace, name="diab", data_path="sklearn:load_diabetes")
    assert run("setup", "--domain", "diab").startswith("Frozen: fingerprint ")
    shown = json.loads(run("show", "--json", "--domain", "diab"))
    assert shown["state"] == "frozen" and shown["fingerprint"] == shown["tools_fingerprint"]
    assert shown["snapshot"]["shapes"]["X_train"] == [354, 10]
    assert shown["tools"]["load_data"]["origin"] == "template" and shown["tools"]["evaluate"]["verified"]
    text = run("show", "--domain", "diab")
    assert "354×10" in text and "validation rows 44, holdout rows 44" in text


def test_it_imports_verifies_and_freezes_step_by_step(workspace, tool_files):
    make_domain(workspace)
    load, evaluate = tool_files
    assert "Imported load_data v1, evaluate v1" in run("import", "--load-data", str(load), "--evaluate", str(evaluate))
    assert "load_data: ok" in run("verify")
    assert run("freeze").startswith("Frozen:")
    assert json.loads(run("show", "--json"))["frozen"] is True


def test_it_exits_3_when_freezing_unverified_tools(workspace, tool_files):
    make_domain(workspace)
    run("import", "--load-data", str(tool_files[0]), "--evaluate", str(tool_files[1]))
    with pytest.raises(CommandError, match="cannot freeze: load_data v1 has not been verified") as caught:
        run("freeze")
    assert caught.value.returncode == 3


def test_it_exits_3_when_verification_fails(workspace, tmp_path, tool_files):
    make_domain(workspace)
    bad = tmp_path / "bad.py"
    bad.write_text("def load_data():\n    return 1, 2, 3\n")
    run("import", "--load-data", str(bad), "--evaluate", str(tool_files[1]))
    with pytest.raises(CommandError, match="verification failed: load_data returned a tuple of length 3") as caught:
        run("verify")
    assert caught.value.returncode == 3


def test_it_exits_1_when_editing_the_tools_of_a_frozen_task(workspace, tool_files):
    make_domain(workspace, name="diab", data_path="sklearn:load_diabetes")
    run("setup")
    with pytest.raises(CommandError, match="the task is frozen, so its tools cannot change") as caught:
        run("import", "--evaluate", str(tool_files[1]))
    assert caught.value.returncode == 1
    assert TaskTool.objects.filter(origin="human").count() == 0


def test_it_unfreezes_only_with_a_reason(workspace):
    domain = make_domain(workspace, name="diab", data_path="sklearn:load_diabetes")
    run("setup")
    with pytest.raises(CommandError):
        run("unfreeze")  # --reason is required
    assert "Unfrozen" in run("unfreeze", "--reason", "new data drop")
    assert task_of(domain).unfreeze_reason == "new data drop"


def test_it_reports_setup_md_without_sections_in_one_line(workspace):
    make_domain(workspace, setup="just some notes\n")
    with pytest.raises(CommandError, match="missing its '## Dataset' and '## Evaluate' sections") as caught:
        run("generate")
    assert caught.value.returncode == 1


def test_it_reports_an_unreadable_import_file(workspace, tmp_path):
    make_domain(workspace)
    with pytest.raises(CommandError, match="cannot read .*nope.py"):
        run("import", "--load-data", str(tmp_path / "nope.py"))


def test_it_changes_the_primary_metric_and_config(workspace):
    domain = make_domain(workspace)
    assert "Primary metric r2 (maximize)" in run("config", "--metric", "r2", "--set", "holdout_ratio=0.3")
    task = task_of(domain)
    assert (task.primary_metric, task.direction, task.config["holdout_ratio"]) == ("r2", "maximize", 0.3)
    with pytest.raises(CommandError, match="unknown task config key 'holdout'"):
        run("config", "--set", "holdout=0.3")
    with pytest.raises(CommandError, match="primary metric 'auc' is not one of"):
        run("config", "--metric", "auc")


def test_it_needs_a_domain(db):
    with pytest.raises(CommandError, match="no domain named 'ghost'"):
        run("show", "--domain", "ghost")


@pytest.mark.django_db(transaction=True)
def test_it_sets_config_keys_from_a_real_command_line(workspace):
    # `--set` was stored as options["settings"], which Django takes for its --settings module:
    # from a shell every `dojo_task config --set` ended in a TypeError traceback.
    domain = make_domain(workspace)
    env = os.environ | {"DATABASE_URL": subprocess_database_url(), "DOJO_HOME": str(settings.DOJO_HOME)}

    def manage(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(settings.BASE_DIR / "manage.py"), "dojo_task", "config", "--domain",
                               domain.name, *args], env=env, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)

    done = manage("--set", "holdout_ratio=0.3")
    assert done.returncode == 0, done.stderr
    assert task_of(domain).config["holdout_ratio"] == 0.3
    refused = manage("--set", "seed=99999999999999999999999")
    assert refused.returncode == 1
    assert refused.stderr.strip() == "CommandError: seed must be between 0 and 4294967295, got 99999999999999999999999"

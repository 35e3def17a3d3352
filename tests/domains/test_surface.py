"""The seed's remaining domain surface (issue 11 item 7): `dojo_program edit`, dotted
`dojo_task config --set limits.…`, DELETE /api/domains/{id}/task, GET /api/domains/{id}/metrics."""

import io
import sys

import pytest
from django.core.management import CommandError, call_command

from domains.models import Task
from domains.services import task_freeze, task_tools_import, task_verify
from experiments.models import Experiment
from tests.domains.taskkit import EVALUATE_REGRESSION, LOAD_REGRESSION, make_domain, task_of

pytestmark = pytest.mark.django_db


def _cmd(*args) -> str:
    out = io.StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


def test_dojo_program_edit_from_a_file_and_in_the_editor(workspace, tmp_path, monkeypatch):
    domain = make_domain(workspace)
    new = tmp_path / "new.md"
    new.write_text("# Program\nTry gradient boosting first.\n")
    assert "saved" in _cmd("dojo_program", "--domain", domain.name, "edit", "--set-file", str(new))
    assert (workspace / "PROGRAM.md").read_text() == "# Program\nTry gradient boosting first.\n"
    assert "unchanged" in _cmd("dojo_program", "--domain", domain.name, "edit", "--set-file", str(new))

    editor = tmp_path / "editor.py"
    editor.write_text("import sys\nopen(sys.argv[1], 'a').write('Also try linear models.\\n')\n")
    monkeypatch.setenv("EDITOR", f"{sys.executable} {editor}")
    monkeypatch.delenv("VISUAL", raising=False)
    assert "saved" in _cmd("dojo_program", "--domain", domain.name, "edit")
    assert (workspace / "PROGRAM.md").read_text().endswith("first.\nAlso try linear models.\n")

    monkeypatch.setenv("EDITOR", "false")
    with pytest.raises(CommandError, match="exited with status 1; PROGRAM.md is unchanged"):
        _cmd("dojo_program", "--domain", domain.name, "edit")
    monkeypatch.delenv("EDITOR")
    with pytest.raises(CommandError, match=r"set \$EDITOR"):
        _cmd("dojo_program", "--domain", domain.name, "edit")
    with pytest.raises(CommandError, match="cannot read"):
        _cmd("dojo_program", "--domain", domain.name, "edit", "--set-file", str(tmp_path / "missing.md"))


def test_dojo_task_config_sets_limits_by_dotted_keys(workspace):
    domain = make_domain(workspace)
    _cmd("dojo_task", "--domain", domain.name, "config", "--set", "limits.timeout_seconds=60",
         "--set", "limits.memory_mb=512")
    assert task_of(domain).config["limits"] == {"timeout_seconds": 60, "memory_mb": 512}
    _cmd("dojo_task", "--domain", domain.name, "config", "--set", "limits.memory_mb=null")
    assert task_of(domain).config["limits"] == {"timeout_seconds": 60}
    for bad, words in [
        ("limits.timeout_seconds=-1", "must be a positive number"),
        ("limits.nope=3", "unknown limit 'nope'"),
        ("seed.x=3", "dotted keys are for limits"),
        ("limits.a.b=1", "one dot"),
        ("limits=5", "must be an object"),
    ]:
        with pytest.raises(CommandError, match=words):
            _cmd("dojo_task", "--domain", domain.name, "config", "--set", bad)
    assert task_of(domain).config["limits"] == {"timeout_seconds": 60}


def test_delete_task_api_refuses_a_frozen_task(client_logged_in, workspace):
    domain = make_domain(workspace)
    task = task_of(domain)
    task_tools_import(task=task, load_data=LOAD_REGRESSION, evaluate=EVALUATE_REGRESSION)
    assert task_verify(task=task).ok
    task_freeze(task=task_of(domain))
    response = client_logged_in.delete(f"/api/domains/{domain.pk}/task")
    assert response.status_code == 409 and "unfreeze" in response.json()["detail"]
    assert Task.objects.filter(domain=domain).exists()


def test_delete_task_api_deletes_an_unfrozen_task_and_checks_the_role(client_logged_in, other_user, workspace):
    from django.test import Client

    domain = make_domain(workspace)
    stranger = Client()
    stranger.force_login(other_user)
    assert stranger.delete(f"/api/domains/{domain.pk}/task").status_code == 404  # cannot see it
    response = client_logged_in.delete(f"/api/domains/{domain.pk}/task")
    assert response.status_code == 204
    assert not Task.objects.filter(domain=domain).exists()
    assert client_logged_in.delete(f"/api/domains/{domain.pk}/task").status_code == 404


def test_metrics_api_gives_the_series_for_charts(client_logged_in, workspace):
    domain = make_domain(workspace)
    values = [(55.0, 56.0), (50.0, 51.0), (60.0, None), (48.0, 47.5)]
    made = [
        Experiment.objects.create(domain=domain, train_code="x", state="completed", primary_value=v,
                                  holdout_primary_value=h, metrics={"rmse": v})
        for v, h in values
    ]
    Experiment.objects.create(domain=domain, train_code="x", state="failed")
    body = client_logged_in.get(f"/api/domains/{domain.pk}/metrics").json()
    assert body["metric"] == "rmse" and body["direction"] == "minimize"
    assert body["ids"] == [e.pk for e in made]
    assert body["validation"] == [55.0, 50.0, 60.0, 48.0]
    assert body["best"] == [55.0, 50.0, 50.0, 48.0]
    assert body["holdout"] == [56.0, 51.0, None, 47.5]
    assert client_logged_in.get(f"/api/domains/{domain.pk + 999}/metrics").status_code == 404

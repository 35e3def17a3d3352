"""DOJO_INLINE_TASKS=False: a by-hand experiment is recorded `pending` and run by a worker (issue 13 item 3)."""

import json
from io import StringIO

import pytest
from django.core.management import call_command
from django_q.models import OrmQ

from experiments.models import Experiment
from experiments.tasks import experiment_run_pending_task
from tests.experiments.conftest import LINEAR

pytestmark = pytest.mark.django_db


@pytest.fixture
def queued(settings):
    settings.DOJO_INLINE_TASKS = False


def _post(client, domain, payload):
    return client.post(f"/api/domains/{domain.pk}/experiments", data=json.dumps(payload),
                       content_type="application/json")


def test_the_api_answers_202_and_the_experiment_url_shows_pending_then_the_result(
        queued, client_logged_in, diabetes, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        response = _post(client_logged_in, diabetes, {"code": LINEAR, "hypothesis": "queued by hand"})
    assert response.status_code == 202 and len(callbacks) == 1
    body = response.json()
    exp_id = body["experiment"]["id"]
    assert body["experiment"]["state"] == "pending" and body["status_url"] == f"/api/experiments/{exp_id}"
    assert client_logged_in.get(body["status_url"]).json()["state"] == "pending"
    assert OrmQ.objects.count() == 1  # the web node ran nothing: the queue holds it

    assert experiment_run_pending_task(exp_id) == "completed"  # what the worker does
    shown = client_logged_in.get(body["status_url"]).json()
    assert shown["state"] == "completed" and shown["primary_value"] is not None
    assert shown["hypothesis"] == "queued by hand" and shown["rank_value"] is not None  # ranked like an inline one


def test_bad_input_is_refused_before_anything_is_queued(queued, client_logged_in, diabetes,
                                                        django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        empty = _post(client_logged_in, diabetes, {"code": " "})
        bad_parent = _post(client_logged_in, diabetes, {"code": LINEAR, "parent_id": 987654})
    assert empty.status_code == 422 and "empty" in empty.json()["detail"]
    assert bad_parent.status_code in (404, 422)
    assert callbacks == [] and not Experiment.objects.exists()


def test_a_queued_experiment_that_fails_shows_its_error(queued, client_logged_in, diabetes,
                                                       django_capture_on_commit_callbacks):
    code = "def train(X_train, y_train, X_test, *, artifacts_dir):\n    raise ValueError('broken on purpose')\n"
    with django_capture_on_commit_callbacks(execute=True):
        exp_id = _post(client_logged_in, diabetes, {"code": code}).json()["experiment"]["id"]
    assert experiment_run_pending_task(exp_id) == "failed"
    shown = client_logged_in.get(f"/api/experiments/{exp_id}").json()
    assert shown["state"] == "failed" and "broken on purpose" in shown["error"]


def test_the_cli_queues_with_background(queued, diabetes, tmp_path, django_capture_on_commit_callbacks):
    code = tmp_path / "train.py"
    code.write_text(LINEAR)
    out = StringIO()
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        call_command("dojo_experiments", "run", "--domain", "diabetes", "--code-file", str(code),
                     "--hypothesis", "from the CLI", "--background", stdout=out)
    exp = Experiment.objects.get()
    assert exp.state == "pending" and len(callbacks) == 1
    assert f"#{exp.pk}" in out.getvalue() and "queued" in out.getvalue()


# A real commit: the command enqueues on commit and then polls, as it does outside tests.
@pytest.mark.django_db(transaction=True)
def test_the_cli_waits_for_the_queued_experiment_and_prints_its_progress(queued, diabetes, tmp_path, monkeypatch):
    from django_q.conf import Conf

    monkeypatch.setattr(Conf, "SYNC", True)  # the queue runs the task at once, as a worker would
    code = tmp_path / "train.py"
    code.write_text(LINEAR)
    out = StringIO()
    call_command("dojo_experiments", "run", "--domain", "diabetes", "--code-file", str(code),
                 "--hypothesis", "waited for", stdout=out)
    exp = Experiment.objects.get()
    assert exp.state == "completed" and f"experiment #{exp.pk}: completed" in out.getvalue()

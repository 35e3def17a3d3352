"""DOJO_INLINE_TASKS=False: verify, freeze and generate are queued jobs a worker runs (issue 13 item 3).

The web node only records the job and enqueues it on commit (an OrmQ row); the test then runs the
queued task function as a worker would and reads the result through the status URL."""

import pytest
from django_q.models import OrmQ

from domains.tasks import task_job_task
from tests.domains.taskkit import EVALUATE_REGRESSION, LOAD_REGRESSION, make_domain, task_of

pytestmark = pytest.mark.django_db

@pytest.fixture
def queued(settings):
    settings.DOJO_INLINE_TASKS = False


def _post(client, path, payload=None):
    return client.post(f"/api{path}", payload or {}, content_type="application/json")


def _run_queued(domain) -> str:
    """What a worker does with the one OrmQ row: run the task function with the task's id."""
    assert OrmQ.objects.count() == 1
    OrmQ.objects.all().delete()
    return task_job_task(task_of(domain).pk)


def test_verify_then_freeze_are_queued_and_the_status_url_shows_the_result(
        queued, client_logged_in, workspace, django_capture_on_commit_callbacks):
    domain = make_domain(workspace)
    base = f"/domains/{domain.pk}/task"
    _post(client_logged_in, f"{base}/tools/import", {"load_data": LOAD_REGRESSION, "evaluate": EVALUATE_REGRESSION})

    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        response = _post(client_logged_in, f"{base}/tools/verify")
    assert response.status_code == 202 and len(callbacks) == 1
    body = response.json()
    assert (body["job"]["kind"], body["job"]["state"]) == ("verify", "queued")
    assert body["status_url"] == f"/api{base}"
    shown = client_logged_in.get(body["status_url"]).json()
    assert shown["job"]["state"] == "queued" and shown["tools"]["load_data"]["verified"] is False
    # A second job while one is queued is refused, and nothing more is queued.
    assert _post(client_logged_in, f"{base}/freeze").status_code == 409

    assert _run_queued(domain) == "done"
    shown = client_logged_in.get(body["status_url"]).json()
    assert (shown["job"]["state"], shown["job"]["error"], shown["state"]) == ("done", "", "verified")
    assert shown["job"]["result"]["ok"] is True and shown["job"]["finished_at"]

    with django_capture_on_commit_callbacks(execute=True):
        response = _post(client_logged_in, f"{base}/freeze")
    assert response.status_code == 202 and response.json()["job"]["kind"] == "freeze"
    assert client_logged_in.get(f"/api{base}").json()["frozen"] is False
    assert _run_queued(domain) == "done"
    shown = client_logged_in.get(f"/api{base}").json()
    assert shown["frozen"] is True and shown["job"]["result"]["fingerprint"] == shown["fingerprint"]
    # Running the same job again (a redelivered queue entry) does nothing.
    assert task_job_task(task_of(domain).pk) == "done"


def test_a_failing_verify_shows_its_errors_on_the_status_url(
        queued, client_logged_in, workspace, django_capture_on_commit_callbacks):
    domain = make_domain(workspace)
    base = f"/domains/{domain.pk}/task"
    _post(client_logged_in, f"{base}/tools/import",
          {"load_data": "def load_data():\n    return (1,)\n", "evaluate": EVALUATE_REGRESSION})
    with django_capture_on_commit_callbacks(execute=True):
        assert _post(client_logged_in, f"{base}/tools/verify").status_code == 202

    assert _run_queued(domain) == "failed"
    job = client_logged_in.get(f"/api{base}").json()["job"]
    assert job["state"] == "failed"
    assert "expected a 4-tuple" in job["error"] and job["result"]["ok"] is False
    assert job["result"]["load_data"]["errors"] == [
        "load_data returned a tuple of length 1; expected a 4-tuple (X_train, X_test, y_train, y_test)"
    ]
    # A failed job does not block the next one.
    with django_capture_on_commit_callbacks(execute=True):
        assert _post(client_logged_in, f"{base}/tools/verify").status_code == 202


def test_a_queued_freeze_that_cannot_freeze_fails_with_the_reason(
        queued, client_logged_in, workspace, django_capture_on_commit_callbacks):
    domain = make_domain(workspace)
    base = f"/domains/{domain.pk}/task"
    _post(client_logged_in, f"{base}/tools/import", {"load_data": LOAD_REGRESSION, "evaluate": EVALUATE_REGRESSION})
    with django_capture_on_commit_callbacks(execute=True):
        assert _post(client_logged_in, f"{base}/freeze").status_code == 202
    assert _run_queued(domain) == "failed"
    job = client_logged_in.get(f"/api{base}").json()["job"]
    assert job["kind"] == "freeze" and "cannot freeze" in job["error"]
    assert task_of(domain).frozen_at is None


def test_generate_is_queued_and_writes_the_tools(queued, client_logged_in, workspace,
                                                 django_capture_on_commit_callbacks):
    domain = make_domain(workspace, data_path="sklearn:load_diabetes")
    base = f"/domains/{domain.pk}/task"
    with django_capture_on_commit_callbacks(execute=True):
        response = _post(client_logged_in, f"{base}/tools/generate", {"method": "template"})
    assert response.status_code == 202 and response.json()["job"]["kind"] == "generate"
    assert client_logged_in.get(f"/api{base}").json()["tools"]["load_data"] is None
    state = _run_queued(domain)
    shown = client_logged_in.get(f"/api{base}").json()
    assert state == "done", shown["job"]["error"]
    assert [t["name"] for t in shown["job"]["result"]["tools"]] == ["load_data", "evaluate"]
    assert shown["state"] == "tools written"


def test_only_an_owner_may_queue_a_job(queued, client, workspace, django_user_model,
                                       django_capture_on_commit_callbacks):
    from domains.services import domain_member_set

    domain = make_domain(workspace)
    editor = django_user_model.objects.create_user(username="eve", password="pw-for-tests-only")
    domain_member_set(domain=domain, username="eve", role="editor")
    client.force_login(editor)
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        assert _post(client, f"/domains/{domain.pk}/task/tools/verify").status_code == 403
    assert callbacks == [] and task_of(domain).job == {}


def test_the_task_tab_queues_verify_and_polls_until_the_job_ends(
        queued, client_logged_in, workspace, django_capture_on_commit_callbacks):
    domain = make_domain(workspace)
    _post(client_logged_in, f"/domains/{domain.pk}/task/tools/import",
          {"load_data": LOAD_REGRESSION, "evaluate": EVALUATE_REGRESSION})
    hx = {"HTTP_HX_REQUEST": "true"}
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        panel = client_logged_in.post(f"/domains/{domain.pk}/task/verify/", **hx).content.decode()
    assert len(callbacks) == 1 and 'hx-trigger="every 2s"' in panel and "Verify queued" in panel
    assert task_of(domain).tools.get(name="load_data").verified_at is None  # the web request ran nothing

    assert _run_queued(domain) == "done"
    panel = client_logged_in.get(f"/domains/{domain.pk}/task/", **hx).content.decode()
    assert 'hx-trigger="every 2s"' not in panel and "</strong>: done" in panel


def test_the_cli_queues_with_background_and_the_worker_finishes_it(queued, workspace,
                                                                    django_capture_on_commit_callbacks):
    from io import StringIO

    from django.core.management import call_command

    domain = make_domain(workspace)
    load, evaluate = workspace / "load.py", workspace / "evaluate.py"
    load.write_text(LOAD_REGRESSION)
    evaluate.write_text(EVALUATE_REGRESSION)
    call_command("dojo_task", "import", "--domain", "lab", "--load-data", str(load), "--evaluate", str(evaluate),
                 stdout=StringIO())
    out = StringIO()
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        call_command("dojo_task", "verify", "--domain", "lab", "--background", stdout=out)
    assert len(callbacks) == 1 and "verify queued" in out.getvalue()
    assert task_of(domain).job["state"] == "queued"
    assert _run_queued(domain) == "done"


@pytest.mark.django_db(transaction=True)
def test_the_cli_waits_for_the_job_and_exits_3_when_verify_fails(queued, workspace, monkeypatch):
    from io import StringIO

    from django.core.management import call_command
    from django.core.management.base import CommandError
    from django_q.conf import Conf

    monkeypatch.setattr(Conf, "SYNC", True)  # the queue runs the task at once, as a worker would
    make_domain(workspace)
    load, evaluate = workspace / "load.py", workspace / "evaluate.py"
    load.write_text("def load_data():\n    return (1,)\n")
    evaluate.write_text(EVALUATE_REGRESSION)
    call_command("dojo_task", "import", "--domain", "lab", "--load-data", str(load), "--evaluate", str(evaluate),
                 stdout=StringIO())
    out = StringIO()
    with pytest.raises(CommandError, match="verify failed: verification failed: load_data returned a tuple") as err:
        call_command("dojo_task", "verify", "--domain", "lab", stdout=out)
    assert getattr(err.value, "returncode", 3) == 3 and "verify: failed" in out.getvalue()


def test_the_cli_queues_setup_and_the_worker_generates_verifies_and_freezes(queued, workspace,
                                                                            django_capture_on_commit_callbacks):
    """`dojo_task setup` runs the task's code too (verify, the freeze's load_data): with
    DOJO_INLINE_TASKS=0 it is a queued job like the others, never run in the CLI's process."""
    from io import StringIO

    from django.core.management import call_command

    domain = make_domain(workspace, data_path="sklearn:load_diabetes")
    out = StringIO()
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        call_command("dojo_task", "setup", "--domain", "lab", "--with", "template", "--background", stdout=out)
    assert len(callbacks) == 1 and "setup queued" in out.getvalue()
    task = task_of(domain)
    assert task.job["kind"] == "setup" and task.job["state"] == "queued" and task.job["params"]["method"] == "template"
    assert not task.tools.exists() and not task.is_frozen  # nothing ran here

    assert _run_queued(domain) == "done"
    task = task_of(domain)
    assert task.is_frozen and task.job["result"]["fingerprint"] == task.fingerprint
    assert {t.name for t in task.tools.filter(is_current=True)} == {"load_data", "evaluate"}

"""The Task tab: the panel and its htmx POST actions."""

import pytest

from domains.models import TaskTool
from tests.domains.taskkit import EVALUATE_REGRESSION, LOAD_REGRESSION, make_domain, task_of

pytestmark = pytest.mark.django_db
HTMX = {"HTTP_HX_REQUEST": "true"}


def post(client, domain, action, data=None):
    return client.post(f"/domains/{domain.pk}/task/{action}/", data or {}, **HTMX)


def test_it_loads_the_panel_into_the_task_tab(client_logged_in, workspace):
    domain = make_domain(workspace)
    page = client_logged_in.get(f"/domains/{domain.pk}/?tab=task")
    assert page.status_code == 200
    assert f'hx-get="/domains/{domain.pk}/task/"' in page.content.decode()
    panel = client_logged_in.get(f"/domains/{domain.pk}/task/", **HTMX)
    assert panel.status_code == 200
    body = panel.content.decode()
    assert 'id="task-panel"' in body and "Import hand-written tools" in body and "Missing." in body
    assert client_logged_in.get(f"/domains/{domain.pk}/task/").status_code == 302  # not htmx: the page


def test_it_requires_login(client, workspace):
    domain = make_domain(workspace)
    assert client.post(f"/domains/{domain.pk}/task/verify/").status_code == 302
    assert not TaskTool.objects.exists()


def test_it_imports_verifies_freezes_and_shows_frozen_code_read_only(client_logged_in, workspace):
    domain = make_domain(workspace)
    body = post(client_logged_in, domain, "import", {"load_data": LOAD_REGRESSION, "evaluate": EVALUATE_REGRESSION}).content.decode()
    assert "Saved load_data v1, evaluate v1" in body and "not verified" in body
    body = post(client_logged_in, domain, "verify").content.decode()
    assert "Both tools passed verification" in body and "badge ok\">verified" in body
    body = post(client_logged_in, domain, "freeze").content.decode()
    assert "Frozen: fingerprint" in body
    assert '<textarea name="code"' not in body and 'data-readonly="true"' in body
    assert "Unfreeze the contract?" in body  # hx-confirm on the unfreeze form
    assert "Snapshot" in body and "the evaluator only" in body
    assert task_of(domain).is_frozen


def test_it_shows_verification_errors_under_each_tool(client_logged_in, workspace):
    domain = make_domain(workspace)
    post(client_logged_in, domain, "import", {"load_data": "def load_data():\n    return 1, 2, 3\n", "evaluate": EVALUATE_REGRESSION})
    body = post(client_logged_in, domain, "verify").content.decode()
    assert "Verification failed: 2 problem(s)" in body
    assert "load_data returned a tuple of length 3" in body
    body = post(client_logged_in, domain, "freeze").content.decode()
    assert "cannot freeze: load_data v1 failed verification" in body
    assert not task_of(domain).is_frozen


def test_it_shows_form_errors_for_an_empty_paste_and_an_unfreeze_without_reason(client_logged_in, workspace):
    domain = make_domain(workspace, data_path="sklearn:load_diabetes")
    body = post(client_logged_in, domain, "import", {"load_data": " ", "evaluate": ""}).content.decode()
    assert "Paste the code of load_data, evaluate, or both." in body
    post(client_logged_in, domain, "generate", {"method": "template"})
    post(client_logged_in, domain, "verify")
    post(client_logged_in, domain, "freeze")
    body = post(client_logged_in, domain, "unfreeze", {"reason": ""}).content.decode()
    assert "Say why the task is unfrozen." in body and task_of(domain).is_frozen
    body = post(client_logged_in, domain, "tool", {"name": "evaluate", "code": EVALUATE_REGRESSION}).content.decode()
    assert "the task is frozen, so its tools cannot change" in body
    body = post(client_logged_in, domain, "unfreeze", {"reason": "fix the split"}).content.decode()
    assert "Unfrozen." in body and "fix the split" in body
    assert not task_of(domain).is_frozen


def test_it_edits_one_tool_and_the_settings(client_logged_in, workspace):
    domain = make_domain(workspace)
    post(client_logged_in, domain, "import", {"load_data": LOAD_REGRESSION, "evaluate": EVALUATE_REGRESSION})
    body = post(client_logged_in, domain, "tool", {"name": "evaluate", "code": EVALUATE_REGRESSION + "\n# v2\n"}).content.decode()
    assert "Saved evaluate v2" in body
    body = post(client_logged_in, domain, "config", {"primary_metric": "r2", "test_ratio": "0.25", "holdout_ratio": "0", "seed": "5"}).content.decode()
    assert "Task settings saved." in body
    task = task_of(domain)
    assert (task.primary_metric, task.config["holdout_ratio"], task.config["seed"]) == ("r2", 0.0, 5)
    body = post(client_logged_in, domain, "config", {"primary_metric": "r2", "test_ratio": "2", "holdout_ratio": "0", "seed": "5"}).content.decode()
    assert "Check the task settings." in body


def test_it_redirects_a_plain_post_with_a_message(client_logged_in, workspace):
    domain = make_domain(workspace)
    response = client_logged_in.post(f"/domains/{domain.pk}/task/freeze/", follow=True)
    assert response.redirect_chain[-1][0].endswith("?tab=task")
    assert "cannot freeze: load_data is missing" in response.content.decode()


def test_it_says_plainly_when_bubblewrap_is_missing(client_logged_in, workspace, monkeypatch):
    monkeypatch.setenv("DOJO_SANDBOX", "fallback")
    domain = make_domain(workspace)
    body = client_logged_in.get(f"/domains/{domain.pk}/task/", **HTMX).content.decode()
    assert "Weaker isolation." in body and "apt-get install bubblewrap" in body
    monkeypatch.delenv("DOJO_SANDBOX")
    from domains.sandbox import sandbox_isolation

    if sandbox_isolation() == "bwrap":
        assert "Weaker isolation." not in client_logged_in.get(f"/domains/{domain.pk}/task/", **HTMX).content.decode()


def test_it_404s_an_unknown_action(client_logged_in, workspace):
    domain = make_domain(workspace)
    assert post(client_logged_in, domain, "explode").status_code == 404

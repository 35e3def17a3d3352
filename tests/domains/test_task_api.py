"""The task endpoints under /api/domains/{id}/task."""

import pytest

from domains.models import Domain
from tests.domains.taskkit import EVALUATE_REGRESSION, LOAD_REGRESSION, make_domain, task_of

pytestmark = pytest.mark.django_db


@pytest.fixture
def api(client_logged_in):
    def call(method: str, path: str, payload=None):
        kwargs = {"content_type": "application/json"} if payload is not None else {}
        return getattr(client_logged_in, method)(f"/api{path}", payload, **kwargs) if payload is not None else \
            getattr(client_logged_in, method)(f"/api{path}")
    return call


def test_it_needs_authentication(client, workspace):
    domain = make_domain(workspace)
    assert client.get(f"/api/domains/{domain.pk}/task").status_code == 401


def test_it_walks_import_verify_freeze_unfreeze(api, workspace):
    domain = make_domain(workspace)
    base = f"/domains/{domain.pk}/task"
    shown = api("get", base).json()
    assert (shown["state"], shown["primary_metric"], shown["tools"]) == ("no tools", "rmse", {"load_data": None, "evaluate": None})
    imported = api("post", f"{base}/tools/import", {"load_data": LOAD_REGRESSION, "evaluate": EVALUATE_REGRESSION})
    assert imported.status_code == 200 and [t["name"] for t in imported.json()] == ["load_data", "evaluate"]
    assert api("post", f"{base}/freeze", {}).status_code == 409  # not verified yet
    verified = api("post", f"{base}/tools/verify", {}).json()
    assert verified["ok"] is True and verified["evaluate"]["sample"]["true_labels"]["rmse"] == 0.0
    frozen = api("post", f"{base}/freeze", {})
    assert frozen.status_code == 200 and frozen.json()["frozen"] is True and len(frozen.json()["fingerprint"]) == 64
    edited = api("put", f"{base}/tools/evaluate", {"code": EVALUATE_REGRESSION + "\n# edit\n"})
    assert edited.status_code == 409
    assert "frozen" in edited.json()["detail"]
    assert api("post", f"{base}/tools/import", {"evaluate": EVALUATE_REGRESSION + "#"}).status_code == 409
    assert api("patch", base, {"config": {"seed": 3}}).status_code == 409
    assert api("post", f"{base}/unfreeze", {"reason": ""}).status_code == 422
    unfrozen = api("post", f"{base}/unfreeze", {"reason": "new labels"}).json()
    assert (unfrozen["frozen"], unfrozen["unfreeze_reason"]) == (False, "new labels")
    edited = api("put", f"{base}/tools/evaluate", {"code": EVALUATE_REGRESSION + "\n# edit\n"})
    assert edited.status_code == 200 and edited.json()["version"] == 2 and edited.json()["verified"] is False
    history = api("get", f"{base}/tools?history=true").json()["items"]
    assert [(t["name"], t["version"], t["is_current"]) for t in history] == [
        ("evaluate", 2, True), ("evaluate", 1, False), ("load_data", 1, True),
    ]
    listed = api("get", f"{base}/tools").json()
    assert listed["count"] == len(listed["items"]) == 2


def test_it_returns_verification_errors_with_a_200(api, workspace):
    domain = make_domain(workspace)
    base = f"/domains/{domain.pk}/task"
    api("post", f"{base}/tools/import", {"load_data": "def load_data():\n    return (1,)\n", "evaluate": EVALUATE_REGRESSION})
    body = api("post", f"{base}/tools/verify", {}).json()
    assert body["ok"] is False
    assert body["load_data"]["errors"] == ["load_data returned a tuple of length 1; expected a 4-tuple (X_train, X_test, y_train, y_test)"]


def test_it_updates_the_primary_metric_and_config(api, workspace):
    domain = make_domain(workspace)
    base = f"/domains/{domain.pk}/task"
    body = api("patch", base, {"primary_metric": "mae", "config": {"holdout_ratio": 0, "test_ratio": 0.3}}).json()
    assert (body["primary_metric"], body["direction"], body["config"]["holdout_ratio"], body["config"]["test_ratio"]) == ("mae", "minimize", 0.0, 0.3)
    bad = api("patch", base, {"config": {"holdout_ratio": 1.5}})
    assert bad.status_code == 422 and "holdout_ratio must be in [0, 1)" in bad.json()["detail"]
    assert api("patch", base, {"primary_metric": "roc_auc"}).status_code == 422
    assert api("patch", base, {"config": {"colour": "red"}}).status_code == 422


def test_it_creates_a_task_only_for_a_domain_without_one(api, workspace):
    domain = make_domain(workspace)
    assert api("post", f"/domains/{domain.pk}/task", {"task_type": "binary"}).status_code == 409
    task_of(domain).delete()
    created = api("post", f"/domains/{domain.pk}/task", {"task_type": "binary", "metric": "f1", "config": {"seed": 9}})
    assert created.status_code == 201
    assert (created.json()["primary_metric"], created.json()["direction"], created.json()["config"]["seed"]) == ("f1", "maximize", 9)
    assert api("get", "/domains/999999/task").status_code == 404
    bare = Domain.objects.create(name="bare", workspace_path=str(workspace), program_path="p", setup_path="s")
    assert api("get", f"/domains/{bare.pk}/task").status_code == 404


def test_it_generates_from_a_template_and_refuses_unknown_tools(api, workspace):
    domain = make_domain(workspace, data_path="sklearn:load_diabetes")
    base = f"/domains/{domain.pk}/task"
    tools = api("post", f"{base}/tools/generate", {"method": "template"}).json()
    assert [(t["name"], t["origin"]) for t in tools] == [("load_data", "template"), ("evaluate", "template")]
    assert api("put", f"{base}/tools/train", {"code": "def train(): pass"}).status_code == 422
    bad = api("put", f"{base}/tools/evaluate", {"code": "def evaluate(:"})
    assert bad.status_code == 422 and "evaluate.py line 1" in bad.json()["detail"]


@pytest.mark.parametrize("config, detail", [
    ('{"seed": 1e400}', "task config seed must be a finite int"),  # JSON's 1e400 parses as infinity
    ('{"seed": 1180591620717411303424}', "seed must be between 0 and 4294967295"),
    ('{"holdout_ratio": -1e400}', "task config holdout_ratio must be a finite float"),
])
def test_it_answers_422_to_config_numbers_out_of_range(client_logged_in, workspace, config, detail):
    domain = make_domain(workspace)
    before = task_of(domain).config

    response = client_logged_in.patch(f"/api/domains/{domain.pk}/task", '{"config": ' + config + "}",
                                      content_type="application/json")

    assert response.status_code == 422
    assert detail in response.json()["detail"]
    assert task_of(domain).config == before


def test_it_answers_400_to_nan_in_the_config(client_logged_in, workspace):
    domain = make_domain(workspace)
    before = task_of(domain).config

    response = client_logged_in.patch(f"/api/domains/{domain.pk}/task", '{"config": {"verify_timeout_seconds": NaN}}',
                                      content_type="application/json")

    assert response.status_code == 400
    assert task_of(domain).config == before


def test_it_sets_per_task_limits_even_on_a_frozen_task(api, workspace):
    from experiments.services import experiment_limits
    from tests.factories import frozen_domain

    domain = frozen_domain(workspace=workspace)
    base = f"/domains/{domain.pk}/task"
    body = api("patch", base, {"config": {"limits": {"timeout_seconds": 5, "memory_mb": 512}}}).json()
    assert body["config"]["limits"] == {"timeout_seconds": 5.0, "memory_mb": 512}
    limits = experiment_limits(task=task_of(domain))
    assert (limits.timeout_seconds, limits.memory_mb) == (5.0, 512)
    cleared = api("patch", base, {"config": {"limits": {"memory_mb": None}}}).json()
    assert cleared["config"]["limits"] == {"timeout_seconds": 5.0}
    for bad, detail in [({"timeout_seconds": -1}, "must be a positive number"), ({"cpu_share": 2}, "cpu_share"),
                        ({"colour": 1}, "unknown limit 'colour'"), ([5], "must be an object")]:
        answer = api("patch", base, {"config": {"limits": bad}})
        assert answer.status_code == 422 and detail in answer.json()["detail"]
    assert api("patch", base, {"config": {"seed": 3}}).status_code == 409
    assert task_of(domain).config["limits"] == {"timeout_seconds": 5.0}

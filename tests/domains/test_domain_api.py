import json

import pytest

from domains.contracts import TASK_TYPES
from domains.models import Domain
from domains.services import domain_create

pytestmark = pytest.mark.django_db


@pytest.fixture
def api(client_logged_in):
    def call(method: str, path: str, body: dict | None = None):
        send = getattr(client_logged_in, method)
        if body is None:
            return send(f"/api{path}")
        return send(f"/api{path}", body, content_type="application/json")

    return call


def _payload(workspace, **overrides):
    return {"name": "houses", "task_type": "regression", "workspace": str(workspace)} | overrides


def test_it_creates_a_domain(api, workspace):
    response = api("post", "/domains", _payload(workspace, target_column="price", id_columns=["id"]))

    assert response.status_code == 201
    body = response.json()
    assert body["name"] == "houses"
    assert body["task"]["primary_metric"] == "rmse"
    assert body["task"]["config"]["id_columns"] == ["id"]
    assert body["task"]["frozen_at"] is None
    assert Domain.objects.get().pk == body["id"]
    assert (workspace / "SETUP.md").exists()


def test_it_lists_and_shows_domains(api, workspace):
    domain = domain_create(name="houses", task_type="binary", workspace=workspace)

    listed = api("get", "/domains").json()
    assert [d["name"] for d in listed["items"]] == ["houses"] and listed["count"] == 1
    shown = api("get", f"/domains/{domain.pk}")
    assert shown.status_code == 200
    assert shown.json()["task"]["task_type"] == "binary"


def test_it_updates_a_domain(api, workspace):
    domain = domain_create(name="houses", task_type="regression", workspace=workspace)

    response = api("patch", f"/domains/{domain.pk}", {"description": "new goal", "status": "paused"})

    assert response.status_code == 200
    assert (response.json()["description"], response.json()["status"]) == ("new goal", "paused")
    domain.refresh_from_db()
    assert domain.status == "paused"


def test_it_deletes_a_domain(api, workspace):
    domain = domain_create(name="houses", task_type="regression", workspace=workspace)

    response = api("delete", f"/domains/{domain.pk}")

    assert response.status_code == 204
    assert not Domain.objects.exists()
    assert api("get", f"/domains/{domain.pk}").status_code == 404


def test_it_answers_422_to_a_bad_task_type(api, workspace):
    response = api("post", "/domains", _payload(workspace, task_type="ranking"))

    assert response.status_code == 422
    assert "task_type" in str(response.json()["detail"])
    assert not Domain.objects.exists()


def test_it_answers_422_to_a_bad_status_metric_or_workspace(api, workspace, tmp_path):
    domain = domain_create(name="houses", task_type="regression", workspace=workspace)

    assert api("patch", f"/domains/{domain.pk}", {"status": "gone"}).status_code == 422
    bad_metric = api("post", "/domains", _payload(workspace, name="b", metric="roc_auc"))
    assert bad_metric.status_code == 422
    assert "not a regression metric" in bad_metric.json()["detail"]
    missing = api("post", "/domains", _payload(tmp_path / "nope", name="c"))
    assert missing.status_code == 422
    assert missing.json()["detail"].startswith("workspace does not exist")
    assert api("post", "/domains", {"name": "d"}).status_code == 422
    assert Domain.objects.count() == 1


def test_it_answers_404_to_an_unknown_id(api):
    for method, body in [("get", None), ("patch", {"description": "x"}), ("delete", None)]:
        response = api(method, "/domains/999", body)
        assert response.status_code == 404
        assert response.json() == {"detail": "no domain with id 999"}


def test_it_answers_409_to_a_duplicate_name(api, workspace, tmp_path):
    first = domain_create(name="houses", task_type="regression", workspace=workspace)
    other = domain_create(name="other", task_type="regression", workspace=tmp_path)

    assert api("post", "/domains", _payload(tmp_path)).status_code == 409
    renamed = api("patch", f"/domains/{other.pk}", {"name": first.name})
    assert renamed.status_code == 409
    assert renamed.json() == {"detail": "a domain named 'houses' already exists"}


def test_it_documents_the_domain_endpoints_in_openapi(client_logged_in):
    schema = client_logged_in.get("/api/openapi.json").json()

    assert {"/api/domains", "/api/domains/{domain_id}"} <= set(schema["paths"])
    # The API's enum follows the task-type registry (a new type needs its API entry too).
    assert schema["components"]["schemas"]["DomainIn"]["properties"]["task_type"]["enum"] == list(TASK_TYPES)
    assert client_logged_in.get("/api/docs").status_code == 200


def test_it_answers_422_to_a_nul_in_the_workspace_path(api):
    response = api("post", "/domains", _payload("/tmp/\x00x"))

    assert response.status_code == 422
    assert "NUL" in response.json()["detail"]
    assert not Domain.objects.exists()


@pytest.mark.parametrize("env_vars", [{"": "x"}, {"A=B": "x"}, {"A\x00": "x"}, {"OK": "a\x00b"}])
def test_it_answers_422_to_env_vars_a_process_cannot_take(api, workspace, env_vars):
    domain = domain_create(name="houses", task_type="regression", workspace=workspace)

    response = api("patch", f"/domains/{domain.pk}", {"env_vars": env_vars})

    assert response.status_code == 422
    assert "invalid env var" in response.json()["detail"]
    domain.refresh_from_db()
    assert domain.env_vars == {}


@pytest.mark.parametrize("path", ["/domains/99999999999999999999999", "/domains/0", "/domains/99999999999999999999999/task"])
def test_it_answers_422_to_an_id_no_database_can_hold(api, path):
    response = api("get", path)

    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["path", "domain_id"]


def test_it_answers_400_to_json_that_is_not_standard(client_logged_in, workspace):
    # NaN/Infinity and lone surrogates parse in Python but no file or database stores them.
    payload = json.dumps(_payload(workspace, description="DESCRIPTION"))
    for body in [payload.replace('"DESCRIPTION"', "NaN"), payload.replace("DESCRIPTION", "\\ud800")]:
        response = client_logged_in.post("/api/domains", body, content_type="application/json")
        assert response.status_code == 400
        assert response.json() == {"detail": "Cannot parse request body"}
    assert not Domain.objects.exists()

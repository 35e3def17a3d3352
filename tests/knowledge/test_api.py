import json

import pytest

from knowledge.models import KnowledgeAtom
from knowledge.services import atom_retract, atom_write
from tests.factories import DomainFactory
from tests.knowledge.helpers import make_experiment

pytestmark = pytest.mark.django_db

CONTEXT = "Regression on diabetes, RMSE on validation"


@pytest.fixture
def domain():
    return DomainFactory()


def post(client, payload):
    return client.post("/api/knowledge", payload, content_type="application/json")


def test_it_requires_authentication(client, domain):
    assert client.get("/api/knowledge").status_code == 401
    assert post(client, {"domain_id": domain.pk, "context": CONTEXT, "claim": "x"}).status_code == 401
    assert not KnowledgeAtom.objects.exists()


def test_it_creates_versions_and_contradicts_through_linking(client_logged_in, domain, user):
    exp = make_experiment(domain)
    first = post(client_logged_in, {
        "domain_id": domain.pk, "context": CONTEXT, "claim": "HistGradientBoosting beats Ridge by 31%",
        "confidence": 0.6, "evidence": [{"experiment_id": exp.pk, "stance": "supports"}],
    })
    assert first.status_code == 201
    body = first.json()
    assert body["outcome"] == "created" and body["matched_id"] is None
    assert body["atom"]["evidence"] == [{"experiment_id": exp.pk, "stance": "supports", "claim": ""}]
    assert body["atom"]["created_by_user_id"] == user.pk
    assert body["atom"]["url"] == f"/knowledge/{body['atom']['id']}/"

    again = post(client_logged_in, {"domain_id": domain.pk, "context": CONTEXT,
                                    "claim": "HistGradientBoosting beats Ridge by 20%"}).json()
    assert again["outcome"] == "versioned"
    assert again["matched_id"] == body["atom"]["id"]
    assert again["atom"]["version"] == 2
    assert again["atom"]["confidence"] > 0.6
    assert again["atom"]["evidence"] == [{"experiment_id": exp.pk, "stance": "supports", "claim": ""}]

    opposite = post(client_logged_in, {"domain_id": domain.pk, "context": CONTEXT,
                                       "claim": "Ridge beats HistGradientBoosting"}).json()
    assert opposite["outcome"] == "contradicted"
    assert opposite["matched_id"] == again["atom"]["id"]


def test_it_writes_global_knowledge_without_a_domain(client_logged_in):
    response = post(client_logged_in, {"context": "Any tabular task", "claim": "Trees need no scaling"})
    assert response.status_code == 201
    assert response.json()["atom"]["domain_id"] is None


@pytest.mark.parametrize(
    ("payload", "status"),
    [
        ({"context": CONTEXT, "claim": "x", "confidence": 2}, 422),
        ({"context": CONTEXT, "claim": "x", "confidence": "high"}, 422),
        ({"context": CONTEXT}, 422),
        ({"context": CONTEXT, "claim": "   "}, 422),
        ({"context": CONTEXT, "claim": "x", "evidence": [{"experiment_id": 99999}]}, 422),
        ({"context": CONTEXT, "claim": "x", "evidence": [{"experiment_id": 1, "stance": "maybe"}]}, 422),
        ({"context": CONTEXT, "claim": "x", "domain_id": 99999}, 404),
    ],
)
def test_it_rejects_bad_input_with_json_and_writes_nothing(client_logged_in, domain, payload, status):
    response = post(client_logged_in, {"domain_id": domain.pk, **payload})
    assert response.status_code == status
    assert "detail" in response.json()
    assert not KnowledgeAtom.objects.exists()


def test_it_rejects_evidence_from_another_domain(client_logged_in, domain):
    foreign = make_experiment(DomainFactory())
    response = post(client_logged_in, {"domain_id": domain.pk, "context": CONTEXT, "claim": "x",
                                       "evidence": [{"experiment_id": foreign.pk}]})
    assert response.status_code == 422
    assert "another domain" in response.json()["detail"]


def test_it_lists_by_domain_and_status(client_logged_in, domain):
    mine = atom_write(domain=domain, context=CONTEXT, claim="Extra trees beats Ridge", confidence=0.4).atom
    strong = atom_write(domain=domain, context=CONTEXT, claim="Target transform helps Lasso", confidence=0.9).atom
    gone = atom_write(domain=domain, context=CONTEXT, claim="SVM is hopeless here").atom
    atom_retract(atom=gone)
    other = atom_write(domain=DomainFactory(), context=CONTEXT, claim="Other").atom

    everything = client_logged_in.get("/api/knowledge").json()
    assert {a["id"] for a in everything["items"]} == {mine.pk, strong.pk, gone.pk, other.pk}
    assert everything["count"] == 4
    active = client_logged_in.get("/api/knowledge", {"domain_id": domain.pk, "status": "active"}).json()
    assert [a["id"] for a in active["items"]] == [strong.pk, mine.pk]
    retracted = client_logged_in.get("/api/knowledge", {"domain_id": domain.pk, "status": "retracted"}).json()
    assert [a["id"] for a in retracted["items"]] == [gone.pk]
    assert client_logged_in.get("/api/knowledge", {"status": "wrong"}).status_code == 422
    assert client_logged_in.get("/api/knowledge", {"domain_id": 99999}).status_code == 404
    first = client_logged_in.get("/api/knowledge", {"limit": 1}).json()
    assert (len(first["items"]), first["count"]) == (1, 4)
    second = client_logged_in.get("/api/knowledge", {"limit": 1, "offset": 1}).json()
    assert second["items"][0]["id"] != first["items"][0]["id"]


def test_it_searches(client_logged_in, domain):
    hit = atom_write(domain=domain, context=CONTEXT, claim="Extra trees beats Ridge").atom
    atom_write(domain=domain, context=CONTEXT, claim="Target transform helps Lasso")
    other = atom_write(domain=DomainFactory(), context="wine", claim="Extra trees overfit").atom

    scoped = client_logged_in.get("/api/knowledge/search", {"query": "extra trees", "domain_id": domain.pk})
    assert scoped.status_code == 200
    assert [a["id"] for a in scoped.json()["items"]] == [hit.pk]
    assert scoped.json()["count"] == 1
    assert scoped.json()["items"][0]["score"] > 0
    everywhere = client_logged_in.get("/api/knowledge/search", {"query": "extra trees"}).json()
    assert {a["id"] for a in everywhere["items"]} == {hit.pk, other.pk}
    paged = client_logged_in.get("/api/knowledge/search", {"query": "extra trees", "limit": 1, "offset": 1}).json()
    assert paged["count"] == 2 and len(paged["items"]) == 1 and paged["items"][0]["id"] in {hit.pk, other.pk}
    assert client_logged_in.get("/api/knowledge/search", {"query": ""}).status_code == 422
    assert client_logged_in.get("/api/knowledge/search", {"query": "   "}).status_code == 422
    assert client_logged_in.get("/api/knowledge/search", {"query": "x", "limit": 0}).status_code == 422


def test_it_shows_an_atom_with_versions_and_related(client_logged_in, domain):
    v1 = atom_write(domain=domain, context=CONTEXT, claim="Extra trees beats Ridge by 10%").atom
    v2 = atom_write(domain=domain, context=CONTEXT, claim="Extra trees beats Ridge by 12%").atom
    against = atom_write(domain=domain, context=CONTEXT, claim="Ridge beats Extra trees").atom

    body = client_logged_in.get(f"/api/knowledge/{v1.pk}").json()
    assert [v["id"] for v in body["versions"]] == [v2.pk, v1.pk]
    assert body["status"] == "superseded"
    assert [r["id"] for r in client_logged_in.get(f"/api/knowledge/{v2.pk}").json()["related"]] == [against.pk]
    missing = client_logged_in.get("/api/knowledge/99999")
    assert missing.status_code == 404
    assert missing.json() == {"detail": "no knowledge atom with id 99999"}


@pytest.mark.parametrize("url", ["/api/knowledge?offset=99999999999999999999999", "/api/knowledge/99999999999999999999999",
                                 "/api/knowledge?domain_id=99999999999999999999999"])
def test_it_answers_422_to_numbers_no_database_can_hold(client_logged_in, url):
    response = client_logged_in.get(url)
    assert response.status_code == 422 and "detail" in response.json()


def test_it_answers_400_to_text_no_database_can_store(client_logged_in, domain):
    body = json.dumps({"domain_id": domain.pk, "context": "c", "claim": "lone \ud800 surrogate"})
    response = client_logged_in.post("/api/knowledge", body, content_type="application/json")
    assert response.status_code == 400 and "detail" in response.json()
    assert not KnowledgeAtom.objects.exists()

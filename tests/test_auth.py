import pytest
from django.urls import reverse
from django.utils import timezone

from domains.models import ApiToken
from domains.services import domain_create, token_create

pytestmark = pytest.mark.django_db


@pytest.fixture
def domain(workspace):
    return domain_create(name="houses", task_type="regression", workspace=workspace)


def test_it_sends_anonymous_page_visits_to_the_login_page(client, domain):
    for url in [
        reverse("domains:list"),
        reverse("domains:new"),
        domain.get_absolute_url(),
        reverse("domains:file", args=[domain.pk, "program"]),
    ]:
        response = client.get(url)
        assert response.status_code == 302, url
        assert response.url.startswith(f"{reverse('login')}?next="), url


def test_it_refuses_an_anonymous_file_write(client, domain, workspace):
    before = (workspace / "PROGRAM.md").read_text()

    response = client.post(reverse("domains:file", args=[domain.pk, "program"]), {"text": "hacked"})

    assert response.status_code == 302
    assert (workspace / "PROGRAM.md").read_text() == before


def test_it_logs_in_and_out_with_the_login_form(client, user):
    page = client.get(reverse("login"))
    assert page.status_code == 200

    response = client.post(reverse("login"), {"username": "ada", "password": "pw-for-tests-only"})
    assert response.status_code == 302 and response.url == reverse("domains:list")
    assert client.get(reverse("domains:list")).status_code == 200

    client.post(reverse("logout"))
    assert client.get(reverse("domains:list")).status_code == 302


def test_it_rejects_a_wrong_password(client, user):
    response = client.post(reverse("login"), {"username": "ada", "password": "wrong"})

    assert response.status_code == 200
    assert response.context["form"].errors


def test_it_answers_401_json_to_an_anonymous_api_call(client):
    response = client.get("/api/domains")

    assert response.status_code == 401
    assert response["Content-Type"].startswith("application/json")
    assert "Authorization: Bearer" in response.json()["detail"]


def test_it_accepts_a_session_on_the_api(client_logged_in):
    assert client_logged_in.get("/api/domains").status_code == 200
    assert client_logged_in.get("/api/health").json() == {"status": "ok"}


def test_it_accepts_a_bearer_token_and_records_its_use(client, user):
    token, plain = token_create(user=user, name="ci")

    response = client.get("/api/domains", headers={"Authorization": f"Bearer {plain}"})

    assert response.status_code == 200
    token.refresh_from_db()
    assert token.last_used_at is not None


@pytest.mark.parametrize("kind", ["revoked", "wrong", "inactive user"])
def test_it_answers_401_json_to_a_bad_token(client, user, kind):
    token, plain = token_create(user=user)
    if kind == "revoked":
        ApiToken.objects.filter(pk=token.pk).update(revoked_at=timezone.now())
    elif kind == "wrong":
        plain = plain[:-2] + ("aa" if not plain.endswith("aa") else "bb")
    else:
        user.is_active = False
        user.save()

    response = client.get("/api/domains", headers={"Authorization": f"Bearer {plain}"})

    assert response.status_code == 401
    assert response["Content-Type"].startswith("application/json")
    assert "detail" in response.json()


def test_it_stores_only_the_hash_of_a_token(user):
    token, plain = token_create(user=user)

    stored = ApiToken.objects.filter(pk=token.pk).values().get()
    assert plain not in [str(v) for v in stored.values()]


def test_it_requires_csrf_for_a_session_write_on_the_api(user, workspace):
    from django.test import Client

    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    response = client.post(
        "/api/domains",
        {"name": "x", "task_type": "regression", "workspace": str(workspace)},
        content_type="application/json",
    )

    assert response.status_code == 403
    assert response.json() == {"detail": "CSRF check Failed"}
    assert not list(workspace.iterdir())


def test_it_asks_for_a_login_before_the_api_docs(client_logged_in):
    from django.test import Client

    anonymous = Client()
    for url in ["/api/docs", "/api/openapi.json"]:
        assert anonymous.get(url).status_code == 302, url
        assert client_logged_in.get(url).status_code == 200, url

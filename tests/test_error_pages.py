"""DEBUG is off unless DJANGO_DEBUG=1, and errors get plain pages in the site's style."""

import os
import subprocess
import sys

import pytest
from django.conf import settings
from django.test import RequestFactory
from django.urls import reverse
from django.views.defaults import server_error

from domains.models import DomainMember
from tests.factories import DomainFactory


@pytest.mark.parametrize(("value", "expected"), [(None, "False"), ("", "False"), ("0", "False"), ("1", "True")])
def test_it_turns_debug_on_only_when_asked(tmp_path, value, expected):
    env = {k: v for k, v in os.environ.items() if k not in ("DJANGO_DEBUG", "DEBUG")}
    env |= {"DOJO_HOME": str(tmp_path), "DJANGO_SETTINGS_MODULE": "dojo_site.settings"}
    if value is not None:
        env["DJANGO_DEBUG"] = value
    done = subprocess.run(
        [sys.executable, "-c", "from django.conf import settings; print(settings.DEBUG)"],
        env=env, cwd=settings.BASE_DIR, capture_output=True, text=True, timeout=60,
    )
    assert done.stdout.strip() == expected, done.stderr
    assert done.returncode == 0


@pytest.mark.django_db
def test_it_answers_an_unknown_page_with_the_sites_404(client_logged_in):
    response = client_logged_in.get("/no-such-page/")
    assert response.status_code == 404
    assert "404.html" in [t.name for t in response.templates]
    page = response.content.decode()
    assert "Not found" in page and "dojo/dojo.css" in page
    assert "URLconf" not in page  # not Django's debug page


@pytest.mark.django_db
def test_it_answers_a_denied_action_with_the_sites_403_and_the_reason(client, other_user):
    domain = DomainFactory()
    DomainMember.objects.create(domain=domain, user=other_user, role="viewer")
    client.force_login(other_user)
    response = client.post(reverse("domains:settings", args=[domain.pk]))
    assert response.status_code == 403
    page = response.content.decode()
    assert "Not allowed" in page and "only the domain&#x27;s owner" in page and "dojo/dojo.css" in page


def test_it_renders_the_500_page_without_a_request_context():
    response = server_error(RequestFactory().get("/"))
    assert response.status_code == 500
    page = response.content.decode()
    assert "Something went wrong" in page and "dojo/dojo.css" in page


@pytest.mark.django_db
def test_it_answers_a_crash_with_the_plain_500_page(client_logged_in, monkeypatch):
    def broken(user):
        raise RuntimeError("secret detail of the crash")

    monkeypatch.setattr("domains.views.domains_for_user", broken)
    client_logged_in.raise_request_exception = False
    response = client_logged_in.get(reverse("domains:list"))
    assert response.status_code == 500
    page = response.content.decode()
    assert "Something went wrong" in page
    assert "secret detail" not in page and "Traceback" not in page

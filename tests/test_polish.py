"""Offline API docs, the favicon, and PROGRAM.md / SETUP.md rendered as sanitised Markdown."""

import pytest
from django.contrib.staticfiles import finders

from dojo_site.markdown import markdown_html
from domains.services import domain_create

pytestmark = pytest.mark.django_db


def test_the_api_docs_use_ninjas_bundled_assets_not_a_cdn(client_logged_in):
    swagger = client_logged_in.get("/api/docs").content.decode()
    assert "/static/ninja/swagger-ui-bundle.js" in swagger and "cdn" not in swagger.lower()
    redoc = client_logged_in.get("/api/redoc").content.decode()
    assert "/static/ninja/redoc.standalone.js" in redoc and "cdn" not in redoc.lower()
    for asset in ["ninja/swagger-ui-bundle.js", "ninja/swagger-ui.css", "ninja/redoc.standalone.js"]:
        assert finders.find(asset), asset
    assert client_logged_in.get("/api/openapi.json").status_code == 200


def test_the_api_docs_need_a_login(client):
    assert client.get("/api/redoc").status_code == 302


def test_every_page_names_a_favicon_that_exists(client_logged_in):
    html = client_logged_in.get("/domains/").content.decode()
    assert '<link rel="icon" href="/static/dojo/favicon.svg"' in html
    assert finders.find("dojo/favicon.svg")
    response = client_logged_in.get("/favicon.ico")
    assert response.status_code == 301 and response.url == "/static/dojo/favicon.svg"


def test_markdown_is_rendered_and_sanitised():
    html = markdown_html(
        "# Goal\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n<script>alert(1)</script> "
        "[bad](javascript:alert(1)) [ok](https://example.org) <img src=x onerror=alert(1)>"
    )
    assert "<h3>Goal</h3>" in html and "<h1>" not in html and "<table>" in html and "<td>1</td>" in html
    assert "<script" not in html and "<img" not in html  # raw HTML stays text
    assert 'href="javascript' not in html
    assert '<a href="https://example.org" rel="noopener noreferrer nofollow">ok</a>' in html


def test_the_domain_page_renders_program_md(client_logged_in, workspace):
    domain = domain_create(name="md", task_type="regression", workspace=workspace)
    (workspace / "PROGRAM.md").write_text("# Plan\n\n**Try** boosting.\n\n<b onclick=x>raw</b>\n")
    html = client_logged_in.get(domain.get_absolute_url()).content.decode()
    assert "<h3>Plan</h3>" in html and "<strong>Try</strong>" in html
    assert "onclick" not in html.replace("&lt;b onclick", "")

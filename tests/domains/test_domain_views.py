import pytest
from django.urls import reverse
from pytest_django.asserts import assertContains, assertNotContains, assertTemplateUsed

from domains.models import Domain
from domains.services import domain_create

pytestmark = pytest.mark.django_db


@pytest.fixture
def domain(workspace):
    return domain_create(name="houses", task_type="regression", workspace=workspace, data_path="train.csv",
                         target_column="price")


def _form(workspace_dir, **overrides):
    return {"name": "houses", "task_type": "regression", "workspace": str(workspace_dir), "data_path": "",
            "target_column": "", "id_columns": "", "metric": "", "description": ""} | overrides


def test_it_lists_domains(client_logged_in, domain):
    response = client_logged_in.get(reverse("domains:list"))

    assertTemplateUsed(response, "domains/domain_list.html")
    assertContains(response, domain.get_absolute_url())
    assertContains(response, "rmse")


def test_it_creates_a_domain_with_the_form(client_logged_in, workspace):
    response = client_logged_in.post(reverse("domains:new"), _form(workspace, id_columns="id", metric="mae"))

    domain = Domain.objects.get(name="houses")
    assert response.status_code == 302 and response.url == domain.get_absolute_url()
    assert domain.task.primary_metric == "mae"
    assert domain.task.config["id_columns"] == ["id"]
    assert (workspace / "SETUP.md").exists()


@pytest.mark.parametrize(
    ("overrides", "field", "message"),
    [
        ({"task_type": "ranking"}, "task_type", "Select a valid choice"),
        ({"metric": "roc_auc"}, "metric", "roc_auc is not a regression metric"),
        ({"name": "two words"}, "name", "invalid domain name"),
        ({"workspace": "/nonexistent/dojo"}, "workspace", "workspace does not exist: /nonexistent/dojo"),
    ],
)
def test_it_shows_form_errors_for_bad_input(client_logged_in, workspace, overrides, field, message):
    response = client_logged_in.post(reverse("domains:new"), _form(workspace, **overrides))

    assert response.status_code == 200
    assert any(message in error for error in response.context["form"].errors[field])
    assert not Domain.objects.exists()
    assert list(workspace.iterdir()) == []


def test_it_shows_a_duplicate_name_as_a_form_error(client_logged_in, domain, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    response = client_logged_in.post(reverse("domains:new"), _form(other))

    assertContains(response, "a domain named &#x27;houses&#x27; already exists")
    assert Domain.objects.count() == 1


def test_it_shows_program_setup_and_task_state_on_the_domain_page(client_logged_in, domain):
    response = client_logged_in.get(domain.get_absolute_url())

    assertTemplateUsed(response, "domains/domain_detail.html")
    assertContains(response, 'id="file-program"')
    # PROGRAM.md / SETUP.md are rendered as Markdown.
    assertContains(response, "<h4>Goal</h4>")  # the file's "## Goal", demoted under the page's headings
    assertContains(response, "<li>target: price</li>")
    assertContains(response, "not frozen")


def test_it_loads_the_higher_apps_tabs_with_htmx(client_logged_in, domain):
    for tab, url in [("experiments", "/experiments/domain/{}/"), ("runs", "/runs/domain/{}/"),
                     ("knowledge", "/knowledge/domain/{}/")]:
        response = client_logged_in.get(domain.get_absolute_url(), {"tab": tab})
        assertContains(response, f'hx-get="{url.format(domain.pk)}"')


def test_it_renders_the_task_tab(client_logged_in, domain):
    response = client_logged_in.get(domain.get_absolute_url(), {"tab": "task"})

    assert response.status_code == 200
    assertContains(response, 'class="active" data-tab="task"')


def test_it_edits_program_md_in_place(client_logged_in, domain, workspace):
    url = reverse("domains:file", args=[domain.pk, "program"])

    editor = client_logged_in.get(url, {"edit": "1"}, headers={"HX-Request": "true"})
    assertTemplateUsed(editor, "domains/partials/domain_file.html")
    assertContains(editor, "<textarea")
    saved = client_logged_in.post(url, {"text": "# Goal\nbeat 3.0"}, headers={"HX-Request": "true"})

    assert saved.status_code == 200
    assertNotContains(saved, "<textarea")
    assertContains(saved, "beat 3.0")
    assert (workspace / "PROGRAM.md").read_text() == "# Goal\nbeat 3.0\n"


def test_it_saves_setup_md_without_htmx_and_redirects(client_logged_in, domain, workspace):
    response = client_logged_in.post(reverse("domains:file", args=[domain.pk, "setup"]), {"text": "## Dataset\n"})

    assert response.status_code == 302 and response.url == domain.get_absolute_url()
    assert (workspace / "SETUP.md").read_text() == "## Dataset\n"


def test_it_returns_404_for_an_unknown_file_or_domain(client_logged_in, domain):
    assert client_logged_in.get(reverse("domains:file", args=[domain.pk, "secrets"])).status_code == 404
    assert client_logged_in.get(reverse("domains:detail", args=[domain.pk + 1])).status_code == 404

import pytest
from django.contrib.messages import get_messages
from django.urls import reverse

from dojo_site.auth import token_hash
from domains.models import ApiToken, CurrentDomain, Domain, Task, TaskTool
from domains.services import domain_create

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin_client_(client, django_user_model):
    admin = django_user_model.objects.create_superuser(username="root", password="pw-for-tests-only")
    client.force_login(admin)
    client.admin = admin
    return client


@pytest.fixture
def domain(workspace):
    domain = domain_create(name="houses", task_type="regression", workspace=workspace)
    TaskTool.objects.create(
        task=domain.task, name="load_data", code="def load_data(): ...", code_sha256="a" * 64,
        entrypoint="load_data", origin="template",
    )
    return domain


@pytest.mark.parametrize("model", [Domain, Task, TaskTool, ApiToken, CurrentDomain])
def test_it_lists_searches_and_filters_each_model(admin_client_, domain, model):
    url = reverse(f"admin:domains_{model._meta.model_name}_changelist")

    assert admin_client_.get(url).status_code == 200
    assert admin_client_.get(url, {"q": "houses"}).status_code == 200


@pytest.mark.parametrize("model", [Domain, Task, TaskTool, CurrentDomain])
def test_it_opens_each_change_page(admin_client_, domain, model):
    obj = model.objects.first()

    assert admin_client_.get(reverse(f"admin:domains_{model._meta.model_name}_change", args=[obj.pk])).status_code == 200


@pytest.mark.parametrize("model", [Domain, Task, TaskTool])
def test_it_offers_no_add_for_rows_the_system_writes(admin_client_, model):
    assert admin_client_.get(reverse(f"admin:domains_{model._meta.model_name}_add")).status_code == 403


def test_it_keeps_machine_fields_read_only(admin_client_, domain):
    task_form = admin_client_.get(reverse("admin:domains_task_change", args=[domain.task.pk])).context["adminform"]
    tool = TaskTool.objects.get()
    tool_form = admin_client_.get(reverse("admin:domains_tasktool_change", args=[tool.pk])).context["adminform"]

    assert {"fingerprint", "frozen_at", "snapshot_path"} <= set(task_form.readonly_fields)
    assert "config" not in task_form.readonly_fields  # editable while not frozen
    assert {"code_sha256", "verified_ok", "verified_at", "origin"} <= set(tool_form.readonly_fields)
    assert "code" not in tool_form.readonly_fields  # editable while not frozen


def test_it_saves_an_edited_tool_as_a_new_version(admin_client_, domain):
    tool = TaskTool.objects.get()
    url = reverse("admin:domains_tasktool_change", args=[tool.pk])

    response = admin_client_.post(url, {"code": "def load_data():\n    return 1, 2, 3, 4\n"})

    assert response.status_code == 302
    versions = list(TaskTool.objects.order_by("version").values_list("version", "is_current", "origin", "code"))
    assert versions == [
        (1, False, "template", "def load_data(): ..."),
        (2, True, "human", "def load_data():\n    return 1, 2, 3, 4\n"),
    ]


def test_it_refuses_tool_code_that_does_not_define_the_tool(admin_client_, domain):
    tool = TaskTool.objects.get()

    response = admin_client_.post(reverse("admin:domains_tasktool_change", args=[tool.pk]), {"code": "def other(): ..."})

    assert response.status_code == 200
    assert "does not define a top-level function load_data()" in str(response.context["adminform"].form.errors)
    assert TaskTool.objects.count() == 1


def test_it_locks_the_contract_of_a_frozen_task(admin_client_, domain):
    from django.utils import timezone

    Task.objects.filter(pk=domain.task.pk).update(frozen_at=timezone.now())

    form = admin_client_.get(reverse("admin:domains_task_change", args=[domain.task.pk])).context["adminform"]
    assert {"config", "task_type", "primary_metric"} <= set(form.readonly_fields)
    tool = TaskTool.objects.get()
    tool_form = admin_client_.get(reverse("admin:domains_tasktool_change", args=[tool.pk])).context["adminform"]
    assert "code" in tool_form.readonly_fields


def test_it_creates_a_token_and_shows_it_only_once(admin_client_):
    response = admin_client_.post(
        reverse("admin:domains_apitoken_add"), {"user": admin_client_.admin.pk, "name": "laptop"}, follow=True
    )

    token = ApiToken.objects.get()
    shown = [str(m) for m in get_messages(response.wsgi_request)]
    plain = next(word for m in shown for word in m.split() if word.startswith("dojo_"))
    assert token.token_hash == token_hash(plain)
    assert token.prefix == plain[:12]
    assert plain not in admin_client_.get(reverse("admin:domains_apitoken_change", args=[token.pk])).content.decode()
    api = admin_client_.__class__()
    assert api.get("/api/domains", headers={"Authorization": f"Bearer {plain}"}).status_code == 200


def test_it_revokes_tokens_with_an_admin_action(admin_client_):
    from domains.services import token_create

    token, plain = token_create(user=admin_client_.admin)

    admin_client_.post(
        reverse("admin:domains_apitoken_changelist"),
        {"action": "revoke_selected", "_selected_action": [token.pk]},
    )

    token.refresh_from_db()
    assert token.revoked_at is not None
    assert admin_client_.__class__().get("/api/domains", headers={"Authorization": f"Bearer {plain}"}).status_code == 401

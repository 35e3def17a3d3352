"""Owners, members and roles, two users at a time, for every endpoint family: domains, task,
experiments, runs, knowledge, the admin and the agent tools (domains/permissions.py)."""

import json

import pytest
from django.urls import reverse

from agentrun.tools import tool_call
from domains.models import Domain, DomainMember
from domains.services import domain_create
from tests.access import CLAIM, DOMAIN_NAME, HOLDOUT_VALUE, HYPOTHESIS, world_build

pytestmark = pytest.mark.django_db


@pytest.fixture
def world(django_user_model, workspace):
    return world_build(django_user_model, workspace)


def _as(client, user):
    client.force_login(user)
    return client


def _items(response) -> list:
    """A list answer, paginated ({"items": [...], "count": n}) or not."""
    body = response.json()
    return body["items"] if isinstance(body, dict) else body


def _json(client, method: str, url: str, body: dict | None = None):
    if body is None:
        return getattr(client, method)(url)
    return getattr(client, method)(url, json.dumps(body), content_type="application/json")


# --- domains ------------------------------------------------------------------------------------


def test_it_makes_the_creator_the_owner(client, other_user, tmp_path):
    for name, via in (("by-api", "api"), ("by-web", "web")):
        folder = tmp_path / name
        folder.mkdir()
        _as(client, other_user)
        if via == "api":
            response = _json(client, "post", "/api/domains", {"name": name, "task_type": "regression", "workspace": str(folder)})
            assert response.status_code == 201
            assert response.json()["owner"] == other_user.username
        else:
            response = client.post(reverse("domains:new"), {"name": name, "task_type": "regression", "workspace": str(folder)})
            assert response.status_code == 302
        assert Domain.objects.get(name=name).owner == other_user


def test_it_lists_only_the_domains_a_user_may_see(client, world, tmp_path):
    sams = domain_create(name="sams-domain", task_type="binary", workspace=tmp_path, owner=world.stranger)
    _as(client, world.stranger)
    assert [d["name"] for d in _items(client.get("/api/domains"))] == [sams.name]
    page = client.get(reverse("domains:list")).content.decode()
    assert "sams-domain" in page and DOMAIN_NAME not in page
    _as(client, world.viewer)
    assert [d["name"] for d in _items(client.get("/api/domains"))] == [DOMAIN_NAME]


def test_it_lets_only_the_owner_change_or_delete_a_domain(client, world):
    url = f"/api/domains/{world.domain.pk}"
    for user in (world.viewer, world.editor):
        _as(client, user)
        response = _json(client, "patch", url, {"description": "mine now"})
        assert response.status_code == 403
        assert "owner" in response.json()["detail"]
        assert client.delete(url).status_code == 403
    _as(client, world.stranger)
    assert _json(client, "patch", url, {"description": "mine now"}).status_code == 404
    assert client.delete(url).status_code == 404
    world.domain.refresh_from_db()
    assert world.domain.description == ""
    _as(client, world.owner)
    assert _json(client, "patch", url, {"description": "olga's goal"}).status_code == 200


def test_it_manages_members_through_the_api(client, world, django_user_model):
    newcomer = django_user_model.objects.create_user(username="nina")
    url = f"/api/domains/{world.domain.pk}/members"
    _as(client, world.editor)
    assert _json(client, "post", url, {"username": "nina", "role": "editor"}).status_code == 403
    assert client.delete(url + "?username=vera").status_code == 403
    _as(client, world.owner)
    response = _json(client, "post", url, {"username": "nina", "role": "viewer"})
    assert response.status_code == 201
    assert response.json()["role"] == "viewer"
    assert _json(client, "post", url, {"username": "nina", "role": "editor"}).status_code == 201
    assert DomainMember.objects.get(user=newcomer).role == "editor"
    assert _json(client, "post", url, {"username": "nobody-here", "role": "viewer"}).status_code == 404
    assert _json(client, "post", url, {"username": "olga", "role": "viewer"}).status_code == 422
    assert _json(client, "post", url, {"username": "nina", "role": "owner"}).status_code == 422
    _as(client, world.viewer)
    assert sorted(m["username"] for m in _items(client.get(url))) == ["eddie", "nina", "vera"]
    _as(client, world.owner)
    assert client.delete(url + "?username=nina").status_code == 204
    assert client.delete(url + "?username=nina").status_code == 404
    _as(client, newcomer)
    assert client.get(f"/api/domains/{world.domain.pk}").status_code == 404


def test_it_manages_members_on_the_domain_page(client, world, django_user_model):
    django_user_model.objects.create_user(username="nina")
    add = reverse("domains:member_add", args=[world.domain.pk])
    _as(client, world.editor)
    assert client.post(add, {"username": "nina", "role": "viewer"}).status_code == 403
    _as(client, world.owner)
    response = client.post(add, {"username": "nina", "role": "viewer"})
    assert response.status_code == 302
    page = client.get(reverse("domains:detail", args=[world.domain.pk]) + "?tab=settings").content.decode()
    assert "nina" in page and 'id="member-form"' in page
    error = client.post(add, {"username": "ghost", "role": "viewer"})
    assert error.status_code == 422 and "no user named" in error.content.decode()
    assert client.post(reverse("domains:member_remove", args=[world.domain.pk, "nina"])).status_code == 302
    assert not DomainMember.objects.filter(user__username="nina").exists()
    _as(client, world.viewer)
    page = client.get(reverse("domains:detail", args=[world.domain.pk]) + "?tab=settings").content.decode()
    assert "eddie" in page and 'id="member-form"' not in page and 'id="settings-form"' not in page


def test_it_lets_an_editor_write_program_md_but_not_setup_md(client, world, workspace):
    _as(client, world.editor)
    program = client.post(reverse("domains:file", args=[world.domain.pk, "program"]), {"text": "# by eddie\n"})
    assert program.status_code == 302
    assert (workspace / "PROGRAM.md").read_text() == "# by eddie\n"
    setup = client.post(reverse("domains:file", args=[world.domain.pk, "setup"]), {"text": "# by eddie\n"})
    assert setup.status_code == 403
    assert (workspace / "SETUP.md").read_text() == "# SETUP.md\n"
    _as(client, world.viewer)
    assert client.post(reverse("domains:file", args=[world.domain.pk, "program"]), {"text": "x"}).status_code == 403
    assert (workspace / "PROGRAM.md").read_text() == "# by eddie\n"


# --- task ---------------------------------------------------------------------------------------


def test_it_shows_the_task_to_members_and_leaves_its_actions_to_the_owner(client, world):
    base = f"/api/domains/{world.domain.pk}/task"
    for user in (world.viewer, world.editor):
        _as(client, user)
        assert client.get(base).status_code == 200
        assert _json(client, "patch", base, {"config": {"seed": 7}}).status_code == 403
        assert client.post(base + "/freeze").status_code == 403
        assert client.post(reverse("domains:task_action", args=[world.domain.pk, "config"])).status_code == 403
    _as(client, world.stranger)
    assert client.get(base).status_code == 404
    _as(client, world.owner)
    assert _json(client, "patch", base, {"config": {"seed": 7}}).status_code == 200


# --- experiments --------------------------------------------------------------------------------


def test_it_lets_editors_run_experiments_and_viewers_only_read(client, world):
    url = f"/api/domains/{world.domain.pk}/experiments"
    _as(client, world.viewer)
    assert [e["hypothesis"] for e in _items(client.get(url))] == [HYPOTHESIS]
    assert _json(client, "post", url, {"code": "def train(): ..."}).status_code == 403
    assert client.post(reverse("experiments:reproduce", args=[world.experiment.pk])).status_code == 403
    _as(client, world.editor)
    # Past the permission check: refused for the unfrozen task, not for the user.
    response = _json(client, "post", url, {"code": "def train(): ..."})
    assert response.status_code == 409, response.content


def test_it_blanks_holdout_values_for_viewers_when_the_owner_hides_them(client, world):
    # Pages round the value; the gap (holdout − validation = −1.3765…) would give it away too.
    exp, marker, gap = world.experiment, str(HOLDOUT_VALUE)[:6], "-1.37"
    pages = [
        f"/api/experiments/{exp.pk}",
        f"/api/domains/{world.domain.pk}/experiments",
        reverse("experiments:detail", args=[exp.pk]),
        reverse("experiments:domain_list", args=[world.domain.pk]),
    ]
    _as(client, world.viewer)
    assert all(marker in client.get(url).content.decode() for url in pages)

    _as(client, world.owner)
    response = _json(client, "patch", f"/api/domains/{world.domain.pk}", {"hide_holdout_from_viewers": True})
    assert response.json()["hide_holdout_from_viewers"] is True

    _as(client, world.viewer)
    for url in pages:
        response = client.get(url)
        assert response.status_code == 200
        assert marker not in response.content.decode() and gap not in response.content.decode(), url
    shown = client.get(f"/api/experiments/{exp.pk}").json()
    assert (shown["holdout_metrics"], shown["holdout_primary_value"], shown["holdout_ci"]) == ({}, None, {})
    assert shown["metrics"] == {"rmse": 1.5}
    assert [a["path"] for a in shown["artifacts"]] == ["train/notes.txt"]
    assert client.get(f"/api/experiments/{exp.pk}/artifacts/{world.holdout_artifact.pk}").status_code == 404
    assert client.get(reverse("experiments:artifact", args=[exp.pk, world.holdout_artifact.pk])).status_code == 404
    assert client.get(f"/api/domains/{world.domain.pk}/experiments?sort=holdout").status_code == 403
    exp.refresh_from_db()
    assert exp.holdout_primary_value == HOLDOUT_VALUE  # blanked for the page, never in the database

    _as(client, world.editor)
    assert all(marker in client.get(url).content.decode() for url in pages)
    assert client.get(f"/api/experiments/{exp.pk}/artifacts/{world.holdout_artifact.pk}").status_code == 200


# --- runs ---------------------------------------------------------------------------------------


def test_it_lets_editors_start_and_stop_runs(client, world):
    _as(client, world.viewer)
    assert _json(client, "post", "/api/runs", {"domain_id": world.domain.pk}).status_code == 403
    assert client.post(f"/api/runs/{world.run.pk}/stop").status_code == 403
    assert client.post(reverse("agentrun:start", args=[world.domain.pk])).status_code == 403
    assert 'id="run-start-form"' not in client.get(reverse("agentrun:domain_list", args=[world.domain.pk])).content.decode()
    _as(client, world.editor)
    assert _json(client, "post", "/api/runs", {"domain_id": world.domain.pk}).status_code == 409  # not frozen
    assert client.post(f"/api/runs/{world.run.pk}/stop").status_code == 409  # already finished
    _as(client, world.stranger)
    assert _items(client.get("/api/runs")) == []
    assert DOMAIN_NAME not in client.get(reverse("agentrun:list")).content.decode()


def test_it_runs_agent_tools_with_the_creators_rights(world):
    run = world.run
    run.created_by = world.editor
    run.save()
    listed = tool_call(run=run, name="list_experiments", arguments={})
    assert listed["ok"], listed
    wrote = tool_call(run=run, name="write_knowledge", arguments={"context": "ctx", "claim": "eddie's claim"})
    assert wrote["ok"], wrote

    DomainMember.objects.filter(user=world.editor).update(role="viewer")
    refused = tool_call(run=run, name="write_knowledge", arguments={"context": "ctx", "claim": "another claim"})
    assert not refused["ok"] and "editor" in refused["error"]
    assert tool_call(run=run, name="list_experiments", arguments={})["ok"]

    DomainMember.objects.filter(user=world.editor).delete()
    gone = tool_call(run=run, name="list_experiments", arguments={})
    assert not gone["ok"] and "no domain" in gone["error"]

    run.created_by = None  # started by a management command: the local administrator
    run.save()
    assert tool_call(run=run, name="list_experiments", arguments={})["ok"]


# --- knowledge ----------------------------------------------------------------------------------


def test_it_keeps_knowledge_inside_the_domains_a_user_sees(client, world):
    _as(client, world.stranger)
    assert _items(client.get("/api/knowledge/search?query=gradient+boosting")) == []
    assert _items(client.get("/api/knowledge")) == []
    assert client.get(f"/api/knowledge/{world.atom.pk}").status_code == 404
    page = client.get(reverse("knowledge:search") + "?q=gradient+boosting").content.decode()
    assert CLAIM not in page and DOMAIN_NAME not in page
    _as(client, world.viewer)
    assert [a["claim"] for a in _items(client.get("/api/knowledge/search?query=gradient+boosting"))] == [CLAIM]
    body = {"domain_id": world.domain.pk, "context": "c", "claim": "vera's claim"}
    assert _json(client, "post", "/api/knowledge", body).status_code == 403
    _as(client, world.editor)
    assert _json(client, "post", "/api/knowledge", body).status_code == 201


def test_it_leaves_global_knowledge_to_staff(client, world, user):
    body = {"context": "any tabular data", "claim": "scale features for linear models"}
    _as(client, world.owner)
    response = _json(client, "post", "/api/knowledge", body)
    assert response.status_code == 403 and "staff" in response.json()["detail"]
    _as(client, user)  # staff
    assert _json(client, "post", "/api/knowledge", body).status_code == 201
    _as(client, world.stranger)  # global atoms are everyone's to read
    assert [a["claim"] for a in _items(client.get("/api/knowledge"))] == [body["claim"]]


# --- admin --------------------------------------------------------------------------------------


def test_it_keeps_the_admin_to_staff_who_see_every_domain(client, world, user):
    _as(client, world.owner)
    assert client.get(reverse("admin:domains_domain_changelist")).status_code == 302  # to the admin login
    admin = type(user).objects.create_superuser(username="root-admin", password="pw")
    _as(client, admin)
    page = client.get(reverse("admin:domains_domain_changelist")).content.decode()
    assert DOMAIN_NAME in page
    change = client.get(reverse("admin:domains_domain_change", args=[world.domain.pk])).content.decode()
    assert "vera" in change and "History" in change or "domain change" in change.lower()


def test_it_shows_env_var_values_to_the_owner_only(client, world):
    from domains.services import domain_update

    domain_update(domain=world.domain, env_vars={"WANDB_API_KEY": "olgas-key"}, user=world.owner)
    _as(client, world.editor)
    assert client.get(f"/api/domains/{world.domain.pk}").json()["env_vars"] == {"WANDB_API_KEY": "(hidden)"}
    assert "olgas-key" not in client.get(f"/api/domains/{world.domain.pk}/history").content.decode()
    assert "olgas-key" not in client.get(reverse("domains:detail", args=[world.domain.pk]) + "?tab=settings").content.decode()
    _as(client, world.owner)
    assert client.get(f"/api/domains/{world.domain.pk}").json()["env_vars"] == {"WANDB_API_KEY": "olgas-key"}
    assert "olgas-key" in client.get(f"/api/domains/{world.domain.pk}/history").content.decode()


def test_it_offers_task_actions_to_the_owner_only(client, world):
    url = reverse("domains:task", args=[world.domain.pk])
    _as(client, world.editor)
    panel = client.get(url, HTTP_HX_REQUEST="true").content.decode()
    assert "task/verify/" not in panel and "task/tool/" not in panel and "task/import/" not in panel
    _as(client, world.owner)
    panel = client.get(url, HTTP_HX_REQUEST="true").content.decode()
    assert "task/verify/" in panel and "task/import/" in panel  # (no tools yet: no tool editors)


def test_it_narrows_admin_querysets_through_the_same_rule(world):
    """The admin is staff-only (and staff own everything), but its querysets ask permissions.py too,
    so they stay in step if a non-superuser ever gets admin access."""
    from django.contrib import admin as django_admin
    from django.test import RequestFactory

    from agentrun.models import AgentRun
    from domains.models import DomainChange, Task
    from experiments.models import Experiment
    from knowledge.models import KnowledgeAtom

    models = [Domain, Task, Experiment, AgentRun, KnowledgeAtom, DomainChange]
    for model in models:
        model_admin = django_admin.site._registry[model]
        for person, sees in ((world.stranger, False), (world.viewer, True)):
            request = RequestFactory().get("/admin/")
            request.user = person
            assert model_admin.get_queryset(request).exists() is (sees and model is not DomainChange), (model, person)
    from django.contrib.auth.models import Permission

    change = Permission.objects.get(codename="change_experiment")
    experiment_admin = django_admin.site._registry[Experiment]
    for person, allowed in ((world.viewer, False), (world.editor, True)):
        person.user_permissions.add(change)
        person = type(person).objects.get(pk=person.pk)  # fresh permission cache
        request = RequestFactory().get("/admin/")
        request.user = person
        assert experiment_admin.has_change_permission(request, world.experiment) is allowed, person

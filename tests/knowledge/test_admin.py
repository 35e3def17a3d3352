import pytest
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.urls import reverse

from knowledge.models import KnowledgeAtom
from knowledge.services import atom_retract, atom_write
from tests.factories import DomainFactory
from tests.knowledge.helpers import make_experiment

pytestmark = pytest.mark.django_db

CHANGELIST = reverse("admin:knowledge_knowledgeatom_changelist")


@pytest.fixture
def admin_client(client, django_user_model):
    admin = django_user_model.objects.create_superuser(username="root", password="pw-for-tests-only")
    client.force_login(admin)
    return client


@pytest.fixture
def domain():
    return DomainFactory()


def act(client, action, atoms, **extra):
    data = {"action": action, ACTION_CHECKBOX_NAME: [a.pk for a in atoms], **extra}
    return client.post(CHANGELIST, data, follow=True)


def test_it_lists_searches_and_shows_atoms(admin_client, domain):
    exp = make_experiment(domain)
    atom = atom_write(domain=domain, context="ctx", claim="Extra trees beats Ridge",
                      evidence=[(exp.pk, "supports")]).atom
    atom_write(domain=domain, context="ctx", claim="Lasso underfits")
    response = admin_client.get(CHANGELIST, {"q": "extra trees"})
    assert response.status_code == 200
    assert list(response.context["cl"].result_list) == [atom]
    assert admin_client.get(CHANGELIST, {"status__exact": "active"}).status_code == 200
    change = admin_client.get(reverse("admin:knowledge_knowledgeatom_change", args=[atom.pk]))
    assert change.status_code == 200
    assert "Extra trees beats Ridge" in change.content.decode()
    assert admin_client.get(reverse("admin:knowledge_knowledgeatom_add")).status_code == 403
    assert admin_client.get(reverse("admin:knowledge_evidence_changelist")).status_code == 200


def test_it_retracts_and_restores_from_the_list(admin_client, domain):
    a = atom_write(domain=domain, context="ctx", claim="Extra trees beats Ridge").atom
    b = atom_write(domain=domain, context="ctx", claim="Lasso underfits").atom
    act(admin_client, "retract", [a, b])
    assert set(KnowledgeAtom.objects.values_list("status", flat=True)) == {"retracted"}

    atom_write(domain=domain, context="ctx", claim="SVM is slow")
    response = act(admin_client, "restore", KnowledgeAtom.objects.all())
    assert KnowledgeAtom.objects.filter(status="active").count() == 3
    assert "is not retracted" in response.content.decode()  # the one that was never retracted


def test_it_merges_the_selected_atoms(admin_client, domain):
    a = atom_write(domain=domain, context="trees", claim="Random forest is strong", confidence=0.4).atom
    b = atom_write(domain=domain, context="ensembles", claim="Extra trees do well", confidence=0.7).atom
    act(admin_client, "merge", [a, b])
    merged = KnowledgeAtom.objects.get(status="active")
    assert (merged.supersedes, merged.version, merged.confidence) == (b, 2, 0.7)

    c = atom_write(domain=DomainFactory(), context="x", claim="Other domain").atom
    response = act(admin_client, "merge", [merged, c])
    assert "same domain" in response.content.decode()
    assert KnowledgeAtom.objects.filter(status="active").count() == 2


def test_it_sets_confidence_through_an_intermediate_form(admin_client, domain):
    a = atom_write(domain=domain, context="ctx", claim="Extra trees beats Ridge", confidence=0.5).atom
    b = atom_write(domain=domain, context="ctx", claim="Lasso underfits", confidence=0.5).atom
    atom_retract(atom=b)

    form_page = act(admin_client, "set_confidence", [a, b])
    assert "admin/knowledge/set_confidence.html" in [t.name for t in form_page.templates]
    assert KnowledgeAtom.objects.filter(confidence=0.5).count() == 2

    bad = act(admin_client, "set_confidence", [a, b], apply="1", confidence="1.7")
    assert "admin/knowledge/set_confidence.html" in [t.name for t in bad.templates]
    assert bad.context["form"].errors["confidence"]
    assert KnowledgeAtom.objects.filter(confidence=0.5).count() == 2

    act(admin_client, "set_confidence", [a, b], apply="1", confidence="0.85")
    assert list(KnowledgeAtom.objects.values_list("confidence", flat=True)) == [0.85, 0.85]

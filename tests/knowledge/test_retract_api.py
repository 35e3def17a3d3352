"""DELETE /api/knowledge/{id} retracts an atom (issue 11 item 7): kept as a record, not erased."""

import pytest
from django.test import Client

from domains.services import domain_member_set
from knowledge.models import KnowledgeAtom
from knowledge.services import atom_write
from tests.factories import DomainFactory

pytestmark = pytest.mark.django_db


def test_it_retracts_once_then_409(client_logged_in):
    domain = DomainFactory()
    atom = atom_write(domain=domain, context="ctx", claim="Extra trees beats Ridge").atom
    response = client_logged_in.delete(f"/api/knowledge/{atom.pk}")
    assert response.status_code == 200 and response.json()["status"] == "retracted"
    assert KnowledgeAtom.objects.get(pk=atom.pk).status == "retracted"
    again = client_logged_in.delete(f"/api/knowledge/{atom.pk}")
    assert again.status_code == 409 and "already retracted" in again.json()["detail"]
    assert client_logged_in.delete("/api/knowledge/999999").status_code == 404


def test_it_needs_the_editor_role_and_staff_for_global_atoms(other_user):
    domain = DomainFactory()
    atom = atom_write(domain=domain, context="ctx", claim="Lasso underfits").atom
    global_atom = atom_write(domain=None, context="any tabular task", claim="Scale before a linear model").atom
    bob = Client()
    bob.force_login(other_user)
    assert bob.delete(f"/api/knowledge/{atom.pk}").status_code == 404  # cannot see the domain
    domain_member_set(domain=domain, username=other_user.username, role="viewer")
    assert bob.delete(f"/api/knowledge/{atom.pk}").status_code == 403
    assert bob.delete(f"/api/knowledge/{global_atom.pk}").status_code == 403
    domain_member_set(domain=domain, username=other_user.username, role="editor")
    assert bob.delete(f"/api/knowledge/{atom.pk}").status_code == 200
    assert KnowledgeAtom.objects.get(pk=global_atom.pk).status == "active"

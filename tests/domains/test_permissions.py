"""domains/permissions.py: the one place that decides who sees and does what with a domain."""

import pytest

from dojo_site.errors import Forbidden, NotFound
from domains.models import DomainMember
from domains.permissions import (
    domain_get_for_user,
    domain_may,
    domain_role,
    domains_for_user,
    holdout_visible,
)
from tests.factories import DomainFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def people(django_user_model):
    make = django_user_model.objects.create_user
    return {
        "owner": make(username="owner"),
        "editor": make(username="editor"),
        "viewer": make(username="viewer"),
        "stranger": make(username="stranger"),
        "staff": make(username="staff", is_staff=True),
    }


@pytest.fixture
def domain(people):
    domain = DomainFactory(owner=people["owner"])
    DomainMember.objects.create(domain=domain, user=people["editor"], role="editor")
    DomainMember.objects.create(domain=domain, user=people["viewer"], role="viewer")
    return domain


def test_it_gives_each_person_their_role(people, domain):
    roles = {name: domain_role(person, domain) for name, person in people.items()}
    assert roles == {"owner": "owner", "editor": "editor", "viewer": "viewer", "stranger": None, "staff": "owner"}


def test_it_lists_only_visible_domains(people, domain):
    other = DomainFactory(owner=people["stranger"])
    ownerless = DomainFactory(owner=None)
    assert list(domains_for_user(people["viewer"])) == [domain]
    assert list(domains_for_user(people["stranger"])) == [other]
    assert set(domains_for_user(people["staff"])) == {domain, other, ownerless}


def test_it_allows_actions_by_role(people, domain):
    table = {
        "owner": {"view": True, "edit": True, "own": True},
        "editor": {"view": True, "edit": True, "own": False},
        "viewer": {"view": True, "edit": False, "own": False},
        "stranger": {"view": False, "edit": False, "own": False},
        "staff": {"view": True, "edit": True, "own": True},
    }
    for name, expected in table.items():
        got = {action: domain_may(people[name], domain, action) for action in expected}
        assert got == expected, name


def test_it_hides_holdout_from_viewers_only_when_the_owner_says_so(people, domain):
    assert holdout_visible(people["viewer"], domain)
    domain.hide_holdout_from_viewers = True
    domain.save()
    assert not holdout_visible(people["viewer"], domain)
    assert holdout_visible(people["editor"], domain)
    assert holdout_visible(people["owner"], domain)


def test_it_raises_not_found_for_the_unseen_and_forbidden_for_the_seen(people, domain):
    with pytest.raises(NotFound):
        domain_get_for_user(people["stranger"], domain.pk, "view")
    with pytest.raises(NotFound):
        domain_get_for_user(people["stranger"], domain.name, "own")
    with pytest.raises(Forbidden):
        domain_get_for_user(people["viewer"], domain.pk, "edit")
    with pytest.raises(Forbidden):
        domain_get_for_user(people["editor"], str(domain.pk), "own")
    assert domain_get_for_user(people["owner"], domain.name, "own") == domain
    with pytest.raises(NotFound):
        domain_get_for_user(people["staff"], 987654, "view")


def test_it_refuses_an_unknown_action(people, domain):
    with pytest.raises(ValueError):
        domain_may(people["owner"], domain, "delete-everything")


def test_it_gives_existing_domains_to_the_first_superuser(django_user_model):
    """The data migration: ownerless domains go to the first superuser (else staff, else stay null)."""
    from importlib import import_module

    from django.apps import apps

    migration = import_module("domains.migrations.0002_owners_members_history")
    ownerless = DomainFactory(owner=None)
    migration._give_existing_domains_an_owner(apps, None)
    ownerless.refresh_from_db()
    assert ownerless.owner is None  # nobody to give it to: staff-only
    django_user_model.objects.create_user(username="plain")
    boss = django_user_model.objects.create_superuser(username="boss", password="x")
    migration._give_existing_domains_an_owner(apps, None)
    ownerless.refresh_from_db()
    assert ownerless.owner == boss

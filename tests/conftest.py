import os

import pytest

# Playwright's sync API keeps an asyncio loop in the test thread; ORM calls in browser tests
# would raise SynchronousOnlyOperation without this (reference/stack.md §5.3).
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")


@pytest.fixture(autouse=True)
def dojo_home(tmp_path, settings):
    """Each test gets its own DOJO_HOME so snapshots and artifacts never leak between tests."""
    home = tmp_path / "dojo_home"
    home.mkdir()
    settings.DOJO_HOME = home
    return home


@pytest.fixture
def user(django_user_model):
    return django_user_model.objects.create_user(username="ada", password="pw-for-tests-only")


@pytest.fixture
def client_logged_in(client, user):
    client.force_login(user)
    return client


@pytest.fixture
def workspace(tmp_path):
    path = tmp_path / "workspace"
    path.mkdir()
    return path

import os

import pytest

# Playwright's sync API keeps an asyncio loop in the test thread; ORM calls in browser tests
# would raise SynchronousOnlyOperation without this (reference/stack.md §5.3).
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")


def shared_storage_at(storages: dict, folder) -> dict:
    """STORAGES with Dojo's shared storage ("dojo") in `folder` (a FileSystemStorage)."""
    dojo = {**storages["dojo"], "OPTIONS": {**storages["dojo"].get("OPTIONS", {}), "location": str(folder)}}
    return {**storages, "dojo": dojo}


@pytest.fixture(autouse=True)
def dojo_home(tmp_path, settings):
    """Each test gets its own DOJO_HOME so snapshots and artifacts never leak between tests."""
    home = tmp_path / "dojo_home"
    home.mkdir()
    settings.DOJO_HOME = home
    # The per-machine cache folder and the shared storage where settings.py puts them by default.
    settings.DOJO_CACHE_DIR = home / "cache"
    settings.STORAGES = shared_storage_at(settings.STORAGES, home / "shared")
    # Password hashing is deliberately slow; tests only need it to work.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    return home


@pytest.fixture(params=["orm", "redis"])
def broker(request, monkeypatch):
    """A fresh queue on each broker (the database, and this machine's Redis: DOJO_TEST_REDIS_URL) that
    this test process enqueues to; returns the env a worker needs to use the same."""
    import uuid

    from django_q.brokers import get_broker
    from django_q.conf import Conf

    redis_url = os.environ.get("DOJO_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    name = f"dojo-test-{uuid.uuid4().hex[:8]}"
    monkeypatch.setattr(Conf, "SYNC", False)
    monkeypatch.setattr(Conf, "CLUSTER_NAME", name)
    monkeypatch.setattr(Conf, "PREFIX", name)
    if request.param == "redis":
        redis = pytest.importorskip("redis", reason="the redis extra is not installed")
        try:
            redis.from_url(redis_url).ping()
        except redis.exceptions.ConnectionError:
            pytest.skip(f"no Redis at {redis_url} (start it: redis-server --daemonize yes)")
        monkeypatch.setattr(Conf, "ORM", None)
        monkeypatch.setattr(Conf, "REDIS", redis_url)
    yield {"DOJO_BROKER": request.param, "REDIS_URL": redis_url, "DOJO_QUEUE_NAME": name}
    if request.param == "redis":
        get_broker().delete_queue()
        get_broker(f"{name}-experiments").delete_queue()


@pytest.fixture
def user(django_user_model):
    """The local administrator (staff: owner of every domain, domains/permissions.py), as on a
    single-user install. Tests of who may see and do what use `other_user` and explicit roles."""
    return django_user_model.objects.create_user(username="ada", password="pw-for-tests-only", is_staff=True)


@pytest.fixture
def other_user(django_user_model):
    """A second, non-staff user with no role on any domain until a test gives one."""
    return django_user_model.objects.create_user(username="bob", password="pw-for-tests-only")


@pytest.fixture
def client_logged_in(client, user):
    client.force_login(user)
    return client


@pytest.fixture
def workspace(tmp_path):
    path = tmp_path / "workspace"
    path.mkdir()
    return path


# --- Browser tests (Debian chromium + Playwright's sync API; reference/stack.md §5) ---------------

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="session")
def browser():
    """One headless Chromium for the session. Skips when Debian's chromium is not installed."""
    import shutil

    executable = shutil.which("chromium")
    if not executable:
        pytest.skip("chromium not found on PATH: install Debian's chromium (`make browser-deps` or apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_ARGS)
        yield instance
        instance.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    new_page = context.new_page()
    new_page.set_default_timeout(5000)
    yield new_page
    context.close()


@pytest.fixture
def logged_in_page(page, live_server, transactional_db, user):
    """A page logged in as `user` (through the login form) against `live_server`, at the domains list.

    Tests build URLs from `live_server.url`; the DB is transactional so the server thread sees rows."""
    page.goto(f"{live_server.url}/login/")
    page.fill("#id_username", user.username)
    page.fill("#id_password", "pw-for-tests-only")
    page.click("button[type=submit]")
    page.wait_for_url(f"{live_server.url}/domains/")
    return page


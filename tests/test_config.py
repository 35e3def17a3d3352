"""GET /api/config, `dojo_config show` and `dojo_version`: Dojo's version and its non-secret
settings only (issue 11 item 7)."""

import io
import json

import pytest
from django.core.management import call_command
from django.db import connection

pytestmark = pytest.mark.django_db

SECRETS = {
    "ANTHROPIC_API_KEY": "sk-ant-config-test-secret",
    "MLFLOW_TRACKING_URI": "https://user:mlflow-password-in-url@mlflow.example/",
}


@pytest.fixture
def secrets(settings, monkeypatch):
    for name, value in SECRETS.items():
        setattr(settings, name, value)
        monkeypatch.setenv(name, value)
    settings.DATABASES["default"]["PASSWORD"] = "db-password-for-the-config-test"
    # The real SECRET_KEY (changing it would log the test client out).
    return [*SECRETS.values(), "db-password-for-the-config-test", settings.SECRET_KEY]


def test_the_api_shows_the_version_and_settings_but_no_secret(client_logged_in, secrets, settings):
    response = client_logged_in.get("/api/config")
    assert response.status_code == 200
    body = response.json()
    assert body["version"] == "0.1.0" and body["DOJO_HOME"] == str(settings.DOJO_HOME)
    assert body["DOJO_CLAUDE_MODEL"] == settings.DOJO_CLAUDE_MODEL and body["database_engine"] == connection.vendor.replace("sqlite", "sqlite3")
    assert body["mlflow_tracking_uri_set"] is True
    text = response.content.decode()
    for secret in secrets:
        assert secret not in text
    assert not {"SECRET_KEY", "ANTHROPIC_API_KEY", "MLFLOW_TRACKING_URI", "DATABASES"} & set(body)


def test_the_api_needs_authentication(client):
    assert client.get("/api/config").status_code == 401


def test_dojo_config_show_and_dojo_version(secrets):
    out = io.StringIO()
    call_command("dojo_config", "show", stdout=out)
    assert "DOJO_TRAIN_TIMEOUT_SECONDS" in out.getvalue()
    as_json = io.StringIO()
    call_command("dojo_config", "show", "--json", stdout=as_json)
    for secret in secrets:
        assert secret not in out.getvalue() and secret not in as_json.getvalue()
    assert json.loads(as_json.getvalue())["version"] == "0.1.0"
    version = io.StringIO()
    call_command("dojo_version", stdout=version)
    assert version.getvalue().startswith("Dojo 0.1.0 (Python 3.")


@pytest.mark.parametrize("command", ["dojo_task", "dojo_run", "dojo_knowledge", "dojo_config"])
def test_dojo_commands_print_dojos_version(command):
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "manage.py", command, "--version"], capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0 and done.stdout.startswith("Dojo 0.1.0 (Django 5."), done.stdout + done.stderr

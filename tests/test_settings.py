import re
import stat
from pathlib import Path

import pytest
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from dojo_site import checks
from dojo_site.settings import database_from_url, env_bool, secret_key_load

ROOT = Path(settings.BASE_DIR)


def test_it_parses_an_absolute_sqlite_url(tmp_path):
    db = database_from_url(f"sqlite:///{tmp_path}/dojo.sqlite3")

    assert db["ENGINE"] == "dojo_site.db.sqlite3"
    assert db["NAME"] == tmp_path / "dojo.sqlite3"
    assert db["OPTIONS"]["transaction_mode"] == "IMMEDIATE"
    assert "journal_mode=WAL" in db["OPTIONS"]["init_command"]


def test_it_parses_a_relative_sqlite_url(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)

    assert database_from_url("sqlite:///var/x.sqlite3")["NAME"] == tmp_path / "var" / "x.sqlite3"


@pytest.mark.parametrize("scheme", ["postgres", "postgresql"])
def test_it_parses_a_postgres_url_with_escaped_parts(scheme):
    db = database_from_url(f"{scheme}://dojo:p%40ss%2Fw@db.example:6543/dojo_prod")

    assert db["ENGINE"] == "dojo_site.db.postgresql"
    assert (db["NAME"], db["USER"], db["PASSWORD"], db["HOST"], db["PORT"]) == (
        "dojo_prod", "dojo", "p@ss/w", "db.example", "6543"
    )


def test_it_leaves_the_postgres_port_empty_when_not_given():
    assert database_from_url("postgres://u@localhost/dojo")["PORT"] == ""


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("mysql://u:p@h/db", "scheme 'mysql' is not supported"),
        ("postgres://u:p@h:5432/", "needs a database name"),
        ("sqlite:///", "needs a file path"),
    ],
)
def test_it_refuses_a_bad_database_url(url, message):
    with pytest.raises(ImproperlyConfigured, match=message):
        database_from_url(url)


def test_it_generates_the_secret_key_once_and_keeps_it_private(tmp_path, monkeypatch):
    monkeypatch.delenv("SECRET_KEY", raising=False)

    first = secret_key_load(tmp_path)

    assert len(first) >= 50
    assert secret_key_load(tmp_path) == first
    assert stat.S_IMODE((tmp_path / "secret_key").stat().st_mode) == 0o600


def test_it_prefers_the_secret_key_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("SECRET_KEY", "from-env")

    assert secret_key_load(tmp_path) == "from-env"
    assert not (tmp_path / "secret_key").exists()


def test_it_refuses_a_boolean_it_cannot_read(monkeypatch):
    monkeypatch.setenv("DOJO_TEST_FLAG", "maybe")

    with pytest.raises(ImproperlyConfigured, match="DOJO_TEST_FLAG must be a boolean"):
        env_bool("DOJO_TEST_FLAG", False)


def test_it_documents_every_environment_variable_in_env_example():
    source = (ROOT / "dojo_site" / "settings.py").read_text()
    used = set(re.findall(r"""env_\w+\(\s*["']([A-Z0-9_]+)["']""", source))
    used |= set(re.findall(r"""os\.environ(?:\.get\(|\[)\s*["']([A-Z0-9_]+)["']""", source))
    documented = {}
    for line in (ROOT / ".env.example").read_text().splitlines():
        match = re.match(r"^#?\s*([A-Z][A-Z0-9_]*)=", line)
        if match:
            documented[match.group(1)] = line
    assert used, "found no variables in settings.py"
    assert sorted(used - set(documented)) == []
    # Each variable has its one-line meaning in the comment line above it.
    lines = (ROOT / ".env.example").read_text().splitlines()
    for name in used:
        index = next(i for i, line in enumerate(lines) if re.match(rf"^#?\s*{name}=", line))
        assert lines[index - 1].startswith("# ") and len(lines[index - 1]) > 10, name


def test_it_warns_when_bwrap_is_missing_and_says_how_to_install_it(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty PATH: no bwrap on it

    warnings = checks.bwrap_check(None)

    assert [w.id for w in warnings] == ["dojo.W001"]
    assert "apt-get install bubblewrap" in warnings[0].hint


def test_it_does_not_warn_when_bwrap_is_on_the_path(monkeypatch, tmp_path):
    fake = tmp_path / "bwrap"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))

    assert checks.bwrap_check(None) == []

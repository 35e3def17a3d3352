import pytest


@pytest.mark.django_db
@pytest.mark.parametrize("path", ["/api/domains", "/api/knowledge", "/api/runs"])
def test_it_answers_413_json_to_a_body_over_the_limit(client_logged_in, settings, path):
    body = '{"name": "' + "x" * (settings.DATA_UPLOAD_MAX_MEMORY_SIZE + 10) + '"}'
    answer = client_logged_in.post(path, body, content_type="application/json")
    assert answer.status_code == 413
    assert "too large" in answer.json()["detail"]


def _manage(env_changes: dict, *args: str):
    import os
    import subprocess
    import sys

    from django.conf import settings

    env = {k: v for k, v in os.environ.items() if k not in ("SECRET_KEY", "DATABASE_URL")} | env_changes
    return subprocess.run(
        [sys.executable, str(settings.BASE_DIR / "manage.py"), *args],
        env=env, capture_output=True, text=True, timeout=120,
    )


def test_it_refuses_to_start_on_postgresql_without_a_secret_key(tmp_path):
    done = _manage({"DATABASE_URL": "postgres://postgres@127.0.0.1:5432/dojo_unused", "DOJO_HOME": str(tmp_path)},
                   "check")
    assert done.returncode != 0
    assert "SECRET_KEY must be set" in done.stderr
    assert "Traceback" not in done.stderr


def test_it_starts_on_postgresql_with_a_secret_key(tmp_path):
    done = _manage({"DATABASE_URL": "postgres://postgres@127.0.0.1:5432/dojo_unused", "DOJO_HOME": str(tmp_path),
                    "SECRET_KEY": "k" * 50}, "check")
    assert "SECRET_KEY must be set" not in done.stderr

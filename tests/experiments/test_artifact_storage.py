"""Artifacts live in the shared storage (STORAGES["dojo"]), addressed by sha256, and are served
from it: any web node that shares the storage serves them; the same bytes are one object; and
the split between the machine's cache folder and the shared folder hides nothing less from the
sandbox than DOJO_HOME alone did."""

import hashlib
import json
import shutil
import tempfile
from pathlib import Path

import pytest
from django.urls import reverse

from experiments.harness import pool
from experiments.models import Artifact
from experiments.services import experiment_run
from tests.conftest import shared_storage_at

REPORT = b"model report\n" + bytes(range(256))

WRITES_A_REPORT = f"""
def train(X_train, y_train, X_test, *, artifacts_dir):
    (artifacts_dir / "report.bin").write_bytes({REPORT!r})
    from sklearn.linear_model import LinearRegression
    return LinearRegression().fit(X_train, y_train).predict(X_test)
"""


def _downloads(client, exp, artifact):
    page = client.get(reverse("experiments:artifact", args=[exp.pk, artifact.pk]))
    api = client.get(f"/api/experiments/{exp.pk}/artifacts/{artifact.pk}")
    return page, api


def _stored_objects(folder: Path) -> list[Path]:
    return [f for f in (folder / "artifacts").rglob("*") if f.is_file()]


def test_it_serves_an_artifact_from_a_second_web_node(client_logged_in, diabetes, settings, tmp_path, dojo_home):
    exp = experiment_run(domain=diabetes, train_code=WRITES_A_REPORT, hypothesis="writes a report")
    assert exp.state == "completed", exp.error
    artifact = exp.artifacts.get(path="train/report.bin")
    assert artifact.sha256 == hashlib.sha256(REPORT).hexdigest()
    assert artifact.storage_name == f"artifacts/{artifact.sha256[:2]}/{artifact.sha256}"
    assert (dojo_home / "shared" / artifact.storage_name).read_bytes() == REPORT
    assert not (dojo_home / "artifacts").exists()  # nothing kept per experiment on the worker's disk

    # Another machine: its own DOJO_HOME and cache folder, the same database and shared storage.
    settings.DOJO_HOME = tmp_path / "web-node-2"
    settings.DOJO_CACHE_DIR = tmp_path / "web-node-2" / "cache"
    settings.DOJO_HOME.mkdir()
    page, api = _downloads(client_logged_in, exp, artifact)
    for response in (page, api):
        assert response.status_code == 200
        assert b"".join(response.streaming_content) == REPORT
        assert response["Content-Type"] == "application/octet-stream"
        assert response["Content-Disposition"] == 'attachment; filename="report.bin"'
        assert response["Content-Length"] == str(len(REPORT))
    assert page["X-Content-Type-Options"] == "nosniff"
    # evaluate()'s diagnostics come from the same storage.
    svg = exp.artifacts.get(path__endswith="diagnostics.svg")
    inline = client_logged_in.get(reverse("experiments:artifact", args=[exp.pk, svg.pk]), {"inline": "1"})
    assert inline.status_code == 200 and inline["Content-Type"] == "image/svg+xml"
    assert "attachment" not in inline["Content-Disposition"]
    assert b"<svg" in b"".join(inline.streaming_content)


def test_it_stores_the_same_bytes_once(diabetes, dojo_home):
    first = experiment_run(domain=diabetes, train_code=WRITES_A_REPORT, hypothesis="first")
    second = experiment_run(domain=diabetes, train_code=WRITES_A_REPORT, hypothesis="second")
    assert first.state == second.state == "completed"
    one, two = (e.artifacts.get(path="train/report.bin") for e in (first, second))
    assert one.pk != two.pk and one.storage_name == two.storage_name
    objects = _stored_objects(dojo_home / "shared")
    assert len(objects) == Artifact.objects.values("storage_name").distinct().count()
    assert [f.read_bytes() for f in objects].count(REPORT) == 1
    assert not list((dojo_home / "cache" / "staging").glob("a*"))  # staging copies are gone (to trash)


def test_it_answers_404_when_the_stored_object_is_missing(client_logged_in, diabetes, dojo_home):
    exp = experiment_run(domain=diabetes, train_code=WRITES_A_REPORT, hypothesis="loses its report")
    artifact = exp.artifacts.get(path="train/report.bin")
    (dojo_home / "shared" / artifact.storage_name).unlink()
    page, api = _downloads(client_logged_in, exp, artifact)
    assert page.status_code == 404
    assert api.status_code == 404 and api["Content-Type"].startswith("application/json")
    assert "missing from the shared storage" in json.dumps(api.json())


def test_it_still_refuses_holdout_artifacts_to_a_viewer(client_logged_in, diabetes, other_user):
    from django.test import Client

    from domains.models import DomainMember

    diabetes.hide_holdout_from_viewers = True
    diabetes.save()
    exp = experiment_run(domain=diabetes, train_code=WRITES_A_REPORT, hypothesis="holdout plots")
    stored = exp.artifacts.get(path="train/report.bin")
    # The frozen evaluate draws no holdout charts; a stored holdout artifact stands in for one.
    holdout = Artifact.objects.create(
        experiment=exp, path="evaluate/holdout/residuals.bin", size=stored.size, source="evaluate",
        content_type="application/octet-stream", sha256=stored.sha256, storage_name=stored.storage_name,
    )
    DomainMember.objects.create(domain=diabetes, user=other_user, role="viewer")
    viewer = Client()
    viewer.force_login(other_user)
    page, api = _downloads(viewer, exp, holdout)
    assert page.status_code == api.status_code == 404
    assert [r.status_code for r in _downloads(viewer, exp, stored)] == [200, 200]
    assert [r.status_code for r in _downloads(client_logged_in, exp, holdout)] == [200, 200]  # the owner


PEEKS = """
import json, os

def train(X_train, y_train, X_test, *, artifacts_dir):
    seen = {}
    for path in json.loads(os.environ["PEEK_AT"]):
        try:
            seen[path] = open(path).read()
        except OSError as exc:
            seen[path] = type(exc).__name__
    print("SEEN", json.dumps(seen))
    from sklearn.linear_model import LinearRegression
    return LinearRegression().fit(X_train, y_train).predict(X_test)
"""


@pytest.fixture
def outside_tmp(settings):
    """A folder outside /tmp (which every sandbox replaces with its own, hiding anything there
    anyway), under the git-ignored var/ of the checkout."""
    (Path(settings.BASE_DIR) / "var").mkdir(exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="test-folders-", dir=Path(settings.BASE_DIR) / "var"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def test_it_hides_cache_and_shared_folders_outside_dojo_home_from_train(diabetes, settings, outside_tmp):
    """A cluster puts the cache folder and the shared storage anywhere: what they hold (other
    experiments' job folders, every stored artifact, evaluate's holdout plots included) stays
    as hidden from train() as it was inside DOJO_HOME."""
    cache, shared = outside_tmp / "machine-cache", outside_tmp / "shared-mount"
    settings.DOJO_CACHE_DIR = cache
    settings.STORAGES = shared_storage_at(settings.STORAGES, shared)
    pool.pool_stop_all()  # warm sandboxes were started with the old folders
    planted = {
        cache / "jobs" / "e999-0123456789abcdef" / "stdout.txt": "other job's output",
        shared / "artifacts" / "ab" / ("ab" + "0" * 62): "holdout residuals",
    }
    for path, text in planted.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    diabetes.env_vars = {"PEEK_AT": json.dumps([str(p) for p in planted])}
    diabetes.save()
    exp = experiment_run(domain=diabetes, train_code=PEEKS, hypothesis="peeks")
    assert exp.state == "completed", exp.error
    seen = json.loads(exp.stdout_tail.split("SEEN ", 1)[1].splitlines()[0])
    assert set(seen) == {str(p) for p in planted}
    for text in planted.values():
        assert text not in seen.values()
    assert set(seen.values()) <= {"FileNotFoundError", "PermissionError"}
    # And the experiment's own artifacts went to the shared folder outside DOJO_HOME.
    assert exp.artifacts.exists()
    assert all((shared / a.storage_name).is_file() for a in exp.artifacts.all())
    pool.pool_stop_all()

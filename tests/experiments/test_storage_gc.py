"""Garbage collection of the shared storage (issue 13): objects no row records any more — the
artifacts of deleted experiments and domains, the archives of unfrozen tasks — are removed once
older than the grace period; what a row records, and anything younger, stays."""

import io
import json
import os
import time
from datetime import timedelta
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from domains import snapshot_share
from domains.services import domain_delete
from domains.snapshot_share import shared_storage
from experiments.harness import pool
from experiments.services import experiment_run, storage_gc

REPORT = b"a report only this test writes\n" + bytes(range(256))

WRITES_A_REPORT = f"""
def train(X_train, y_train, X_test, *, artifacts_dir):
    (artifacts_dir / "report.bin").write_bytes({REPORT!r})
    from sklearn.linear_model import LinearRegression
    return LinearRegression().fit(X_train, y_train).predict(X_test)
"""


@pytest.fixture(autouse=True)
def _fresh_pool():
    yield
    pool.pool_stop_all()


def _put(name: str, data: bytes, *, hours_old: float) -> str:
    """An object in the shared storage, last written `hours_old` hours ago."""
    name = shared_storage().save(name, io.BytesIO(data))
    _age(name, hours_old)
    return name


def _age(name: str, hours_old: float) -> None:
    then = time.time() - hours_old * 3600
    os.utime(shared_storage().path(name), (then, then))


def _gc(*args: str) -> dict:
    out = io.StringIO()
    call_command("dojo_storage", "gc", "--json", *args, stdout=out)
    return json.loads(out.getvalue())


@pytest.fixture
def stored(diabetes):
    """An experiment whose report is stored (and recorded), the task's snapshot archive recorded,
    all written two days ago; beside them, objects no row records: old and young."""
    exp = experiment_run(domain=diabetes, train_code=WRITES_A_REPORT)
    assert exp.state == "completed", exp.error
    [report] = [a for a in exp.artifacts.all() if a.path == "train/report.bin"]
    task = diabetes.task
    archive = snapshot_share.snapshot_publish(root=Path(task.snapshot_path), fingerprint=task.fingerprint)
    task.snapshot_info = {**task.snapshot_info, "archive": archive}
    task.save(update_fields=["snapshot_info"])
    for artifact in exp.artifacts.all():
        _age(artifact.storage_name, 48)
    _age(archive["name"], 48)
    return {
        "report": report.storage_name, "archive": archive["name"],
        "orphan_old": _put("artifacts/00/" + "0" * 64, b"x" * 1000, hours_old=48),
        "orphan_young": _put("artifacts/11/" + "1" * 64, b"y" * 10, hours_old=2),
        "old_snapshot": _put(f"snapshots/{'a' * 64}-{'b' * 64}.tar", b"z" * 300, hours_old=30),
        "old_bundle": _put(f"workspaces/{'c' * 64}-{'d' * 64}.tar", b"w" * 20, hours_old=30),
    }


def test_it_removes_unreferenced_objects_older_than_the_grace_period_and_keeps_the_rest(stored):
    result = _gc()
    storage = shared_storage()
    assert storage.exists(stored["report"]) and storage.exists(stored["archive"])  # recorded: kept
    assert storage.exists(stored["orphan_young"])  # maybe a write whose row is not committed yet
    for gone in ("orphan_old", "old_snapshot", "old_bundle"):
        assert not storage.exists(stored[gone]), gone
    assert result["artifacts"]["removed"] == 1 and result["artifacts"]["bytes_removed"] == 1000
    assert result["artifacts"]["kept_young"] == 1 and result["artifacts"]["kept_referenced"] >= 1
    assert result["snapshots"]["removed"] == 1 and result["snapshots"]["bytes_removed"] == 300
    assert result["snapshots"]["kept_referenced"] >= 1
    assert result["workspaces"] == {"kept_referenced": 0, "kept_young": 0, "removed": 1, "bytes_removed": 20,
                                    "failed": 0}

    # A shorter grace period reaches the younger orphan too.
    assert _gc("--min-age-hours", "1")["artifacts"]["removed"] == 1
    assert not storage.exists(stored["orphan_young"]) and storage.exists(stored["report"])


def test_it_removes_nothing_on_a_dry_run(stored):
    out = io.StringIO()
    call_command("dojo_storage", "gc", "--dry-run", stdout=out)
    assert "would remove 3 objects (1,320 bytes)" in out.getvalue()
    assert all(shared_storage().exists(name) for name in stored.values())
    assert _gc("--dry-run")["artifacts"]["removed"] == 1
    assert all(shared_storage().exists(name) for name in stored.values())


def test_it_removes_a_deleted_domains_artifacts_once_the_grace_period_is_over(diabetes, make_domain):
    exp = experiment_run(domain=diabetes, train_code=WRITES_A_REPORT)
    other = experiment_run(domain=make_domain("load_diabetes", name="other"), train_code=WRITES_A_REPORT)
    [report] = [a.storage_name for a in exp.artifacts.all() if a.path == "train/report.bin"]
    only_here = {a.storage_name for a in exp.artifacts.all()} - {a.storage_name for a in other.artifacts.all()}
    domain_delete(domain=diabetes)

    later = timezone.now() + timedelta(hours=25)
    assert storage_gc(now=later)["artifacts"]["removed"] == len(only_here)
    assert shared_storage().exists(report)  # the same bytes are recorded by the other domain's experiment

    domain_delete(domain=other.domain)
    storage_gc(now=later)
    assert not shared_storage().exists(report)


@pytest.mark.parametrize("hours", ["0.5", "-3"])
def test_it_refuses_a_grace_period_under_an_hour(db, hours):
    with pytest.raises(CommandError, match="at least 1 hour"):
        call_command("dojo_storage", "gc", "--min-age-hours", hours)


def test_it_marks_an_object_stored_again_as_new_so_the_grace_period_covers_its_row(diabetes):
    """The same bytes already stored are not written again, only touched: an old object a gc is
    about to judge unreferenced is young again before the new row recording it is committed."""
    first = experiment_run(domain=diabetes, train_code=WRITES_A_REPORT)
    [report] = [a.storage_name for a in first.artifacts.all() if a.path == "train/report.bin"]
    _age(report, 48)
    again = experiment_run(domain=diabetes, train_code=WRITES_A_REPORT)
    assert report in {a.storage_name for a in again.artifacts.all()}
    assert timezone.now() - shared_storage().get_modified_time(report) < timedelta(minutes=5)

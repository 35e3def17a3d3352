"""Issue 13 items 1–2: a frozen task's snapshot published in the shared storage and fetched by a
machine that does not share the freezing machine's DOJO_HOME."""

import hashlib
import io
import json
import os
import stat
import tarfile
from pathlib import Path

import pytest
from django.test import override_settings

from dojo_site.errors import NotReady
from domains import snapshot_share
from domains.services import (
    domain_create,
    task_freeze,
    task_setup,
    task_tools_import,
    task_unfreeze,
    task_verify,
)
from domains.snapshot_share import ArchiveRefused, archive_unpack, shared_storage, snapshot_local
from experiments.harness import pool
from experiments.models import Experiment
from experiments.services import experiment_run
from tests.experiments.conftest import LINEAR
from tests.factories import frozen_domain


@pytest.fixture(autouse=True)
def _fresh_pool():
    yield
    pool.pool_stop_all()


@pytest.fixture
def frozen(db, tmp_path):
    """A domain frozen for real on this "machine" (the test's DOJO_HOME)."""
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    domain = domain_create(name="shared", task_type="regression", workspace=workspace,
                           data_path="sklearn:load_diabetes")
    task_setup(task=domain.task)
    domain.refresh_from_db()
    return domain


@pytest.fixture
def published(db, tmp_path):
    """A frozen domain from the session's template (faster than a freeze), its snapshot published as
    task_freeze publishes it."""
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    domain = frozen_domain(workspace=workspace, loader="load_diabetes", name="published")
    task = domain.task
    archive = snapshot_share.snapshot_publish(root=Path(task.snapshot_path), fingerprint=task.fingerprint)
    task.snapshot_info = {**task.snapshot_info, "archive": archive}
    task.save(update_fields=["snapshot_info"])
    return domain


PROBE = """
import numpy as np

def train(X_train, y_train, X_test, *, artifacts_dir):
    for path in {paths!r}:
        try:
            with open(path, "rb") as handle:
                print("READ" if handle.read(1) else "EMPTY")
        except OSError as exc:
            print("DENIED", exc.errno)
    return np.zeros(len(X_test))
"""


def _other_machine(settings, tmp_path, task) -> Path:
    """Become a machine with its own DOJO_HOME and cache: the freezing machine's snapshot folder is
    not here (moved away), only the shared storage is."""
    pool.pool_stop_all()
    home = tmp_path / "machine-b"
    home.mkdir()
    settings.DOJO_HOME = home
    settings.DOJO_CACHE_DIR = home / "cache"
    original = Path(task.snapshot_path)
    away = original.with_name(original.name + ".elsewhere")
    os.rename(original, away)
    return home / "cache"


def test_it_publishes_the_snapshot_content_addressed(frozen, django_capture_on_commit_callbacks):
    task = frozen.task
    archive = task.snapshot_info["archive"]
    assert archive["name"] == f"snapshots/{task.fingerprint}-{archive['sha256']}.tar"
    with shared_storage().open(archive["name"], "rb") as handle:
        data = handle.read()
    assert hashlib.sha256(data).hexdigest() == archive["sha256"] and len(data) == archive["bytes"]
    assert stat.S_IMODE(os.stat(shared_storage().path(archive["name"])).st_mode) == 0o600  # sealed labels inside
    names = tarfile.open(fileobj=io.BytesIO(data)).getnames()
    assert {"manifest.json", "public/X_train.pkl", "sealed/y_test.pkl", "sealed/split.json", "tools/evaluate.py"} <= set(names)
    # One machine: the folder written at freeze is used as it is, nothing is fetched.
    assert snapshot_local(task) == Path(task.snapshot_path)

    with django_capture_on_commit_callbacks(execute=True):
        task_unfreeze(task=task, reason="test")
    assert not shared_storage().exists(archive["name"])


def test_it_runs_on_a_machine_without_the_freezing_machines_snapshot(frozen, settings, tmp_path, monkeypatch):
    here = experiment_run(domain=frozen, train_code=LINEAR)
    assert here.state == "completed", here.error

    cache = _other_machine(settings, tmp_path, frozen.task)
    there = experiment_run(domain=frozen, train_code=LINEAR)
    assert there.state == "completed", there.error
    assert there.metrics == here.metrics and there.holdout_metrics == here.holdout_metrics

    task = frozen.task
    local = cache / "snapshots" / f"{task.fingerprint}-{task.snapshot_info['archive']['sha256']}"
    assert snapshot_local(task) == local
    assert (local / "archive.sha256").read_text().strip() == task.snapshot_info["archive"]["sha256"]
    # Sealed as at freeze: the sandbox user cannot read the labels or the split.
    assert stat.S_IMODE((local / "sealed").stat().st_mode) == 0o700
    assert stat.S_IMODE((local / "sealed" / "y_test.pkl").stat().st_mode) == 0o400
    assert stat.S_IMODE((local / "public").stat().st_mode) == 0o555
    assert not list((cache / "snapshots").glob("*.partial"))

    # Warm: the next experiment uses the copy without touching the shared storage.
    def no_fetch(*args, **kwargs):
        raise AssertionError("fetched again")

    monkeypatch.setattr(snapshot_share, "_download", no_fetch)
    again = experiment_run(domain=frozen, train_code=LINEAR)
    assert again.state == "completed" and again.metrics == here.metrics

    # The sandbox reads neither the fetched copy's labels nor the archive in the shared storage
    # (which is outside this machine's DOJO_HOME now).
    archive_file = shared_storage().path(task.snapshot_info["archive"]["name"])
    probe = experiment_run(domain=frozen, train_code=PROBE.format(paths=[str(local / "sealed" / "y_test.pkl"), archive_file]))
    assert probe.state == "completed", probe.error
    assert "READ" not in probe.stdout_tail
    assert probe.stdout_tail.count("DENIED") + probe.stdout_tail.count("EMPTY") == 2


def test_it_refuses_a_tampered_archive_and_runs_nothing(published, settings, tmp_path):
    archive = published.task.snapshot_info["archive"]
    path = Path(shared_storage().path(archive["name"]))
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01  # one byte
    path.write_bytes(bytes(data))
    cache = _other_machine(settings, tmp_path, published.task)

    with pytest.raises(NotReady, match="does not match the sha256 recorded at freeze"):
        experiment_run(domain=published, train_code=LINEAR)
    assert not Experiment.objects.exists()
    assert not list((cache / "snapshots").iterdir())  # nothing unpacked, nothing half-downloaded left


def test_it_says_so_when_the_archive_is_missing_from_the_shared_storage(published, settings, tmp_path):
    shared_storage().delete(published.task.snapshot_info["archive"]["name"])
    _other_machine(settings, tmp_path, published.task)
    with pytest.raises(NotReady, match="missing from the shared storage"):
        experiment_run(domain=published, train_code=LINEAR)
    assert not Experiment.objects.exists()


def _tar(members: list[tarfile.TarInfo], contents: dict[str, bytes] | None = None) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for member in members:
            data = (contents or {}).get(member.name)
            if data is not None:
                member.size = len(data)
            tar.addfile(member, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def _member(name: str, kind=tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    member = tarfile.TarInfo(name)
    member.type = kind
    member.linkname = linkname
    return member


def _record_archive(task, data: bytes) -> None:
    """Put an archive in the shared storage and record it as the task's (as a freeze would have)."""
    sha = hashlib.sha256(data).hexdigest()
    name = shared_storage().save(f"snapshots/{task.fingerprint}-{sha}.tar", io.BytesIO(data))
    task.snapshot_info = {**task.snapshot_info, "archive": {"name": name, "sha256": sha, "bytes": len(data)}}
    task.save(update_fields=["snapshot_info"])


@pytest.mark.parametrize("evil", [
    _member("public/../../escaped.txt"),
    _member("public/X_train.pkl", tarfile.SYMTYPE, "/etc/passwd"),
])
def test_it_refuses_an_archive_with_an_escaping_path_or_a_link(published, settings, tmp_path, evil):
    data = _tar([_member("public", tarfile.DIRTYPE), evil], {"public/../../escaped.txt": b"planted"})
    _record_archive(published.task, data)
    cache = _other_machine(settings, tmp_path, published.task)

    with pytest.raises(NotReady, match="was refused"):
        experiment_run(domain=published, train_code=LINEAR)
    assert not Experiment.objects.exists()
    assert not list(tmp_path.rglob("escaped.txt"))
    assert not list((cache / "snapshots").iterdir())


@pytest.mark.parametrize("member", [
    _member("/tmp/absolute.txt"),
    _member("a/../../up.txt"),
    _member("link", tarfile.SYMTYPE, "../outside"),
    _member("hard", tarfile.LNKTYPE, "public/X_train.pkl"),
    _member("dev", tarfile.CHRTYPE),
    _member("fifo", tarfile.FIFOTYPE),
])
def test_it_unpacks_only_regular_files_and_folders_inside(tmp_path, member):
    archive = tmp_path / "evil.tar"
    archive.write_bytes(_tar([member], {member.name: b"x"} if member.type == tarfile.REGTYPE else None))
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(ArchiveRefused):
        archive_unpack(archive, dest)
    assert not (tmp_path / "absolute.txt").exists() and not (tmp_path / "up.txt").exists()


LOAD_FROM_CSV = '''
from helpers.data import make

def load_data():
    return make()
'''

HELPERS_DATA = '''
import os

import pandas as pd
from sklearn.model_selection import train_test_split

def make():
    frame = pd.read_csv(os.path.join(os.path.dirname(__file__), "..", "data.csv"))
    X, y = frame.drop(columns=["target"]), frame["target"]
    return train_test_split(X, y, test_size=0.25, random_state=0)
'''

EVALUATE = '''
def evaluate(y_pred, *, X_train, X_test, y_train, y_test, artifacts_dir):
    import numpy as np
    err = np.asarray(y_pred, dtype=float) - np.asarray(y_test, dtype=float)
    return {"rmse": float(np.sqrt((err ** 2).mean())), "mae": float(np.abs(err).mean()), "r2": 0.0}
'''


def test_it_bundles_the_contracts_workspace_files_but_never_the_raw_data(db, tmp_path):
    from sklearn.datasets import load_diabetes

    workspace = tmp_path / "repo"
    (workspace / "helpers").mkdir(parents=True)
    (workspace / "helpers" / "__init__.py").write_text("")
    (workspace / "helpers" / "data.py").write_text(HELPERS_DATA)
    load_diabetes(as_frame=True).frame.to_csv(workspace / "data.csv", index=False)
    raw = (workspace / "data.csv").read_bytes()
    domain = domain_create(name="bundled", task_type="regression", workspace=workspace, data_path="data.csv",
                           target_column="target")
    task_tools_import(task=domain.task, load_data=LOAD_FROM_CSV, evaluate=EVALUATE)
    assert task_verify(task=domain.task).ok
    task = task_freeze(task=domain.task)
    assert task.snapshot_info["data_file"] == str(workspace / "data.csv")

    bundle = task.snapshot_info["workspace_bundle"]
    assert bundle["name"] == f"workspaces/{task.fingerprint}-{bundle['sha256']}.tar"
    with shared_storage().open(bundle["name"], "rb") as handle:
        names = tarfile.open(fileobj=io.BytesIO(handle.read())).getnames()
    assert sorted(names) == sorted(task.contract_files) == ["helpers/__init__.py", "helpers/data.py"]
    for kind in ("snapshots", "workspaces"):
        for name in shared_storage().listdir(kind)[1]:
            with shared_storage().open(f"{kind}/{name}", "rb") as handle:
                with tarfile.open(fileobj=io.BytesIO(handle.read())) as tar:
                    assert not any(n.endswith("data.csv") for n in tar.getnames())
                    for member in tar.getmembers():
                        if member.isreg():
                            assert tar.extractfile(member).read() != raw

    # Even a raw data file that is among the files the tools import stays out.
    files = {**task.contract_files, "data.csv": hashlib.sha256(raw).hexdigest()}
    again = snapshot_share.workspace_bundle_publish(
        workspace=workspace, files=files, fingerprint="f" * 64, raw_data=[workspace / "data.csv"])
    with shared_storage().open(again["name"], "rb") as handle:
        assert "data.csv" not in tarfile.open(fileobj=io.BytesIO(handle.read())).getnames()


def test_it_keeps_the_copy_another_worker_renamed_into_place_first(published, settings, tmp_path):
    """Two workers fetching at once: the second rename fails on the first one's complete copy, which
    serves as well; nothing half-written is left."""
    cache = _other_machine(settings, tmp_path, published.task)
    task = published.task
    local = snapshot_local(task)
    before = local.stat().st_ino
    archive = task.snapshot_info["archive"]
    snapshot_share._fetch(  # the loser of the race
        archive, local, what="snapshot archive", tops=snapshot_share.SNAPSHOT_TOP,
        finish=lambda root, files: snapshot_share._snapshot_finish(task, root, archive["name"]),
        complete=lambda: snapshot_share._holds(local, task, proof=snapshot_share.MARKER),
    )
    assert local.stat().st_ino == before and snapshot_local(task) == local
    assert sorted(p.name for p in (cache / "snapshots").iterdir()) == [local.name]


EVALUATE_WITH_MODULE = '''
def evaluate(y_pred, *, X_train, X_test, y_train, y_test, artifacts_dir):
    from helpers.scoring import scores   # a workspace module: part of the contract
    return scores(y_pred, y_test)
'''

HELPERS_SCORING = '''
import numpy as np

def scores(y_pred, y_test):
    err = np.asarray(y_pred, dtype=float) - np.asarray(y_test, dtype=float)
    return {"rmse": float(np.sqrt((err ** 2).mean())), "mae": float(np.abs(err).mean()), "r2": 0.5}
'''

MEAN_TRAIN = """
import numpy as np

def train(X_train, y_train, X_test, *, artifacts_dir):
    return np.full(len(X_test), float(np.mean(y_train)))
"""


def test_it_runs_from_the_workspace_bundle_where_the_workspace_folder_is_missing(db, tmp_path, settings):
    from sklearn.datasets import load_diabetes

    workspace = tmp_path / "repo"
    (workspace / "helpers").mkdir(parents=True)
    (workspace / "helpers" / "__init__.py").write_text("")
    (workspace / "helpers" / "data.py").write_text(HELPERS_DATA)
    (workspace / "helpers" / "scoring.py").write_text(HELPERS_SCORING)
    load_diabetes(as_frame=True).frame.to_csv(workspace / "data.csv", index=False)
    domain = domain_create(name="bundle-run", task_type="regression", workspace=workspace, data_path="data.csv",
                           target_column="target")
    task_tools_import(task=domain.task, load_data=LOAD_FROM_CSV, evaluate=EVALUATE_WITH_MODULE)
    assert task_verify(task=domain.task).ok
    task_freeze(task=domain.task)
    domain.refresh_from_db()
    here = experiment_run(domain=domain, train_code=MEAN_TRAIN)
    assert here.state == "completed", here.error

    cache = _other_machine(settings, tmp_path, domain.task)
    os.rename(workspace, tmp_path / "repo-elsewhere")  # not on this machine either
    there = experiment_run(domain=domain, train_code=MEAN_TRAIN)
    assert there.state == "completed", there.error
    assert there.metrics == here.metrics  # the evaluator imported helpers.scoring from the bundle
    bundle = domain.task.snapshot_info["workspace_bundle"]
    local = cache / "workspaces" / f"{domain.task.fingerprint}-{bundle['sha256']}"
    assert sorted(str(p.relative_to(local)) for p in local.rglob("*.py")) == sorted(domain.task.contract_files)
    assert not (local / "data.csv").exists()


def test_it_refuses_a_tampered_workspace_bundle(published, settings, tmp_path):
    """A bundle whose file is not what the task was frozen with (the hash recorded with it, as an
    attacker who could also write the database would): refused, nothing runs."""
    task = published.task
    evil = _tar([_member("helpers/scoring.py")], {"helpers/scoring.py": b"def scores(*a): return {}"})
    sha = hashlib.sha256(evil).hexdigest()
    name = shared_storage().save(f"workspaces/{task.fingerprint}-{sha}.tar", io.BytesIO(evil))
    task.contract_files = {"helpers/scoring.py": "0" * 64}
    task.snapshot_info = {**task.snapshot_info, "workspace_bundle": {"name": name, "sha256": sha}}
    task.save(update_fields=["contract_files", "snapshot_info"])
    _other_machine(settings, tmp_path, task)
    os.rename(published.workspace_path, tmp_path / "workspace-elsewhere")
    with pytest.raises(NotReady, match="not a file the frozen task imported"):
        experiment_run(domain=published, train_code=MEAN_TRAIN)
    assert not Experiment.objects.exists()


def test_it_cleans_a_killed_fetchs_leftovers_at_the_next_start(settings, tmp_path):
    """A worker killed -9 mid-fetch leaves a half-unpacked folder and a half-downloaded archive in its
    cache; snapshots_partial_clean (every freeze and worker start) removes them once it is dead."""
    import socket
    import subprocess

    from domains.snapshot import snapshots_partial_clean

    dead = subprocess.Popen(["true"])
    dead.wait()
    cache = Path(settings.DOJO_CACHE_DIR) / "snapshots"
    folder = cache / f"abc-def.{socket.gethostname()}.{dead.pid}.partial"
    (folder / "sealed").mkdir(parents=True)
    (folder / "sealed").chmod(0o700)
    download = cache / f"abc-def-tar.{socket.gethostname()}.{dead.pid}.partial"
    download.write_bytes(b"half")
    mine = cache / f"abc-def.{socket.gethostname()}.{os.getpid()}.partial"  # a live writer's: kept
    mine.mkdir()
    assert set(snapshots_partial_clean()) == {folder, download}
    assert not folder.exists() and not download.exists() and mine.exists()


def _unpublished(domain):
    """The task as frozen before snapshots were published: no archive, no workspace bundle recorded."""
    task = domain.task
    task.snapshot_info = {k: v for k, v in task.snapshot_info.items() if k not in ("archive", "workspace_bundle")}
    task.save(update_fields=["snapshot_info"])
    return task


def _published_names() -> list[str]:
    storage = shared_storage()
    return storage.listdir("snapshots")[1] if storage.exists("snapshots") else []


def test_it_publishes_a_task_frozen_before_snapshots_were_published_when_a_worker_starts(
        db, tmp_path, settings):
    from agentrun.apps import _reap_on_worker_start

    workspace = tmp_path / "workspace"
    workspace.mkdir()
    domain = frozen_domain(workspace=workspace, loader="load_diabetes", name="legacy")
    task = _unpublished(domain)
    here = experiment_run(domain=domain, train_code=LINEAR)
    assert here.state == "completed", here.error

    # Elsewhere it cannot run yet, and says what to do (nothing recorded).
    with override_settings(DOJO_HOME=tmp_path / "machine-c", DOJO_CACHE_DIR=tmp_path / "machine-c" / "cache"):
        moved = Path(task.snapshot_path).with_name("away")
        os.rename(task.snapshot_path, moved)
        try:
            with pytest.raises(NotReady, match="frozen before snapshots were published.*dojo_storage publish"):
                experiment_run(domain=domain, train_code=LINEAR)
        finally:
            os.rename(moved, task.snapshot_path)
    assert Experiment.objects.count() == 1

    _reap_on_worker_start(sender=None)  # the machine that froze it, as its worker starts
    task.refresh_from_db()
    archive = task.snapshot_info["archive"]
    assert archive["name"] == f"snapshots/{task.fingerprint}-{archive['sha256']}.tar"
    with shared_storage().open(archive["name"], "rb") as handle:
        assert hashlib.sha256(handle.read()).hexdigest() == archive["sha256"]
    assert "workspace_bundle" in task.snapshot_info  # the workspace files too (none for this loader)

    # Another machine, its own DOJO_CACHE_DIR, fetches it and scores the same.
    cache = _other_machine(settings, tmp_path, task)
    there = experiment_run(domain=domain, train_code=LINEAR)
    assert there.state == "completed", there.error
    assert there.metrics == here.metrics
    assert snapshot_local(task) == cache / "snapshots" / f"{task.fingerprint}-{archive['sha256']}"


def test_it_publishes_from_the_command_and_leaves_published_tasks_alone(db, tmp_path):
    import json

    from django.core.management import call_command

    workspace = tmp_path / "workspace"
    workspace.mkdir()
    domain = frozen_domain(workspace=workspace, loader="load_diabetes", name="legacy-cli")
    _unpublished(domain)
    before = _published_names()
    out = io.StringIO()
    call_command("dojo_storage", "publish", "--json", stdout=out)
    [row] = json.loads(out.getvalue())
    domain.task.refresh_from_db()
    assert row == {"domain": "legacy-cli", "archive": domain.task.snapshot_info["archive"]}
    assert set(_published_names()) - set(before) == {row["archive"]["name"].split("/", 1)[1]}

    out = io.StringIO()
    call_command("dojo_storage", "publish", stdout=out)  # nothing left to publish
    assert "Nothing to publish" in out.getvalue()


def _tamper_data(root: Path) -> None:
    target = root / "sealed" / "y_test.pkl"
    target.chmod(0o600)
    data = bytearray(target.read_bytes())
    data[-2] ^= 0x01
    target.write_bytes(bytes(data))


def _tamper_tool(root: Path) -> None:
    target = root / "tools" / "evaluate.py"
    (root / "tools").chmod(0o755)
    target.chmod(0o644)
    target.write_text(target.read_text() + "\n# edited\n")


def _tamper_manifest(root: Path) -> None:
    target = root / "manifest.json"
    target.chmod(0o644)
    manifest = json.loads(target.read_text())
    manifest["task_type"] = "binary"
    target.write_text(json.dumps(manifest))


def _tamper_link(root: Path) -> None:
    (root / "public").chmod(0o755)
    target = root / "public" / "X_train.pkl"
    copy = root.parent / "X_train.copy"
    copy.write_bytes(target.read_bytes())
    target.chmod(0o644)
    target.unlink()
    target.symlink_to(copy)


@pytest.mark.parametrize(("tamper", "why"), [
    (_tamper_data, "its data does not match the task's data fingerprint"),
    (_tamper_tool, "tools/evaluate.py differs from the frozen evaluate"),
    (_tamper_manifest, "manifest.json's 'task_type' differs"),
    (_tamper_link, "public/X_train.pkl is missing or not a regular file"),
])
def test_it_never_publishes_a_tampered_snapshot_folder(db, tmp_path, tamper, why):
    from django.core.management import call_command

    workspace = tmp_path / "workspace"
    workspace.mkdir()
    domain = frozen_domain(workspace=workspace, loader="load_diabetes", name="tampered")
    task = _unpublished(domain)
    before = _published_names()  # the template's own freeze, when this test made it
    tamper(Path(task.snapshot_path))

    out = io.StringIO()
    call_command("dojo_storage", "publish", "--json", stdout=out)
    [row] = json.loads(out.getvalue())
    assert why in row["problem"] and "archive" not in row
    task.refresh_from_db()
    assert "archive" not in task.snapshot_info
    assert _published_names() == before
    assert not list((Path(snapshot_share.cache_dir()) / "snapshots").glob("*.partial"))

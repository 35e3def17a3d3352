"""The data snapshot written at freeze and read by the harness (layout in docs/interfaces.md).

    <snapshot>/manifest.json        task type, sizes, shapes/dtypes, classes, both fingerprints
    <snapshot>/public/X_train.pkl   what load_data returned, pickled (protocol 5)
    <snapshot>/public/y_train.pkl
    <snapshot>/public/X_test.pkl
    <snapshot>/sealed/y_test.pkl    only the evaluator reads it (0700 folder)
    <snapshot>/sealed/split.json    {"validation": [...], "holdout": [...]} row positions in X_test
    <snapshot>/tools/load_data.py   the frozen tools, read-only (0444, folder 0555)
    <snapshot>/tools/evaluate.py
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import socket
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from django.conf import settings
from django.utils import timezone

from domains.contracts import CONTRACT_VERSION
from domains.models import Task
from domains.verification import ToolsRun, own_tree, tools_run

# Files that make up the data, in the order the data fingerprint hashes them.
DATA_FILES = (
    "public/X_train.pkl",
    "public/y_train.pkl",
    "public/X_test.pkl",
    "sealed/y_test.pkl",
    "sealed/split.json",
)


@dataclass(frozen=True)
class SnapshotPaths:
    root: Path
    manifest: Path
    public: Path
    sealed: Path
    X_train: Path
    y_train: Path
    X_test: Path
    y_test: Path
    split: Path
    tools: Path
    load_data: Path
    evaluate: Path


def snapshot_paths(task: Task | str | Path) -> SnapshotPaths:
    """The paths of a task's snapshot (or of the snapshot folder given)."""
    root = Path(task.snapshot_path if isinstance(task, Task) else task)
    return SnapshotPaths(
        root=root,
        manifest=root / "manifest.json",
        public=root / "public",
        sealed=root / "sealed",
        X_train=root / "public" / "X_train.pkl",
        y_train=root / "public" / "y_train.pkl",
        X_test=root / "public" / "X_test.pkl",
        y_test=root / "sealed" / "y_test.pkl",
        split=root / "sealed" / "split.json",
        tools=root / "tools",
        load_data=root / "tools" / "load_data.py",
        evaluate=root / "tools" / "evaluate.py",
    )


@dataclass
class SnapshotWritten:
    path: Path
    data_fingerprint: str
    info: dict
    run: ToolsRun


class SnapshotFailed(Exception):
    def __init__(self, run: ToolsRun) -> None:
        super().__init__("; ".join(run.errors))
        self.run = run


def snapshot_write(*, task: Task, codes: dict[str, str], fingerprint: str) -> SnapshotWritten:
    """Run load_data once in the sandbox and write the snapshot; all or nothing.

    The folder appears under its final name only when complete. Raise SnapshotFailed (nothing
    left behind) when load_data fails."""
    domain = task.domain
    base = Path(settings.DOJO_HOME) / "snapshots" / f"domain-{domain.pk}"
    base.mkdir(parents=True, exist_ok=True)
    snapshots_partial_clean()
    name = f"{fingerprint[:16]}-{timezone.now():%Y%m%dT%H%M%S%f}"
    # The writer's host and pid in the name tell a later start whether the writer is still alive.
    partial = base / f"{name}.{socket.gethostname()}.{os.getpid()}.partial"
    paths = snapshot_paths(base / name)
    (partial / "public").mkdir(parents=True)
    (partial / "sealed").mkdir()
    try:
        run = tools_run(
            codes=codes,
            task_type=task.task_type,
            primary_metric=task.primary_metric,
            direction=task.direction,
            config=task.config,
            workspace=Path(domain.workspace_path),
            python=domain.workspace_python,
            env_vars=domain.env_vars,
            mode="snapshot",
            snapshot_dir=partial,
        )
        if not run.load_data.ok or run.snapshot is None:
            if run.load_data.ok:
                run.load_data.errors.append("load_data: the snapshot was not written")
            raise SnapshotFailed(run)
        own_tree(partial)
        tools = partial / "tools"
        tools.mkdir()
        for tool, code in codes.items():
            (tools / f"{tool}.py").write_text(code, encoding="utf-8")
        data_fingerprint = data_fingerprint_compute(partial)
        sizes = {rel: (partial / rel).stat().st_size for rel in DATA_FILES}
        info = {
            **run.snapshot,
            "task_type": task.task_type,
            "sizes": sizes,
            "bytes_public": sum(v for k, v in sizes.items() if k.startswith("public/")),
            "isolation": run.isolation,
            "load_data_seconds": run.load_data.seconds,
            "peak_memory_mb": run.peak_memory_mb,
        }
        manifest = {
            **info,
            "contract_version": CONTRACT_VERSION,
            "fingerprint": fingerprint,
            "data_fingerprint": data_fingerprint,
            "created_at": timezone.now().isoformat(),
        }
        (partial / "manifest.json").write_text(json.dumps(manifest, indent=1, default=str))
        snapshot_seal(partial)
        os.rename(partial, paths.root)
    except BaseException:
        snapshot_remove(partial)
        raise
    return SnapshotWritten(path=paths.root, data_fingerprint=data_fingerprint, info=info, run=run)


def snapshot_seal(root: Path) -> None:
    """Read-only everything; the sealed folder readable by its owner only."""
    for rel in ("public", "tools"):
        for child in (root / rel).iterdir():
            child.chmod(0o444)
        (root / rel).chmod(0o555)
    for child in (root / "sealed").iterdir():
        child.chmod(0o400)
    (root / "sealed").chmod(0o700)
    (root / "manifest.json").chmod(0o444)
    root.chmod(0o755)


def snapshot_remove(path: Path | str) -> None:
    """Delete a snapshot folder, read-only parts included; a missing folder is fine."""
    root = Path(path)
    if not root.is_dir() or root.is_symlink():
        root.unlink(missing_ok=True)  # a half-downloaded archive (domains/snapshot_share.py)
        return
    for folder, dirs, _files in os.walk(root):
        for name in dirs:
            target = Path(folder, name)
            target.chmod(target.stat().st_mode | stat.S_IRWXU)
    root.chmod(root.stat().st_mode | stat.S_IRWXU)
    shutil.rmtree(root, ignore_errors=True)


# A half-written snapshot of another machine is removed only when it is this old (its writer may
# still be running there; no freeze takes a day).
PARTIAL_MAX_AGE_SECONDS = 24 * 3600


def snapshots_partial_clean() -> list[Path]:
    """Remove half-written snapshots (`*.partial`) whose writer is gone; return what was removed.

    A freeze killed with -9 cannot clean up after itself, and a snapshot can be hundreds of MB. A
    partial written on this machine goes when its writer's pid is dead; one from another host (or
    without a pid in its name) when older than PARTIAL_MAX_AGE_SECONDS. Runs at every freeze and when
    a worker starts."""
    removed = []
    host = socket.gethostname()
    now = time.time()
    # Freezes write under DOJO_HOME; fetched copies and archives being packed sit in this machine's cache.
    cache = Path(settings.DOJO_CACHE_DIR)
    partials = [*(Path(settings.DOJO_HOME) / "snapshots").glob("*/*.partial"),
                *(cache / "snapshots").glob("*.partial"), *(cache / "workspaces").glob("*.partial")]
    for partial in partials:
        parts = partial.name.rsplit(".", 3)  # name, host, pid, "partial"
        if len(parts) == 4 and parts[1] == host and parts[2].isdigit():
            stale = not _pid_alive(int(parts[2]))
        else:
            try:
                stale = now - partial.stat().st_mtime > PARTIAL_MAX_AGE_SECONDS
            except FileNotFoundError:
                continue
        if stale:
            snapshot_remove(partial)
            removed.append(partial)
    return removed


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def data_fingerprint_compute(root: Path) -> str:
    """sha256 over the data files of a snapshot folder, read in 1 MB blocks (memory stays flat)."""
    return data_fingerprint_of(lambda rel: open(root / rel, "rb"))  # noqa: SIM115 - closed by data_fingerprint_of


def data_fingerprint_of(open_file: Callable[[str], BinaryIO]) -> str:
    """The data fingerprint over the data files `open_file(relative name)` opens (from a folder, or the
    members of a packed snapshot), each closed once read."""
    digest = hashlib.sha256()
    for rel in DATA_FILES:
        digest.update(f"{rel}\n".encode())
        with open_file(rel) as handle:
            while block := handle.read(1 << 20):
                digest.update(block)
    return digest.hexdigest()


def snapshot_problems(task: Task, *, codes: dict[str, str], root: Path | None = None) -> list[str]:
    """What is wrong with a frozen task's snapshot on disk (missing files, edited tools): the folder
    recorded at freeze, or `root` (this machine's copy, domains/snapshot_share.py)."""
    if not task.snapshot_path:
        return ["the task has no snapshot"]
    paths = snapshot_paths(root or task)
    problems = [
        f"snapshot file {p} is missing"
        for p in (paths.manifest, paths.X_train, paths.y_train, paths.X_test, paths.y_test, paths.split)
        if not p.is_file()
    ]
    for name, path in (("load_data", paths.load_data), ("evaluate", paths.evaluate)):
        try:
            on_disk = path.read_text(encoding="utf-8")
        except OSError:
            problems.append(f"the frozen {name}.py is missing from {paths.tools}")
            continue
        if on_disk != codes.get(name):
            problems.append(f"the frozen {name}.py in {paths.tools} differs from the frozen code")
    return problems


def snapshot_load_public(path: Path | str) -> tuple[object, object, object]:
    """(X_train, y_train, X_test) as the trainer receives them."""
    paths = snapshot_paths(path)
    loaded = []
    for file in (paths.X_train, paths.y_train, paths.X_test):
        with open(file, "rb") as handle:
            loaded.append(pickle.load(handle))
    return loaded[0], loaded[1], loaded[2]

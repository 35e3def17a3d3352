"""A frozen task's snapshot (and workspace bundle) in the shared storage, and this machine's copy.

At freeze the snapshot folder is published as one tar in the "dojo" storage (settings.STORAGES),
named by content: `snapshots/<task fingerprint>-<sha256 of the tar>.tar`. For a local-folder
workspace, the files the frozen tools import (Task.contract_files) go into a second tar,
`workspaces/<fingerprint>-<sha256>.tar` (never the task's raw data file). Both names and hashes are
recorded in task.snapshot_info ("archive", "workspace_bundle").

A worker calls snapshot_local(task): the snapshot folder recorded at freeze when this machine has it
(one stat once known), otherwise the archive fetched into DOJO_CACHE_DIR, checked against its sha256
before anything is unpacked, unpacked without links, devices, absolute or `..` paths, sealed like the
original (snapshot_seal) and renamed into place in one step, so concurrent workers never see half a
copy. The copy stays (warm) for the next experiment.

workspace_local(task, domain) does the same for the workspace where its folder is missing: a git
workspace is cloned at the commit recorded on the domain (the whole repository), a local folder
falls back to the bundle (the contract's files only).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import tarfile
import threading
from collections.abc import Callable
from pathlib import Path, PurePosixPath

from django.conf import settings
from django.core.files import File
from django.core.files.storage import FileSystemStorage, storages

from dojo_site.errors import InvalidInput, NotReady
from domains.models import Task
from domains.snapshot import (
    DATA_FILES,
    data_fingerprint_compute,
    data_fingerprint_of,
    snapshot_remove,
    snapshot_seal,
)
from domains.workspaces import git_clone, git_head

STORAGE_ALIAS = "dojo"
SNAPSHOT_TOP = ("manifest.json", "public", "sealed", "tools")
MARKER = "archive.sha256"  # in a fetched copy: the sha256 of the archive it was unpacked from, once complete


class ArchiveRefused(Exception):
    """The archive holds something that must never be unpacked (a link, a device, an escaping path)."""


def shared_storage():
    return storages[STORAGE_ALIAS]


def shared_touch(name: str) -> bool:
    """Set a stored object's modified time to now, so the storage gc's grace period covers a row
    about to record an object that was already there (experiments.services.storage_gc); False when
    it is gone (the gc removed it meanwhile: store it again). Only a FileSystemStorage's objects can
    be touched (through its path); elsewhere True, and the gc's re-check before deleting is what is left."""
    storage = shared_storage()
    if not isinstance(storage, FileSystemStorage):
        return True
    try:
        os.utime(storage.path(name))
    except FileNotFoundError:
        return False
    return True


def cache_dir() -> Path:
    return Path(settings.DOJO_CACHE_DIR)


def _partial_name(stem: str) -> str:
    # host and pid in the name: snapshots_partial_clean removes it once its writer is gone.
    return f"{stem}.{socket.gethostname()}.{os.getpid()}.partial"


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _normalised(member: tarfile.TarInfo) -> tarfile.TarInfo:
    # Nothing machine-specific in the archive: the unpacking side sets owners and modes itself.
    member.uid = member.gid = 0
    member.uname = member.gname = ""
    return member


def _publish(*, kind: str, fingerprint: str, members: list[tuple[str, Path]],
             check: Callable[[Path], None] | None = None) -> dict:
    """Pack `members` (name in the archive, file or folder on disk) into one tar and save it in the
    shared storage under kind/<fingerprint>-<sha256>.tar; return {"name", "sha256", "bytes"}.
    `check(tar)` may refuse the packed archive (by raising) before anything is saved."""
    scratch = cache_dir() / kind
    scratch.mkdir(parents=True, exist_ok=True)
    packed = scratch / _partial_name(f"{fingerprint}-publish")
    try:
        with tarfile.open(packed, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for arcname, path in members:
                tar.add(path, arcname=arcname, filter=_normalised)
        if check is not None:
            check(packed)
        sha = _sha256_file(packed)
        name = f"{kind}/{fingerprint}-{sha}.tar"
        storage = shared_storage()
        # Content-addressed: an archive already there under this name holds these very bytes.
        if not (storage.exists(name) and shared_touch(name)):
            with open(packed, "rb") as handle:
                name = storage.save(name, File(handle))
        return {"name": name, "sha256": sha, "bytes": packed.stat().st_size}
    finally:
        packed.unlink(missing_ok=True)


def snapshot_publish(*, root: Path, fingerprint: str) -> dict:
    """Publish a written snapshot folder; return what snapshot_info["archive"] records."""
    return _publish(kind="snapshots", fingerprint=fingerprint, members=[(top, root / top) for top in SNAPSHOT_TOP])


# What a snapshot holds, file by file.
SNAPSHOT_FILES = ("manifest.json", *DATA_FILES, "tools/load_data.py", "tools/evaluate.py")


def snapshot_publish_checked(*, task: Task, codes: dict[str, str]) -> dict:
    """Publish the folder recorded at freeze of a task frozen before snapshots were published (it has
    no archive); return what snapshot_info["archive"] records.

    Only the files a snapshot has are packed, and the packed archive itself — the very bytes that are
    then saved — is checked first: regular files only, data hashing to the task's data fingerprint,
    tools equal to the frozen code (`codes`), a manifest naming the task's fingerprints and contract
    version and otherwise agreeing with Task.snapshot_info. NotReady, nothing saved, when the folder is
    not on this machine or any check fails (a damaged or tampered folder is never published)."""
    root = Path(task.snapshot_path)
    if not task.snapshot_path or not root.is_dir():
        raise NotReady(f"the task's snapshot folder {root} is not on this machine ({socket.gethostname()})")
    for rel in SNAPSHOT_FILES:
        if (root / rel).is_symlink() or not (root / rel).is_file():
            raise NotReady(f"the task's snapshot folder {root} is not published: {rel} is missing or not a regular file")
    return _publish(kind="snapshots", fingerprint=task.fingerprint,
                    members=[(rel, root / rel) for rel in SNAPSHOT_FILES],
                    check=lambda packed: _snapshot_archive_check(task, codes, packed))


def _snapshot_archive_check(task: Task, codes: dict[str, str], packed: Path) -> None:
    def refuse(why: str) -> NotReady:
        return NotReady(f"the task's snapshot folder {task.snapshot_path} is not published: {why}; "
                        "it is not what the task was frozen with (unfreeze and freeze the task again)")

    with tarfile.open(packed, mode="r:") as tar:
        members = {member.name: member for member in tar.getmembers()}
        if sorted(members) != sorted(SNAPSHOT_FILES) or not all(m.isreg() for m in members.values()):
            raise refuse("a file changed into a link or a folder while it was packed")
        if data_fingerprint_of(lambda rel: tar.extractfile(members[rel])) != task.data_fingerprint:  # the packed bytes
            raise refuse("its data does not match the task's data fingerprint")
        for name, code in codes.items():
            if tar.extractfile(members[f"tools/{name}.py"]).read() != code.encode("utf-8"):
                raise refuse(f"tools/{name}.py differs from the frozen {name}")
        try:
            manifest = json.loads(tar.extractfile(members["manifest.json"]).read())
        except ValueError:
            manifest = None
    if not isinstance(manifest, dict):
        raise refuse("manifest.json is not a JSON object")
    # The manifest is the info recorded in Task.snapshot_info at freeze plus these (and created_at).
    own = {"contract_version": task.contract_version, "fingerprint": task.fingerprint,
           "data_fingerprint": task.data_fingerprint}
    expected = {**(task.snapshot_info or {}), **own}
    for key in sorted((set(manifest) | set(own)) - {"created_at"}):
        if manifest.get(key) != expected.get(key):
            raise refuse(f"manifest.json's {key!r} differs from what the task recorded at freeze")


def workspace_bundle_publish(*, workspace: Path, files: dict[str, str], fingerprint: str,
                             raw_data: list[Path]) -> dict:
    """Publish the workspace files the frozen tools import (relative path → sha256), as verified;
    return what snapshot_info["workspace_bundle"] records ({} when there is nothing to bundle).

    The raw data file (and any path listed in `raw_data`) is never bundled: it holds the test rows'
    labels. A file whose content no longer matches its recorded hash refuses the freeze."""
    never = {p.resolve() for p in raw_data}
    members = []
    for rel, sha in sorted(files.items()):
        path = workspace / rel
        if path.resolve() in never:
            continue
        if path.is_symlink() or not path.is_file() or _sha256_file(path) != sha:
            raise NotReady(f"cannot freeze: the workspace file {rel} changed while the task was frozen; freeze again")
        members.append((rel, path))
    if not members:
        return {}
    return {**_publish(kind="workspaces", fingerprint=fingerprint, members=members), "files": len(members)}


def archive_remove(info: dict) -> None:
    """Delete a published archive (unfreeze); a missing one is fine."""
    name = (info or {}).get("name")
    if name:
        shared_storage().delete(name)


# --- This machine's copy ----------------------------------------------------------------------

# Snapshot folders known to hold the task's snapshot, by the identity of the file that proved it
# (the manifest or the marker: inode, device, mtime). A hit costs one stat.
_known: dict[tuple, tuple[str, str]] = {}
_fetch_lock = threading.Lock()  # threads of one process fetch one at a time; processes race on rename


def _identity(path: Path) -> tuple | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (str(path), st.st_ino, st.st_dev, st.st_mtime_ns)


def _holds(root: Path, task: Task, *, proof: str) -> bool:
    """Whether `root` holds this task's snapshot: its manifest names the task's fingerprints (and,
    for a fetched copy, its marker the recorded archive hash). Read once per file identity."""
    ident = _identity(root / proof)
    if ident is None:
        return False
    expected = (task.fingerprint, task.data_fingerprint)
    if ident not in _known:
        try:
            manifest = json.loads((root / "manifest.json").read_text())
            found = (str(manifest.get("fingerprint")), str(manifest.get("data_fingerprint")))
            if proof == MARKER and (root / MARKER).read_text().strip() != _archive(task).get("sha256"):
                return False
        except (OSError, ValueError, AttributeError):
            return False
        if len(_known) > 1024:
            _known.clear()
        _known[ident] = found
    return _known[ident] == expected


def _archive(task: Task) -> dict:
    archive = (task.snapshot_info or {}).get("archive")
    return archive if isinstance(archive, dict) else {}


# The last answer for a task's frozen state, with the identity of the file that proved it: the
# per-experiment path pays one stat.
_answers: dict[tuple, tuple[str, tuple, Path]] = {}


def snapshot_local(task: Task) -> Path:
    """The folder on this machine holding the frozen task's snapshot, fetching it when needed.

    The folder recorded at freeze when it is here and holds this task's snapshot; otherwise a copy
    in DOJO_CACHE_DIR/snapshots/, fetched from the shared storage the first time. NotReady when the
    archive is missing, does not match its recorded sha256, or holds what may not be unpacked:
    nothing is then run. A task frozen before snapshots were published has no archive until a worker
    start on the machine that froze it publishes it (domains.services.tasks_snapshot_publish_missing):
    until then its recorded folder is returned as it is where it exists (the ready check says what is
    missing), NotReady elsewhere."""
    archive = _archive(task)
    key = (task.pk, task.snapshot_path, task.fingerprint, task.data_fingerprint, archive.get("sha256"))
    hit = _answers.get(key)
    if hit is not None:
        try:
            st = os.stat(hit[0])
            if (st.st_ino, st.st_dev, st.st_mtime_ns) == hit[1]:
                return hit[2]
        except OSError:
            pass
    folder, proof = _snapshot_find(task, archive)
    ident = _identity(folder / proof) if proof else None
    if ident is not None:
        if len(_answers) > 256:
            _answers.clear()
        _answers[key] = (ident[0], ident[1:], folder)
    return folder


def _snapshot_find(task: Task, archive: dict) -> tuple[Path, str]:
    """(the folder, the file proving it holds the task's snapshot; "" when nothing proves it)."""
    recorded = Path(task.snapshot_path)
    if task.snapshot_path and _holds(recorded, task, proof="manifest.json"):
        return recorded, "manifest.json"
    if not archive.get("name") or not archive.get("sha256"):
        if task.snapshot_path and not recorded.is_dir():
            raise NotReady(
                f"the task was frozen before snapshots were published and its snapshot folder {recorded} is not on "
                f"this machine ({socket.gethostname()}): it is published at the next worker start on the machine "
                "that froze it, or run `manage.py dojo_storage publish` there; nothing was run"
            )
        return recorded, ""  # here but incomplete: the ready check says what is missing
    local = cache_dir() / "snapshots" / f"{task.fingerprint}-{archive['sha256']}"
    if not _holds(local, task, proof=MARKER):
        with _fetch_lock:
            if not _holds(local, task, proof=MARKER):
                _fetch(archive, local, what="snapshot archive", tops=SNAPSHOT_TOP,
                       finish=lambda root, files: _snapshot_finish(task, root, archive["name"]),
                       complete=lambda: _holds(local, task, proof=MARKER))
    return local, MARKER


def _snapshot_finish(task: Task, root: Path, name: str) -> None:
    missing = [rel for rel in ("manifest.json", *DATA_FILES) if not (root / rel).is_file()]
    if missing or not (root / "tools").is_dir():
        raise NotReady(f"the task's snapshot archive {name} is incomplete ({(missing or ['tools/'])[0]} missing)")
    if data_fingerprint_compute(root) != task.data_fingerprint:
        raise NotReady(f"the data in the snapshot archive {name} does not match the task's data fingerprint")
    snapshot_seal(root)


def _fetch(archive: dict, local: Path, *, what: str, tops, finish, complete) -> None:
    """Download `archive` ({"name", "sha256"}), check the hash, unpack it safely, `finish(root, files)`
    (checks and modes), mark it and rename it into `local` in one step. `complete()` says whether
    `local` is already a complete copy (another worker's)."""
    local.parent.mkdir(parents=True, exist_ok=True)
    unpacked = local.parent / _partial_name(local.name)
    download = local.parent / _partial_name(f"{local.name}-tar")
    snapshot_remove(unpacked)
    download.unlink(missing_ok=True)
    name, sha = archive["name"], archive["sha256"]
    try:
        _download(name, download, what=what)
        got = _sha256_file(download)
        if got != sha:
            raise NotReady(
                f"the task's {what} {name} in the shared storage does not match the sha256 recorded "
                f"at freeze ({got[:12]}… instead of {sha[:12]}…): it was changed or damaged, so nothing was run; "
                "restore it from a backup, or unfreeze and freeze the task again"
            )
        unpacked.mkdir(mode=0o700)
        try:
            files = archive_unpack(download, unpacked, tops=tops)
            if MARKER in files:
                raise ArchiveRefused(f"{MARKER!r} is a name Dojo keeps for itself")
        except ArchiveRefused as exc:
            raise NotReady(f"the task's {what} {name} was refused: {exc}; nothing was run") from None
        (unpacked / MARKER).write_text(sha + "\n")
        (unpacked / MARKER).chmod(0o444)
        finish(unpacked, files)
        if local.exists() and not complete():
            snapshot_remove(local)  # not a complete copy of this archive (edited by hand?): replace it
        try:
            os.rename(unpacked, local)
        except OSError:
            if not complete():  # another worker's complete copy is as good
                raise
    finally:
        download.unlink(missing_ok=True)
        snapshot_remove(unpacked)


def _download(name: str, dest: Path, *, what: str) -> None:
    storage = shared_storage()
    try:
        source = storage.open(name, "rb")
    except FileNotFoundError:
        raise NotReady(
            f"the task's {what} is not on this machine and {name} is missing from the shared storage "
            "(DOJO_SHARED_STORAGE_DIR / STORAGES['dojo']); mount the shared storage, or unfreeze and freeze "
            "the task again"
        ) from None
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with source, os.fdopen(fd, "wb") as out:
        shutil.copyfileobj(source, out, 1 << 20)


# Workspace copies known complete: marker identity → the archive sha256 it names.
_marked_ok: dict[tuple, str] = {}


def _marked(local: Path, sha: str) -> bool:
    ident = _identity(local / MARKER)
    if ident is None:
        return False
    if ident not in _marked_ok:
        try:
            _marked_ok[ident] = (local / MARKER).read_text().strip()
        except OSError:
            return False
    return _marked_ok[ident] == sha


def workspace_local(task: Task, domain) -> Path:
    """The folder a frozen task's experiments run in: the domain's workspace when this machine has it
    (one stat); otherwise, for a git workspace, a clone at the commit recorded on the domain in
    DOJO_CACHE_DIR/workspaces/<domain id>-<commit>/ (workspace_clone_local); otherwise the workspace
    bundle published at freeze (the files the frozen tools import), fetched and checked like the
    snapshot into DOJO_CACHE_DIR/workspaces/. NotReady when there is none of them."""
    workspace_path = domain.workspace_path
    if os.path.isdir(workspace_path):
        return Path(workspace_path)
    if domain.git_url:
        return workspace_clone_local(task, domain)
    bundle = (task.snapshot_info or {}).get("workspace_bundle")
    if not isinstance(bundle, dict) or not bundle.get("name") or not bundle.get("sha256"):
        raise NotReady(f"the workspace {workspace_path} does not exist on this machine; fix the domain's workspace path")
    sha = bundle["sha256"]
    local = cache_dir() / "workspaces" / f"{task.fingerprint}-{sha}"
    if not _marked(local, sha):
        with _fetch_lock:
            if not _marked(local, sha):
                _fetch(bundle, local, what="workspace bundle", tops=None,
                       finish=lambda root, files: _workspace_finish(task, root, files, bundle["name"]),
                       complete=lambda: _marked(local, sha))
    return local


# Clones whose contract files were checked: (folder, identity of .git/HEAD, contract files) → the
# first file that differs ("" when none). A hit costs one stat.
_clone_checked: dict[tuple, str] = {}


def workspace_clone_local(task: Task, domain) -> Path:
    """This machine's clone of a git workspace at exactly Domain.git_commit, made the first time:
    cloned (domains.workspaces.git_clone: its URL rules, `--`, scrubbed environment and deadline) into
    a partial folder, checked out at the commit, its HEAD verified, then renamed into place in one
    step; reused while its HEAD is that commit. The whole repository is there, so train() may import
    any of its modules. NotReady, nothing run, when the commit cannot be cloned (gone from the remote,
    the remote unreachable) or the clone's copies of the files the frozen tools import do not have the
    hashes recorded at freeze (Task.contract_files: the domain's commit drifted since the freeze)."""
    commit = (domain.git_commit or "").strip()
    if not commit:
        raise NotReady(
            f"the workspace {domain.workspace_path} does not exist on this machine and domain {domain.name!r} "
            "has no recorded git commit to clone; run `dojo_domain sync` where the workspace is"
        )
    local = cache_dir() / "workspaces" / f"{domain.pk}-{commit}"
    if git_head(local) != commit:
        with _fetch_lock:
            if git_head(local) != commit:
                _clone(domain, commit, local)
    files = task.contract_files or {}
    key = (str(local), _identity(local / ".git" / "HEAD"), tuple(sorted(files.items())))
    if key not in _clone_checked:
        if len(_clone_checked) > 256:
            _clone_checked.clear()
        _clone_checked[key] = next((rel for rel, sha in sorted(files.items()) if not _same_file(local / rel, sha)), "")
    differs = _clone_checked[key]
    if differs:
        raise NotReady(
            f"the workspace file {differs} at the domain's git commit {commit[:12]} is not the one the task was "
            "frozen with (the frozen load_data/evaluate import it): the domain's commit drifted since the freeze; "
            "sync the domain back to the frozen commit, or unfreeze and freeze the task again. Nothing was run"
        )
    return local


def _same_file(path: Path, sha: str) -> bool:
    try:
        return bool(sha) and path.is_file() and _sha256_file(path) == sha
    except OSError:
        return False


def _clone(domain, commit: str, local: Path) -> None:
    local.parent.mkdir(parents=True, exist_ok=True)
    partial = local.parent / _partial_name(local.name)
    snapshot_remove(partial)
    try:
        try:
            cloned = git_clone(url=domain.git_url, ref=commit, target=partial)
        except InvalidInput as exc:  # GitFailed included: a refused URL, an unreachable remote, no such commit
            raise NotReady(
                f"the workspace of domain {domain.name!r} is not on this machine and cannot be cloned at its "
                f"recorded commit {commit[:12]}: {exc}; nothing was run"
            ) from None
        head = git_head(partial)
        if cloned.commit != commit or head != commit:
            raise NotReady(
                f"the clone of domain {domain.name!r}'s workspace is at {(head or cloned.commit)[:12]}, not at its "
                f"recorded commit {commit[:12]}; nothing was run"
            )
        if local.exists():
            snapshot_remove(local)  # at another commit than its name says (edited by hand?): replace it
        try:
            os.rename(partial, local)
        except OSError:
            if git_head(local) != commit:  # another worker's clone at this commit is as good
                raise
    finally:
        snapshot_remove(partial)


def _workspace_finish(task: Task, root: Path, files: list[str], name: str) -> None:
    """Every file is one the frozen tools imported, with the content they were frozen with; then
    read-only for everyone (workspace code, not secrets: the trainer may import it)."""
    recorded = task.contract_files or {}
    for rel in files:
        if recorded.get(rel) != _sha256_file(root / rel):
            raise NotReady(f"the workspace bundle {name} holds {rel}, which is not a file the frozen task imported")
    for folder, dirs, names in os.walk(root, topdown=False):
        for entry in names:
            os.chmod(os.path.join(folder, entry), 0o444)
        for entry in dirs:
            os.chmod(os.path.join(folder, entry), 0o555)
    root.chmod(0o755)


def archive_unpack(archive: Path, dest: Path, *, tops: tuple[str, ...] | None = None) -> list[str]:
    """Unpack regular files and folders of a tar into `dest` (which must exist); return the files.

    Refuse (ArchiveRefused, partial output left for the caller to remove) absolute names, `..`,
    links, devices, FIFOs, a name given twice, and, when `tops` is given, anything outside those
    top-level names. Files are created owner-only, never through an existing path."""
    files = []
    with tarfile.open(archive, mode="r:") as tar:
        for member in tar:
            parts = _member_parts(member.name)
            if not parts:
                continue
            if tops is not None and parts[0] not in tops:
                raise ArchiveRefused(f"{member.name!r} is not part of a snapshot")
            target = dest.joinpath(*parts)
            if member.isdir():
                target.mkdir(mode=0o700, parents=True, exist_ok=True)
                continue
            if not member.isreg():
                raise ArchiveRefused(f"{member.name!r} is a link or a device, not a regular file")
            target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            try:
                fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            except OSError as exc:
                raise ArchiveRefused(f"{member.name!r} cannot be written ({exc.strerror})") from None
            source = tar.extractfile(member)
            with os.fdopen(fd, "wb") as out:
                if source is not None:
                    shutil.copyfileobj(source, out, 1 << 20)
            files.append("/".join(parts))
    return files


def _member_parts(name: str) -> tuple[str, ...]:
    path = PurePosixPath(name)
    if path.is_absolute() or "\\" in name or "\x00" in name:
        raise ArchiveRefused(f"{name!r} is an absolute or odd path")
    parts = tuple(p for p in path.parts if p != ".")
    if ".." in parts:
        raise ArchiveRefused(f"{name!r} leads out of the folder it is unpacked into")
    return parts


def local_dirs_outside_home() -> list[Path]:
    """This machine's cache and a shared storage folder when they are not under DOJO_HOME: no
    sandboxed process may see them (they hold sealed labels, other experiments' job folders and
    every artifact), as DOJO_HOME itself. Each is made to exist: bwrap hides only paths that exist
    when the sandbox starts, and a folder made later would show through its read-only bind of /."""
    home = Path(settings.DOJO_HOME)
    dirs = [cache_dir()]
    storage = shared_storage()
    if isinstance(storage, FileSystemStorage):  # an object store's "location" is a key prefix, not a folder
        dirs.append(Path(storage.location))
    outside = [d for d in dirs if d != home and home not in d.parents]
    for folder in outside:
        folder.mkdir(parents=True, exist_ok=True)
    return outside

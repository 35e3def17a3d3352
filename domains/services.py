"""Domain and task workflows. Each function is keyword-only and raises dojo_site.errors on bad input.

Sections: domains (create, update, delete, current, PROGRAM.md / SETUP.md), API tokens, then the
task and its tools (generation, verification, freezing).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import math
import os
import re
import shutil
import stat
import sys
import tempfile
from pathlib import Path

from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from dojo_site.errors import Conflict, DojoError, InvalidInput, NotFound, NotReady
from dojo_site.schemas import DB_INT_MAX
from domains import audit, generation, snapshot, snapshot_share, verification, workspaces
from domains.contracts import CONTRACT_VERSION, LIMIT_KEYS, TASK_TYPES, tools_fingerprint
from domains.models import (
    ApiToken,
    CurrentDomain,
    Domain,
    DomainChange,
    DomainMember,
    Task,
    TaskTool,
)
from domains.sandbox import sandbox_env, sandbox_run

# --- Domains ---------------------------------------------------------------------------------

# A name is typed on the command line (--domain NAME), so keep it shell-friendly.
DOMAIN_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
DOMAIN_FILES = ("program", "setup")
# Task config defaults written at creation; the task's config is the one place they live afterwards.
DEFAULT_TEST_RATIO = 0.2
DEFAULT_SEED = 42
DEFAULT_HOLDOUT_RATIO = 0.5
# A data path naming one of scikit-learn's bundled datasets ("sklearn:load_diabetes" or "load_diabetes").
SKLEARN_LOADER_RE = re.compile(r"^(?:sklearn:)?(load_[a-z_]+)$")
ENV_VAR_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# numpy's RandomState takes seeds in [0, 2**32).
SEED_MAX = 2**32 - 1

log = logging.getLogger(__name__)


def domain_name_check(name: str) -> str:
    """Return the stripped name; raise InvalidInput when it is not a usable domain name."""
    name = (name or "").strip()
    if not DOMAIN_NAME_RE.match(name):
        raise InvalidInput(
            f"invalid domain name {name!r}: use 1-100 letters, digits, '-', '_' or '.', "
            "starting with a letter or digit"
        )
    return name


def _task_type_checked(task_type: str):
    try:
        return TASK_TYPES[task_type]
    except KeyError:
        raise InvalidInput(
            f"unknown task type {task_type!r}; choose one of: {', '.join(TASK_TYPES)}"
        ) from None


def workspace_check(workspace: str | os.PathLike) -> Path:
    """Return the workspace as an absolute path; raise InvalidInput if it is missing or unwritable."""
    if not str(workspace or "").strip():
        raise InvalidInput("a workspace directory is required")
    if "\x00" in str(workspace):
        raise InvalidInput("the workspace path contains a NUL character")
    path = Path(workspace).expanduser().resolve()
    if not path.exists():
        raise InvalidInput(f"workspace does not exist: {path}")
    if not path.is_dir():
        raise InvalidInput(f"workspace is not a directory: {path}")
    if path == Path(path.anchor):
        raise InvalidInput("the workspace cannot be the filesystem root; choose a folder for this domain")
    # os.access() says yes to root on most read-only cases; creating a file is the real test.
    try:
        fd, probe = tempfile.mkstemp(prefix=".dojo-write-check-", dir=path)
    except OSError as exc:
        raise InvalidInput(f"workspace is not writable: {path} ({exc.strerror})") from None
    os.close(fd)
    os.unlink(probe)
    return path


def _id_columns_clean(id_columns: list[str] | str | None) -> list[str]:
    if not id_columns:
        return []
    if isinstance(id_columns, str):
        id_columns = id_columns.split(",")
    return [c.strip() for c in id_columns if c and c.strip()]


def _program_text(*, name: str, description: str, task_type: str, metric: str, direction: str) -> str:
    label = TASK_TYPES[task_type].label.lower()
    goal = description.strip() or "Describe what this research should achieve and why it matters."
    better = "lower" if direction == "minimize" else "higher"
    return f"""# Program: {name}

The agent reads this file at the start of every run. Edit it to steer the research.

## Goal
{goal}

## Target
A {label} model scored by `{metric}` ({better} is better) on the frozen evaluation contract.

## Success
Beat the first baseline's `{metric}` clearly on validation, with a small gap to the private holdout.

## Notes
- Prefer simple, readable models before ensembles.
- Record what worked and what did not as knowledge.
"""


def _setup_text(
    *, name: str, task_type: str, metric: str, direction: str, data_path: str,
    target_column: str, id_columns: list[str],
) -> str:
    """SETUP.md. The `- key: value` lines of the two sections are read by domains.generation."""
    task = TASK_TYPES[task_type]
    dataset = [f"- task type: {task_type}"]
    loader = SKLEARN_LOADER_RE.match(data_path)
    if loader:
        dataset.append(f"- loader: {loader.group(1)}")
    elif data_path:
        dataset.append(f"- data: {data_path}")
    if target_column:
        dataset.append(f"- target: {target_column}")
    if id_columns:
        dataset.append(f"- id columns: {', '.join(id_columns)}")
    dataset += [f"- test ratio: {DEFAULT_TEST_RATIO}", f"- seed: {DEFAULT_SEED}"]
    hint = ""
    # No real loader name in the hint: the generator also finds loader names in prose.
    if not data_path:
        hint = (
            "\nNo data set yet: add `- data: path/to/file.csv` (relative to the workspace) and "
            "`- target: column`, or `- loader: load_<name>` for a dataset bundled with scikit-learn.\n"
        )
    return f"""# Setup: {name}

How the data is loaded and how predictions are scored. Dojo generates the frozen `load_data`
and `evaluate` tools from this file; edit it before generating them.

## Dataset
{chr(10).join(dataset)}
{hint}
Describe the data here: what one row is, columns to drop, known leakage.

## Evaluate
- primary metric: {metric} ({direction})
- metrics: {', '.join(task.metrics)}
- holdout ratio: {DEFAULT_HOLDOUT_RATIO}

`train()` returns {task.train_output}.
"""


def _write_new_file(path: Path, text: str) -> bool:
    """Create `path` with `text`; return False (and leave it alone) when it already exists."""
    try:
        with open(path, "x", encoding="utf-8") as handle:
            handle.write(text)
    except FileExistsError:
        return False
    return True


def domain_create(
    *,
    name: str,
    task_type: str,
    workspace: str | os.PathLike,
    description: str = "",
    data_path: str = "",
    target_column: str = "",
    metric: str = "",
    id_columns: list[str] | str | None = None,
    git_url: str = "",
    git_ref: str = "",
    owner=None,
) -> Domain:
    """Create the domain, its unfrozen task, PROGRAM.md and SETUP.md, and make it current.

    With `git_url` (instead of a workspace) the repository is cloned into
    DOJO_HOME/workspaces/<name> and checked out at `git_ref` (default: the remote's default
    branch); the commit is recorded on the domain. `owner` is the user who created it from the web
    or the API (None from a management command: staff-only until an owner is set in the admin).
    All or nothing: on any failure no row is left and no file (nor clone) this call created
    remains. Existing PROGRAM.md / SETUP.md files in the workspace are kept as they are.
    """
    name = domain_name_check(name)
    task = _task_type_checked(task_type)
    metric = (metric or "").strip() or task.primary_metric
    if metric not in task.metrics:
        raise InvalidInput(
            f"metric {metric!r} is not a {task_type} metric; choose one of: {', '.join(task.metrics)}"
        )
    direction = task.metric_directions[metric]
    data_path = (data_path or "").strip()
    target_column = (target_column or "").strip()
    ids = _id_columns_clean(id_columns)
    git_url, git_ref = (git_url or "").strip(), workspaces.git_ref_check(git_ref)
    if git_url:
        if str(workspace or "").strip():
            raise InvalidInput("give either a workspace folder or a git URL, not both")
        git_url = workspaces.git_url_check(git_url)
        if Domain.objects.filter(name=name).exists():
            raise Conflict(f"a domain named {name!r} already exists")
        clone = workspaces.git_clone(url=git_url, ref=git_ref, target=workspaces.clone_target(name))
        try:
            with transaction.atomic():
                domain = domain_create(
                    name=name, task_type=task_type, workspace=clone.path, description=description,
                    data_path=data_path, target_column=target_column, metric=metric, id_columns=ids, owner=owner,
                )
                Domain.objects.filter(pk=domain.pk).update(git_url=git_url, git_ref=git_ref, git_commit=clone.commit)
        except BaseException:
            shutil.rmtree(clone.path, ignore_errors=True)
            raise
        domain.refresh_from_db()
        return domain
    if git_ref:
        raise InvalidInput("a git ref needs a git URL")
    path = workspace_check(workspace)
    if Domain.objects.filter(name=name).exists():
        raise Conflict(f"a domain named {name!r} already exists")
    program_path, setup_path = path / "PROGRAM.md", path / "SETUP.md"
    for file_path in (program_path, setup_path):
        if file_path.exists() and not file_path.is_file():
            raise InvalidInput(f"{file_path} exists and is not a file")

    created: list[Path] = []
    try:
        with transaction.atomic():
            domain = Domain(
                name=name,
                description=(description or "").strip(),
                workspace_path=str(path),
                owner=owner,
                program_path=str(program_path),
                setup_path=str(setup_path),
            )
            domain.full_clean(validate_unique=False)
            domain.save()
            Task.objects.create(
                domain=domain,
                task_type=task_type,
                primary_metric=metric,
                direction=direction,
                expected_metrics=list(task.metrics),
                config={
                    "data_path": data_path,
                    "target_column": target_column,
                    "id_columns": ids,
                    "test_ratio": DEFAULT_TEST_RATIO,
                    "seed": DEFAULT_SEED,
                    "holdout_ratio": DEFAULT_HOLDOUT_RATIO,
                },
                contract_version=CONTRACT_VERSION,
            )
            _current_set(domain)
            # Files last, still inside the transaction: a failed write rolls the rows back.
            texts = {
                program_path: _program_text(
                    name=name, description=domain.description, task_type=task_type,
                    metric=metric, direction=direction,
                ),
                setup_path: _setup_text(
                    name=name, task_type=task_type, metric=metric, direction=direction,
                    data_path=data_path, target_column=target_column, id_columns=ids,
                ),
            }
            for file_path, text in texts.items():
                if _write_new_file(file_path, text):
                    created.append(file_path)
    except BaseException as exc:
        for file_path in created:
            file_path.unlink(missing_ok=True)
        if isinstance(exc, IntegrityError):
            raise Conflict(f"a domain named {name!r} already exists") from None
        if isinstance(exc, OSError):
            raise InvalidInput(f"could not write {exc.filename or path}: {exc.strerror}") from None
        if isinstance(exc, ValidationError):
            raise InvalidInput(_validation_message(exc)) from None
        raise
    return domain


def _validation_message(exc: ValidationError) -> str:
    if hasattr(exc, "message_dict"):
        return "; ".join(f"{field}: {' '.join(msgs)}" for field, msgs in exc.message_dict.items())
    return " ".join(exc.messages)


# Settings that decide what runs in the sandbox; every change of one is kept in DomainChange.
HISTORY_FIELDS = ("workspace_path", "workspace_python", "env_vars")
PYTHON_CHECK_TIMEOUT = 30
_PYTHON_VERSION_RE = re.compile(r"^3\.(\d+)\.(\d+)$")
# Asks for the version and for a Python-only computation on a fresh nonce, so a program that
# merely prints something version-like is not taken for an interpreter.
_PYTHON_PROBE = "import sys; print('%d.%d.%d' % sys.version_info[:3]); print(sum(map(ord, sys.argv[1])))"


def workspace_python_normalize(python: str) -> str:
    """An absolute interpreter path with its folder free of symlinks (the sandbox cannot bind a path
    through one); the file name is kept, so a venv's python stays the venv's."""
    python = python.strip()
    if not python or not os.path.isabs(python):
        return python
    return os.path.join(os.path.realpath(os.path.dirname(python)), os.path.basename(python))


def workspace_python_check(*, python: str, workspace: str | os.PathLike) -> str:
    """Run `python -c` inside the sandbox (cwd = the workspace) and return the version it answers ("3.x.y").

    Raises InvalidInput with the reason when the path is not an executable file, the program fails,
    times out, or does not answer like a Python 3 interpreter. Records nothing."""
    if not os.path.isabs(python):
        raise InvalidInput(f"workspace python must be an absolute path: {python}")
    if not (os.path.isfile(python) and os.access(python, os.X_OK)):
        raise InvalidInput(f"workspace python is not an executable file: {python}")
    nonce = os.urandom(8).hex()
    run = sandbox_run(
        [python, "-c", _PYTHON_PROBE, nonce], cwd=workspace, timeout=PYTHON_CHECK_TIMEOUT,
        env=sandbox_env(), memory_mb=2048, output_cap=4096,
    )
    if run.killed_reason:
        raise InvalidInput(f"workspace python {python} did not answer: {run.killed_reason}")
    lines = run.stdout_tail.strip().splitlines()
    version = lines[0].strip() if lines else ""
    if run.returncode != 0 or len(lines) != 2 or not _PYTHON_VERSION_RE.match(version) \
            or lines[1].strip() != str(sum(map(ord, nonce))):
        detail = (run.stderr_tail.strip().splitlines() or lines or ["no output"])[-1][:200]
        raise InvalidInput(
            f"{python} is not a Python 3 interpreter (run with -c in the sandbox it answered: {detail})"
        )
    return version


def domain_change_record(*, domain: Domain, field: str, old, new, user=None) -> DomainChange | None:
    """Add a row to the domain's history when `old` != `new` (None otherwise); `user` None means a
    management command or a background worker."""
    if old == new:
        return None
    return DomainChange.objects.create(
        domain=domain, user=user, field=field, old_value=_history_value(old), new_value=_history_value(new),
    )


def _history_value(value) -> str:
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    return str(value)


def domain_update(
    *,
    domain: Domain,
    name: str | None = None,
    description: str | None = None,
    status: str | None = None,
    workspace: str | os.PathLike | None = None,
    workspace_python: str | None = None,
    env_vars: dict[str, str] | None = None,
    hide_holdout_from_viewers: bool | None = None,
    owner_username: str | None = None,
    user=None,
) -> Domain:
    """Change the given fields (None leaves a field as it is); return the domain.

    Raises InvalidInput / Conflict before changing anything: a new interpreter must answer with its
    version when run in the sandbox (workspace_python_check). A change of the workspace, the
    interpreter or the env vars is recorded in DomainChange with `user` (None: a management command),
    in the same transaction as the change."""
    before = {field: getattr(domain, field) for field in HISTORY_FIELDS}
    old_owner = domain.owner.username if domain.owner_id else ""
    new_owner = None
    if owner_username is not None:
        from django.contrib.auth import get_user_model

        new_owner = get_user_model().objects.filter(username=owner_username.strip(), is_active=True).first()
        if new_owner is None:
            raise NotFound(f"no user named {owner_username!r}")
    if name is not None:
        name = domain_name_check(name)
        if Domain.objects.filter(name=name).exclude(pk=domain.pk).exists():
            raise Conflict(f"a domain named {name!r} already exists")
    if status is not None and status not in Domain.Status.values:
        raise InvalidInput(f"unknown status {status!r}; choose one of: {', '.join(Domain.Status.values)}")
    new_workspace = str(workspace_check(workspace)) if workspace is not None else domain.workspace_path
    if workspace_python is not None:
        workspace_python = workspace_python.strip()
        workspace_python = workspace_python_normalize(workspace_python)
        if workspace_python:
            workspace_python_check(python=workspace_python, workspace=new_workspace)
    if env_vars is not None:
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in env_vars.items()):
            raise InvalidInput("env vars must map names to strings")
        bad = [k for k, v in env_vars.items() if not ENV_VAR_NAME_RE.match(k) or "\x00" in v]
        if bad:
            raise InvalidInput(f"invalid env var {bad[0]!r}: names are letters, digits and '_' (not first a digit), values have no NUL")
    if name is not None:
        domain.name = name
    if description is not None:
        domain.description = description.strip()
    if status is not None:
        domain.status = status
    if workspace is not None:
        domain.workspace_path = new_workspace
    if workspace_python is not None:
        domain.workspace_python = workspace_python
    if env_vars is not None:
        domain.env_vars = env_vars
    if hide_holdout_from_viewers is not None:
        domain.hide_holdout_from_viewers = bool(hide_holdout_from_viewers)
    if new_owner is not None:
        domain.owner = new_owner
    try:
        domain.full_clean(validate_unique=False)
        with transaction.atomic():
            domain.save()
            for field, old in before.items():
                domain_change_record(domain=domain, field=field, old=old, new=getattr(domain, field), user=user)
            if new_owner is not None:
                # The new owner needs no membership: their role is "owner" now.
                DomainMember.objects.filter(domain=domain, user=new_owner).delete()
                domain_change_record(domain=domain, field="owner", old=old_owner, new=new_owner.username, user=user)
    except ValidationError as exc:
        domain.refresh_from_db()
        raise InvalidInput(_validation_message(exc)) from None
    except IntegrityError:
        domain.refresh_from_db()
        raise Conflict(f"a domain named {name!r} already exists") from None
    return domain


def domain_git_sync(*, domain: Domain, ref: str | None = None) -> dict:
    """Fetch the domain's git workspace and check out `ref` (None: its recorded ref; "" the remote's
    default branch); record the ref and the new commit.

    Returns {"previous", "commit", "ref", "changed_files", "contract_files_changed"}: the last lists
    the files the frozen contract imports that now differ from what was frozen (experiments then
    refuse to run until the task is frozen again, or a sync moves back). InvalidInput (GitFailed) with the checkout unchanged when the
    domain has no git URL, the fetch fails, the ref does not exist or local edits are in the way."""
    if not domain.git_url:
        raise InvalidInput(f"domain {domain.name!r} has no git URL: its workspace is a local folder")
    ref = domain.git_ref if ref is None else workspaces.git_ref_check(ref)
    synced = workspaces.git_sync(path=domain.workspace, ref=ref)
    previous_commit = domain.git_commit
    domain.git_ref, domain.git_commit = ref, synced.commit
    with transaction.atomic():
        domain.save(update_fields=["git_ref", "git_commit", "updated_at"])
        domain_change_record(domain=domain, field="git_commit", old=previous_commit, new=synced.commit)
    task = domain.task_or_none
    # Compared with what was frozen (not with the previous commit): moving back restores the contract.
    contract = (
        _contract_files_changed(workspace=domain.workspace, files=task.contract_files or {})
        if task and task.is_frozen else []
    )
    return {
        "previous": synced.previous,
        "commit": synced.commit,
        "ref": ref,
        "changed_files": synced.changed_files[:1000],
        "contract_files_changed": contract,
    }


def domain_member_set(*, domain: Domain, username: str, role: str) -> DomainMember:
    """Give `username` the role ("viewer" or "editor") on `domain`, adding or changing the membership.

    Raises NotFound for an unknown or inactive user, InvalidInput for an unknown role or for the
    domain's owner (who already has every right). Returns the membership."""
    from django.contrib.auth import get_user_model

    if role not in DomainMember.Role.values:
        raise InvalidInput(f"unknown role {role!r}; choose one of: {', '.join(DomainMember.Role.values)}")
    user = get_user_model().objects.filter(username=(username or "").strip(), is_active=True).first()
    if user is None:
        raise NotFound(f"no user named {username!r}")
    if user.pk == domain.owner_id:
        raise InvalidInput(f"{user.username} owns {domain.name}; the owner needs no role")
    member, _ = DomainMember.objects.update_or_create(domain=domain, user=user, defaults={"role": role})
    return member


def domain_member_remove(*, domain: Domain, username: str) -> None:
    """Remove `username`'s membership of `domain`; NotFound when they are not a member."""
    deleted, _ = DomainMember.objects.filter(domain=domain, user__username=(username or "").strip()).delete()
    if not deleted:
        raise NotFound(f"{username!r} is not a member of {domain.name}")


# An environment build that has said "building" for longer than this lost its worker.
ENV_BUILD_STALE_SECONDS = 2 * 3600


def _env_claim(domain: Domain, *, force: bool = False) -> None:
    """Mark the domain's environment `building`; Conflict when a build is already under way."""
    from datetime import timedelta

    stale = timezone.now() - timedelta(seconds=ENV_BUILD_STALE_SECONDS)
    rows = Domain.objects.filter(pk=domain.pk)
    if not force:
        rows = rows.exclude(Q(env_state="building") & Q(updated_at__gt=stale))
    claimed = rows.update(env_state="building", env_error="", env_log="", updated_at=timezone.now())
    if not claimed:
        raise Conflict(
            f"an environment build for {domain.name!r} is already running; wait for it to end (if no worker "
            f"runs it, `manage.py dojo_domain setup --domain {domain.name} --force` builds it here)"
        )
    domain.env_state, domain.env_error, domain.env_log = "building", "", ""


def domain_env_request(*, domain: Domain, run_setup_script: bool = False) -> Domain:
    """Queue an environment build (django-q2, after the transaction commits); return the domain
    marked `building`. Conflict when one is running; InvalidInput when the workspace declares
    nothing to install."""
    workspaces.env_requirements_check(domain.workspace, run_setup_script=run_setup_script)
    with transaction.atomic():
        _env_claim(domain)
        transaction.on_commit(lambda: _env_enqueue(domain.pk, run_setup_script))
    return domain


def _env_enqueue(domain_id: int, run_setup_script: bool) -> None:
    from django_q.tasks import async_task

    async_task("domains.tasks.domain_env_build_task", domain_id, run_setup_script,
               task_name=f"dojo-env-{domain_id}", timeout=int(workspaces.env_timeout()) + 60)


def domain_env_build(*, domain: Domain, run_setup_script: bool = False, claimed: bool = False,
                     on_output=None, force: bool = False) -> Domain:
    """Build the domain's environment now (the CLI, and the queued task) and record it.

    Returns the domain with env_state "ready": env_python, env_lock (pip freeze) and the log's tail
    recorded; an environment Dojo built before is deleted. On failure records env_state "failed"
    with the error and the log's tail, keeps the previous environment, and raises EnvFailed
    (InvalidInput). Conflict when another build is running (unless `claimed` by the caller, or
    `force`: a queued build no worker took)."""
    if not claimed:
        workspaces.env_requirements_check(domain.workspace, run_setup_script=run_setup_script)
        _env_claim(domain, force=force)
    previous = domain.env_python
    try:
        built = workspaces.env_build(domain_id=domain.pk, workspace=domain.workspace,
                                     run_setup_script=run_setup_script, on_output=on_output)
    except BaseException as exc:
        short = getattr(exc, "short", None) or f"{type(exc).__name__}: {exc}"
        tail = getattr(exc, "log_tail", "") or workspaces.log_tail(workspaces.env_root(domain.pk) / "build.log")
        Domain.objects.filter(pk=domain.pk).update(env_state="failed", env_error=short[:2000],
                                                   env_log=tail, updated_at=timezone.now())
        domain.env_state, domain.env_error, domain.env_log = "failed", short[:2000], tail
        if isinstance(exc, DojoError):
            raise
        if isinstance(exc, Exception):
            raise workspaces.EnvFailed(short, tail) from exc
        raise
    with transaction.atomic():
        Domain.objects.filter(pk=domain.pk).update(
            env_python=built.python, env_lock=built.lock, env_state="ready", env_error="", env_log=built.log,
            env_built_at=timezone.now(), updated_at=timezone.now(),
        )
        domain.refresh_from_db()
        domain_change_record(domain=domain, field="env_python", old=previous, new=built.python)
    root = workspaces.env_root(domain.pk)
    if previous and previous != built.python and root in Path(previous).parents:
        shutil.rmtree(Path(previous).parent.parent, ignore_errors=True)
    return domain


_versions: dict[tuple, str] = {}


def _interpreter_version(python: str) -> str:
    """The version an interpreter answers ("" when it does not), cached by its file identity.

    Asked inside the sandbox like the trainer: a workspace interpreter (or a venv whose packages the
    workspace chose, with their .pth files) never runs on the trusted side."""
    try:
        st = os.stat(python)
    except OSError:
        return ""
    key = (python, st.st_ino, st.st_mtime_ns)
    if key not in _versions:
        if os.path.realpath(python) == os.path.realpath(sys.executable):
            _versions[key] = ".".join(map(str, sys.version_info[:3]))
        else:
            try:
                _versions[key] = workspace_python_check(python=python, workspace=tempfile.gettempdir())
            except InvalidInput:
                _versions[key] = ""
    return _versions[key]


def domain_workspace_status(*, domain: Domain) -> dict:
    """Everything about the workspace a person checks first: whether it exists and is writable, its
    git source and checked-out commit, the environment (state, interpreter, lock size, build log) and
    the trainer's interpreter with its version."""
    path = domain.workspace
    exists = path.is_dir()
    writable = False
    if exists:
        try:  # os.access() says yes to root on read-only mounts; creating a file is the real test
            fd, probe = tempfile.mkstemp(prefix=".dojo-write-check-", dir=path)
            os.close(fd)
            os.unlink(probe)
            writable = True
        except OSError:
            writable = False
    python = domain.trainer_python
    declared: dict = {}
    if exists:
        try:
            declared = workspaces.env_requirements(path)
        except InvalidInput:
            declared = {}
    lock_lines = [ln for ln in domain.env_lock.splitlines() if ln.strip() and not ln.startswith("#")]
    return {
        "path": str(path),
        "exists": exists,
        "writable": writable,
        "git": {
            "url": domain.git_url,
            "ref": domain.git_ref,
            "commit": domain.git_commit,
            "head": workspaces.git_head(path) if exists else "",
        },
        "environment": {
            "state": domain.env_state or ("none" if not domain.env_python else "ready"),
            "ready": bool(domain.env_python) and Path(domain.env_python).exists(),
            "python": domain.env_python,
            "packages": len(lock_lines),
            "lock_sha256": hashlib.sha256(domain.env_lock.encode()).hexdigest() if domain.env_lock else "",
            "built_at": domain.env_built_at.isoformat() if domain.env_built_at else None,
            "error": domain.env_error,
            "log": domain_env_log(domain=domain),
            "declared": {
                "requirements_txt": bool(declared.get("requirements_txt")),
                "pyproject": bool(declared.get("has_pyproject")),
                "venv": declared.get("venv", ""),
                "setup_sh": exists and (path / "setup.sh").is_file(),
            },
        },
        "interpreter": {
            "path": python,
            "source": "workspace_python" if domain.workspace_python else ("environment" if domain.env_python else "dojo"),
            "version": _interpreter_version(python),
        },
    }


def domain_workspace_scan(*, domain: Domain) -> dict:
    """workspaces.workspace_scan of the domain's workspace; each suggestion carries `setup_text`, the
    SETUP.md text with it applied (nothing is written: the person confirms by saving it)."""
    scan = workspaces.workspace_scan(domain.workspace)
    current = domain_file_read(domain=domain, which="setup")
    for suggestion in scan["suggestions"]:
        suggestion["setup_text"] = workspaces.setup_text_suggested(
            current, data=suggestion["data"], target=suggestion["target"], id_columns=suggestion["id_columns"]
        )
    return scan


def domain_scan_apply(*, domain: Domain, index: int = 0) -> dict:
    """Write suggestion `index` of a fresh scan into SETUP.md; return that suggestion. InvalidInput
    when the scan has no such suggestion."""
    suggestions = domain_workspace_scan(domain=domain)["suggestions"]
    if not 0 <= index < len(suggestions):
        raise InvalidInput(
            f"the scan has {len(suggestions)} suggestion(s); there is no number {index + 1}"
            if suggestions else "the scan found no data file to suggest"
        )
    chosen = suggestions[index]
    domain_file_write(domain=domain, which="setup", text=chosen["setup_text"])
    return chosen


def domain_env_log(*, domain: Domain) -> str:
    """The build log's tail: live from the log file while building, else as recorded."""
    if domain.env_state == "building":
        return workspaces.log_tail(workspaces.env_root(domain.pk) / "build.log")
    return domain.env_log


def domain_delete(*, domain: Domain) -> None:
    """Delete the domain and everything recorded for it. The workspace and its files are the user's: kept."""
    domain.delete()


def _current_set(domain: Domain) -> None:
    current = CurrentDomain.objects.first()
    if current is None:
        CurrentDomain.objects.create(domain=domain)
    else:
        current.domain = domain
        current.save(update_fields=["domain", "updated_at"])


def domain_use(*, domain: Domain) -> Domain:
    """Make `domain` the CLI's current domain."""
    with transaction.atomic():
        _current_set(domain)
    return domain


def domain_current() -> Domain | None:
    current = CurrentDomain.objects.select_related("domain").first()
    return current.domain if current else None


def domain_resolve(*, name: str | None) -> Domain:
    """The domain named `name` (or with that id), else the current one; NotFound with a hint."""
    if name:
        domain = Domain.objects.filter(name=name).first()
        if domain is None and name.isascii() and name.isdigit() and len(name) <= 18:
            domain = Domain.objects.filter(pk=int(name)).first()
        if domain is None:
            raise NotFound(f"no domain named {name!r}; `manage.py dojo_domain ls` lists them")
        return domain
    domain = domain_current()
    if domain is None:
        raise NotFound(
            "no current domain: create one with `manage.py dojo_init` "
            "or pick one with `manage.py dojo_domain use NAME`"
        )
    return domain


def domain_file_read(*, domain: Domain, which: str) -> str:
    """The text of PROGRAM.md (`which="program"`) or SETUP.md (`"setup"`); "" when the file is missing."""
    path = domain.file_path(which)
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return ""
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"cannot read {path}: {exc}") from None


def domain_file_write(*, domain: Domain, which: str, text: str) -> None:
    """Replace PROGRAM.md or SETUP.md with `text`, atomically (a reader never sees half a file)."""
    path = domain.file_path(which)
    text = text.replace("\r\n", "\n")
    if text and not text.endswith("\n"):
        text += "\n"
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except OSError as exc:
        raise InvalidInput(f"cannot write {path}: {exc.strerror}") from None


# --- API tokens ------------------------------------------------------------------------------


def token_create(*, user, name: str = "") -> tuple[ApiToken, str]:
    """Create a token for `user`; return it with the plain token, which is shown once and never stored."""
    token = ApiToken(user=user, name=(name or "").strip())
    plain = token.set_new_token()
    token.save()
    return token, plain


def token_revoke(*, token: ApiToken) -> ApiToken:
    if token.revoked_at is None:
        token.revoked_at = timezone.now()
        token.save(update_fields=["revoked_at"])
    return token


# --- end of domains --------------------------------------------------------------------------


# --- Task and its tools ----------------------------------------------------------------------
# The frozen evaluation contract: config, tool versions, generation, verification, freeze.

# Config keys a user may set, with their type; anything else is refused so typos do not pass silently.
TASK_CONFIG_TYPES: dict[str, type] = {
    "data_path": str,
    "target_column": str,
    "id_columns": list,
    "test_ratio": float,
    "seed": int,
    "holdout_ratio": float,
    "verify_timeout_seconds": float,
    "limits": dict,
    # What agents see of validation scores (experiments/feedback.py); not part of the contract.
    "feedback_mode": str,
    "feedback_threshold": float,
}
FEEDBACK_MODES = ("ladder", "exact")
# Config keys that may change on a frozen task: they are not part of the contract.
_NOT_CONTRACT = {"limits", "feedback_mode", "feedback_threshold"}
TOOL_NAMES = ("load_data", "evaluate")
_FROZEN_TOOLS = "the task is frozen, so its tools cannot change; unfreeze it first (`dojo_task unfreeze --reason ...`)"


def task_for_domain(*, domain: Domain) -> Task:
    task = Task.objects.filter(domain=domain).first()
    if task is None:
        raise NotFound(f"domain {domain.name!r} has no task; create one (API: POST /api/domains/{domain.pk}/task)")
    return task


def _task_limits_clean(limits, *, base: dict | None = None) -> dict:
    """Per-task experiment limits: known keys, positive finite numbers (cpu_share at most 1);
    null removes an override."""
    if not isinstance(limits, dict):
        raise InvalidInput("task config limits must be an object, e.g. {\"timeout_seconds\": 120}")
    merged = dict(base or {})
    for key, value in limits.items():
        kind = LIMIT_KEYS.get(key)
        if kind is None:
            raise InvalidInput(f"unknown limit {key!r}; known limits: {', '.join(LIMIT_KEYS)}")
        if value is None:
            merged.pop(key, None)
            continue
        try:
            if isinstance(value, bool):
                raise TypeError
            number = kind(value)
            if not math.isfinite(number) or number <= 0 or number > DB_INT_MAX:
                raise ValueError
        except (TypeError, ValueError, OverflowError):
            raise InvalidInput(f"limit {key} must be a positive number, got {value!r}") from None
        if key == "cpu_share" and number > 1:
            raise InvalidInput(f"limit cpu_share must be in (0, 1], got {value!r}")
        merged[key] = number
    return merged


def _task_config_clean(config: dict, *, base: dict | None = None) -> dict:
    if not isinstance(config, dict):
        raise InvalidInput("task config must be an object of key: value")
    merged = dict(base or {})
    for key, value in config.items():
        kind = TASK_CONFIG_TYPES.get(key)
        if kind is None:
            raise InvalidInput(f"unknown task config key {key!r}; known keys: {', '.join(TASK_CONFIG_TYPES)}")
        if kind is dict:
            merged[key] = _task_limits_clean(value, base=merged.get(key))
            continue
        try:
            if kind is list:
                value = [c.strip() for c in (value.split(",") if isinstance(value, str) else value) if str(c).strip()]
                value = [str(c) for c in value]
            elif kind is str:
                value = str(value).strip()
            elif isinstance(value, bool):
                raise TypeError
            else:
                value = kind(value)
                if kind is float and not math.isfinite(value):
                    raise ValueError
        except (TypeError, ValueError, OverflowError):
            expected = f"a finite {kind.__name__}" if kind in (int, float) else kind.__name__
            raise InvalidInput(f"task config {key} must be {expected}, got {value!r}") from None
        merged[key] = value
    if merged.get("feedback_mode", "ladder") not in FEEDBACK_MODES:
        raise InvalidInput(f"feedback_mode must be one of {', '.join(FEEDBACK_MODES)}, got {merged['feedback_mode']!r}")
    if "feedback_threshold" in merged and not merged["feedback_threshold"] > 0:
        raise InvalidInput(f"feedback_threshold must be a positive number, got {merged['feedback_threshold']!r}")
    if not 0 < merged.get("test_ratio", DEFAULT_TEST_RATIO) < 1:
        raise InvalidInput(f"test_ratio must be between 0 and 1 (exclusive), got {merged['test_ratio']}")
    if not 0 <= merged.get("holdout_ratio", DEFAULT_HOLDOUT_RATIO) < 1:
        raise InvalidInput(f"holdout_ratio must be in [0, 1) (0 turns the holdout off), got {merged['holdout_ratio']}")
    if not 0 <= merged.get("seed", DEFAULT_SEED) <= SEED_MAX:
        raise InvalidInput(f"seed must be between 0 and {SEED_MAX}, got {merged['seed']}")
    if merged.get("verify_timeout_seconds", 1) <= 0:
        raise InvalidInput("verify_timeout_seconds must be positive")
    return merged


def task_create(*, domain: Domain, task_type: str, metric: str = "", config: dict | None = None) -> Task:
    """Create the (unfrozen) task of a domain that has none."""
    spec = _task_type_checked(task_type)
    metric = (metric or "").strip() or spec.primary_metric
    if metric not in spec.metrics:
        raise InvalidInput(f"metric {metric!r} is not a {task_type} metric; choose one of: {', '.join(spec.metrics)}")
    defaults = {"test_ratio": DEFAULT_TEST_RATIO, "seed": DEFAULT_SEED, "holdout_ratio": DEFAULT_HOLDOUT_RATIO}
    clean = _task_config_clean(config or {}, base=defaults)
    try:
        with transaction.atomic():
            return Task.objects.create(
                domain=domain, task_type=task_type, primary_metric=metric,
                direction=spec.metric_directions[metric], expected_metrics=list(spec.metrics),
                config=clean, contract_version=CONTRACT_VERSION,
            )
    except IntegrityError:
        raise Conflict(f"domain {domain.name!r} already has a task") from None


def task_delete(*, task: Task) -> None:
    """Delete an unfrozen task and its tool versions (a new one can then be created with another
    type). Conflict when the task is frozen: unfreeze it first, with a reason."""
    with transaction.atomic():
        locked = Task.objects.select_for_update().filter(pk=task.pk).first()
        if locked is None:
            raise NotFound("the domain has no task")
        if locked.is_frozen:
            raise Conflict("the task is frozen; unfreeze it (with a reason) before deleting it")
        locked.delete()


def task_update(*, task: Task, primary_metric: str | None = None, config: dict | None = None) -> Task:
    """Change the primary metric and/or config keys; refused on a frozen task (Conflict)."""
    with transaction.atomic():
        task = Task.objects.select_for_update().get(pk=task.pk)
        # Limits are not part of the contract, so they may change on a frozen task.
        if task.is_frozen and (primary_metric is not None or set(config or {}) - _NOT_CONTRACT):
            raise Conflict("the task is frozen; unfreeze it before changing its metric or config")
        if primary_metric is not None:
            spec = TASK_TYPES[task.task_type]
            metric = primary_metric.strip()
            if metric not in spec.metrics:
                raise InvalidInput(
                    f"primary metric {metric!r} is not one of this {task.task_type} task's metrics: {', '.join(spec.metrics)}"
                )
            task.primary_metric = metric
            task.direction = spec.metric_directions[metric]
        if config is not None:
            task.config = _task_config_clean(config, base=task.config)
        task.save()
    return task


def task_tools_current(*, task: Task) -> dict[str, TaskTool | None]:
    current = {tool.name: tool for tool in task.tools.filter(is_current=True)}
    return {name: current.get(name) for name in TOOL_NAMES}


def _tool_save_locked(*, task: Task, name: str, code: str, origin: str, raw_reply: str = "") -> TaskTool:
    """Add a new current version of a tool (inside the caller's transaction, task row locked)."""
    code = code.replace("\r\n", "\n")
    current = task.tools.filter(name=name, is_current=True).first()
    if current is not None and current.code == code:
        return current  # same code: keep its version and its verification
    latest = task.tools.filter(name=name).order_by("-version").first()
    if current is not None:
        current.is_current = False
        current.save(update_fields=["is_current"])
    return TaskTool.objects.create(
        task=task, name=name, version=(latest.version + 1) if latest else 1, is_current=True,
        code=code, code_sha256=hashlib.sha256(code.encode()).hexdigest(), entrypoint=name,
        origin=origin, raw_reply=raw_reply,
    )


def task_tools_save(*, task: Task, codes: dict[str, str], origin: str, raw_reply: str = "") -> list[TaskTool]:
    """Save new versions of the given tools (old versions are kept). Conflict when frozen."""
    unknown = [name for name in codes if name not in TOOL_NAMES]
    if unknown:
        raise InvalidInput(f"unknown tool {unknown[0]!r}; the tools are {', '.join(TOOL_NAMES)}")
    if not codes:
        raise InvalidInput("no tool code given (load_data and/or evaluate)")
    if Task.objects.filter(pk=task.pk, frozen_at__isnull=False).exists():
        raise Conflict(_FROZEN_TOOLS)
    for name, code in codes.items():
        if not isinstance(code, str) or not code.strip():
            raise InvalidInput(f"{name}: the code is empty")
        generation.tool_code_check(name=name, code=code)
    with transaction.atomic():
        locked = Task.objects.select_for_update().get(pk=task.pk)
        if locked.is_frozen:
            raise Conflict(_FROZEN_TOOLS)
        return [
            _tool_save_locked(task=locked, name=name, code=code, origin=origin, raw_reply=raw_reply)
            for name, code in codes.items()
        ]


def task_tools_import(*, task: Task, load_data: str | None = None, evaluate: str | None = None) -> list[TaskTool]:
    """Hand-written tools (files or a paste form); a blank one keeps the current version."""
    codes = {n: c for n, c in (("load_data", load_data), ("evaluate", evaluate)) if c and c.strip()}
    return task_tools_save(task=task, codes=codes, origin=TaskTool.Origin.HUMAN)


def _setup_settings_apply(*, task: Task, spec: generation.SetupSpec) -> Task:
    """Write what SETUP.md (and the hint) say about the split and the metric into the task, so
    generation, verification and freeze all use the same values. GenerationError naming the
    line when the metric is not one of this task type's."""
    config = {
        key: value for key, value in (
            ("test_ratio", spec.test_ratio), ("seed", spec.seed), ("holdout_ratio", spec.holdout_ratio),
        ) if value is not None
    }
    metric = None
    if spec.primary_metric:
        metrics = TASK_TYPES[task.task_type].metrics
        if spec.primary_metric not in metrics:
            raise generation.GenerationError(
                f"{spec.primary_metric_line}: {spec.primary_metric!r} is not a {task.task_type} metric; "
                f"choose one of: {', '.join(metrics)}"
            )
        metric = spec.primary_metric if spec.primary_metric != task.primary_metric else None
    if config or metric:
        task = task_update(task=task, primary_metric=metric, config=config or None)
    return task


def task_generate(*, task: Task, method: str = "auto", hint: str = "") -> list[TaskTool]:
    """Generate both tools from SETUP.md: "template", "claude", or "auto" (template when SETUP.md
    matches one, else Claude when available, else an error naming the ways forward).

    `hint` adds instructions: the template reads it like SETUP.md lines (winning over them),
    Claude gets it in the prompt. SETUP.md's test ratio, seed, holdout ratio and primary metric
    are written into the task; what was and was not understood is kept in task.setup_notes."""
    from dojo_site.claude import claude_unavailable_reason

    if method not in ("auto", "template", "claude"):
        raise InvalidInput(f"unknown generation method {method!r}; use auto, template or claude")
    if task.is_frozen:
        raise Conflict(_FROZEN_TOOLS)
    domain = task.domain
    setup_path = Path(domain.setup_path)
    spec = generation.setup_parse(path=setup_path)
    hint = (hint or "").strip()
    if len(hint) > 4000:
        raise InvalidInput("the hint is too long (at most 4000 characters)")
    generation.setup_hint_read(spec, hint)
    task = _setup_settings_apply(task=task, spec=spec)
    workspace = Path(domain.workspace_path)
    config = dict(task.config)
    loader = SKLEARN_LOADER_RE.match(str(config.get("data_path", "")))
    if loader and not (spec.loader or spec.data):
        spec.loader = loader.group(1)
        config["data_path"] = ""
    matches = generation.template_matches(spec, config=config)
    if method == "auto":
        if matches:
            method = "template"
        else:
            reason = claude_unavailable_reason()
            if reason:
                raise InvalidInput(generation.no_generator_message(setup_path=setup_path, reason=reason))
            method = "claude"
    if method == "template":
        if not matches:
            raise InvalidInput(
                f"SETUP.md ({setup_path}) names no data for the template: add '- loader: load_diabetes' or "
                "'- data: FILE' with '- target: COLUMN' under '## Dataset', use `--with claude`, or import "
                "hand-written tools with `dojo_task import`"
            )
        tools = generation.generate_from_template(
            spec=spec, task_type=task.task_type, config=config, workspace=workspace
        )
    else:
        tools = generation.generate_with_claude(
            spec=spec, task_type=task.task_type, config=config, workspace=workspace, domain_name=domain.name,
            hint=hint,
        )
    Task.objects.filter(pk=task.pk).update(setup_notes=spec.notes(hint=hint))
    task.setup_notes = spec.notes(hint=hint)
    return task_tools_save(
        task=task, codes={"load_data": tools.load_data, "evaluate": tools.evaluate},
        origin=tools.origin, raw_reply=tools.raw_reply,
    )


def _tools_codes(task: Task) -> dict[str, str]:
    current = task_tools_current(task=task)
    missing = [name for name, tool in current.items() if tool is None]
    if missing:
        raise NotReady(
            f"the task has no {' or '.join(missing)} tool yet; run `dojo_task generate` or `dojo_task import`"
        )
    return {name: tool.code for name, tool in current.items()}


def task_verify(*, task: Task) -> verification.ToolsRun:
    """Run both tools in the sandbox and record the outcome on the versions that ran.

    A tool edited while the check ran keeps its new version unverified."""
    codes = _tools_codes(task)
    domain = task.domain
    if not Path(domain.workspace_path).is_dir():
        raise InvalidInput(f"the workspace {domain.workspace_path} does not exist")
    run = verification.tools_run(
        codes=codes, task_type=task.task_type, primary_metric=task.primary_metric,
        direction=task.direction, config=task.config, workspace=Path(domain.workspace_path),
        python=domain.workspace_python, env_vars=domain.env_vars,
    )
    # The leak audit of the data this load_data returned ([] when it returned nothing usable);
    # outside the transaction below: the public-source check may walk site-packages once.
    findings = _audit(task, codes, run) if run.load_data.ok else []
    now = timezone.now()
    files = workspace_files_hash(workspace=Path(domain.workspace_path), paths=run.workspace_files)
    with transaction.atomic():
        Task.objects.select_for_update().get(pk=task.pk)
        for name, check in (("load_data", run.load_data), ("evaluate", run.evaluate)):
            sha = hashlib.sha256(codes[name].encode()).hexdigest()
            tool = task.tools.filter(name=name, is_current=True, code_sha256=sha).first()
            if tool is None:
                continue
            tool.verified_ok = check.ok
            tool.verification_errors = check.errors
            tool.verification_sample = {**check.sample, "isolation": run.isolation, "workspace_files": files}
            tool.verification_seconds = check.seconds
            tool.verified_at = now
            tool.verified_code_sha256 = sha
            tool.save(update_fields=[
                "verified_ok", "verification_errors", "verification_sample", "verification_seconds",
                "verified_at", "verified_code_sha256",
            ])
        Task.objects.filter(pk=task.pk).update(audit=findings)
        task.audit = findings
    return run


def _audit(task: Task, codes: dict[str, str], run: verification.ToolsRun) -> list[dict]:
    from domains.sandbox import sandbox_isolation

    loader = SKLEARN_LOADER_RE.match(str((task.config or {}).get("data_path", "")))
    try:
        setup_loader = generation.setup_parse(path=Path(task.domain.setup_path)).loader
    except generation.GenerationError:
        setup_loader = ""
    return audit.audit_task(
        measured=run.audit, task_type=task.task_type, loader=(loader.group(1) if loader else "") or setup_loader or "",
        load_data_code=codes["load_data"], data_file=generation.task_data_file(task=task),
        python=task.domain.workspace_python, isolation=sandbox_isolation(),
    )


def task_fingerprint(*, task: Task) -> str:
    """The fingerprint of the task's current tools and its frozen workspace files ("" when a tool
    is missing)."""
    current = task_tools_current(task=task)
    if any(tool is None for tool in current.values()):
        return ""
    return tools_fingerprint(
        load_data=current["load_data"].code, evaluate=current["evaluate"].code, files=task.contract_files or None
    )


# A workspace module bigger than this is not source code a contract imports.
CONTRACT_FILE_MAX_BYTES = 20 * 1024 * 1024


def workspace_files_hash(*, workspace: Path, paths: list[str]) -> dict[str, str]:
    """sha256 of each workspace-relative file (as reported by verification, so checked here: a
    relative path inside the workspace, a regular file of bounded size). A file that is gone or
    unreadable maps to "" (it then never matches a later hash)."""
    root = Path(workspace).resolve()
    out: dict[str, str] = {}
    for rel in paths:
        if not isinstance(rel, str) or not rel or "\x00" in rel or os.path.isabs(rel):
            continue
        path = (root / rel).resolve()
        if root not in path.parents:
            continue
        out[rel] = _file_sha256(path)
    return out


def _file_sha256(path: Path) -> str:
    try:
        with open(path, "rb") as handle:
            st = os.fstat(handle.fileno())
            if not stat.S_ISREG(st.st_mode) or st.st_size > CONTRACT_FILE_MAX_BYTES:
                return ""
            return hashlib.sha256(handle.read()).hexdigest()
    except OSError:
        return ""


def _contract_files_changed(*, workspace: Path, files: dict[str, str]) -> list[str]:
    """The files of `files` (relative path → sha256) whose content on disk differs (or is gone)."""
    now = workspace_files_hash(workspace=workspace, paths=list(files))
    return [rel for rel, sha in sorted(files.items()) if now.get(rel) != sha or not sha]


def _contract_files_verified(task: Task) -> dict[str, str]:
    """The workspace files the current tools imported when they were verified, with the hashes
    they had then."""
    files: dict[str, str] = {}
    for tool in task_tools_current(task=task).values():
        recorded = (tool.verification_sample or {}).get("workspace_files") if tool else None
        if isinstance(recorded, dict):
            files.update({str(k): str(v) for k, v in recorded.items()})
    return files


def _freeze_blockers(task: Task) -> list[str]:
    problems = []
    for name, tool in task_tools_current(task=task).items():
        if tool is None:
            problems.append(f"{name} is missing; run `dojo_task generate` or `dojo_task import`")
        elif tool.verified_ok is None or not tool.verified_code_sha256:
            problems.append(f"{name} v{tool.version} has not been verified; run `dojo_task verify`")
        elif tool.verified_code_sha256 != tool.code_sha256:
            problems.append(f"{name} v{tool.version} was edited after its verification; run `dojo_task verify` again")
        elif not tool.verified_ok:
            first = (tool.verification_errors or ["failed"])[0]
            problems.append(f"{name} v{tool.version} failed verification: {first}")
    return problems


def _audit_blocker(task: Task, override_reason: str) -> str:
    severe = audit.findings_severe(task.audit)
    if not severe or override_reason:
        return ""
    listed = "; ".join(f"{f.get('check')}: {f.get('detail')}" for f in severe[:5])
    return (f"cannot freeze: the leak audit found {len(severe)} severe problem(s): {listed}. Fix load_data and "
            "verify again, or freeze anyway with an explicit reason (`dojo_task freeze --override-audit "
            "\"reason\"`, the override box on the task page, or \"override_audit\" in the API); it is recorded")


def task_freeze(*, task: Task, override_reason: str = "", by: str = "") -> Task:
    """Freeze the contract: both tools verified with their current code, load_data run once into a
    snapshot, fingerprints stored. NotReady when the tools are not verified, or when the leak audit
    (Task.audit) has a severe finding and no `override_reason` is given; an override is recorded on
    the task (reason, `by` — who —, when, the severe findings). All or nothing."""
    if task.is_frozen:
        raise Conflict(f"the task is already frozen (fingerprint {task.fingerprint[:12]})")
    override_reason = (override_reason or "").strip()
    problems = _freeze_blockers(task)
    if problems:
        raise NotReady("cannot freeze: " + "; ".join(problems))
    blocked = _audit_blocker(task, override_reason)
    if blocked:
        raise NotReady(blocked)
    codes = _tools_codes(task)
    # The workspace modules the tools import are part of the contract: they must be what was
    # verified, and they are fingerprinted with the tools.
    workspace = Path(task.domain.workspace_path)
    files = _contract_files_verified(task)
    changed = _contract_files_changed(workspace=workspace, files=files)
    if changed:
        raise NotReady(
            f"cannot freeze: the workspace file {changed[0]}, imported by load_data/evaluate, changed since "
            "verification; run `dojo_task verify` again"
        )
    fingerprint = tools_fingerprint(load_data=codes["load_data"], evaluate=codes["evaluate"], files=files or None)
    try:
        written = snapshot.snapshot_write(task=task, codes=codes, fingerprint=fingerprint)
    except snapshot.SnapshotFailed as exc:
        raise NotReady("cannot freeze: load_data failed while writing the snapshot: " + "; ".join(exc.run.errors)) from None
    # Where the raw data lives, so the harness can hide it from the trainer: it holds the test rows'
    # labels and load_data's split is reproducible from the seed. Package files holding the same public
    # data are hidden too. Neither ever goes into a workspace bundle.
    data_file = generation.task_data_file(task=task)
    public_sources = audit.audit_hidden_paths(task.audit)
    published: list[dict] = []
    try:
        # Published for the machines that do not share this one's DOJO_HOME (domains/snapshot_share.py).
        archive = snapshot_share.snapshot_publish(root=written.path, fingerprint=fingerprint)
        published.append(archive)
        bundle = snapshot_share.workspace_bundle_publish(
            workspace=workspace, files=files, fingerprint=fingerprint,
            raw_data=[Path(p) for p in [data_file, *public_sources] if p],
        )
        published.append(bundle)
        with transaction.atomic():
            locked = Task.objects.select_for_update().get(pk=task.pk)
            if locked.is_frozen:
                raise Conflict("the task was frozen by someone else meanwhile")
            current = _tools_codes(locked)
            same_tools = tools_fingerprint(
                load_data=current["load_data"], evaluate=current["evaluate"], files=files or None
            ) == fingerprint
            if not same_tools or _freeze_blockers(locked) or _contract_files_verified(locked) != files:
                raise Conflict("the tools changed while the snapshot was written; verify and freeze again")
            if _contract_files_changed(workspace=workspace, files=files):
                raise Conflict("a workspace file the tools import changed during the freeze; verify and freeze again")
            locked.frozen_at = timezone.now()
            locked.fingerprint = fingerprint
            locked.contract_files = files
            locked.data_fingerprint = written.data_fingerprint
            locked.snapshot_path = str(written.path)
            locked.snapshot_info = {**written.info, "data_file": str(data_file) if data_file else "",
                                    "public_source_paths": audit.audit_hidden_paths(locked.audit),
                                    "archive": archive, "workspace_bundle": bundle}
            locked.contract_version = CONTRACT_VERSION
            if _audit_blocker(locked, override_reason):
                raise Conflict("the leak audit changed while the snapshot was written; freeze again")
            severe = audit.findings_severe(locked.audit)
            locked.audit_override = {} if not severe else {
                "reason": override_reason, "by": by, "at": timezone.now().isoformat(),
                "findings": [f"{f.get('check')}: {f.get('detail')}" for f in severe],
            }
            locked.save()
    except BaseException:
        snapshot.snapshot_remove(written.path)
        for info in published:
            snapshot_share.archive_remove(info)
        raise
    return locked


def task_unfreeze(*, task: Task, reason: str) -> Task:
    """Unfreeze explicitly, recording when and why; the snapshot is deleted. Experiments scored
    before keep the old fingerprints, so lists mark them as from another contract."""
    reason = (reason or "").strip()
    if not reason:
        raise InvalidInput("say why the task is unfrozen (a reason is required and recorded)")
    with transaction.atomic():
        locked = Task.objects.select_for_update().get(pk=task.pk)
        if not locked.is_frozen:
            raise Conflict("the task is not frozen")
        old_snapshot = locked.snapshot_path
        old_info = locked.snapshot_info or {}
        locked.frozen_at = None
        locked.fingerprint = ""
        locked.data_fingerprint = ""
        locked.snapshot_path = ""
        locked.snapshot_info = {}
        locked.contract_files = {}
        locked.unfrozen_at = timezone.now()
        locked.unfreeze_reason = reason
        locked.save()
        if old_snapshot:
            transaction.on_commit(lambda: snapshot.snapshot_remove(old_snapshot))
        for key in ("archive", "workspace_bundle"):
            info = old_info.get(key) or {}
            if info.get("name") and not _archive_recorded(key, info["name"]):
                transaction.on_commit(lambda info=info: snapshot_share.archive_remove(info))
    return locked


def _archive_recorded(key: str, name: str) -> bool:
    # Content-addressed: another frozen task may record the very same archive.
    return Task.objects.filter(**{f"snapshot_info__{key}__name": name}).exists()


def task_snapshot_publish(*, task: Task) -> dict:
    """Publish the snapshot of a task frozen before snapshots were published (no
    snapshot_info["archive"]) from the folder recorded at freeze, with its workspace bundle when the
    workspace files are still those it was frozen with, and record both; return the archive. Other
    machines can then fetch the task (domains/snapshot_share.py). A task that has an archive is left
    as it is (its archive returned).

    NotReady, nothing published or recorded, when the task is not frozen, its tools no longer match
    its fingerprint, the folder is not on this machine, or the folder differs from what was frozen
    (snapshot_share.snapshot_publish_checked: the packed bytes are checked before they are saved).
    Conflict when the task was unfrozen or re-frozen meanwhile."""
    if not task.is_frozen:
        raise NotReady(f"the task of domain {task.domain.name!r} is not frozen")
    info = task.snapshot_info or {}
    if (info.get("archive") or {}).get("name"):
        return info["archive"]
    codes = _tools_codes(task)
    files = task.contract_files or {}
    if tools_fingerprint(load_data=codes["load_data"], evaluate=codes["evaluate"], files=files or None) != task.fingerprint:
        raise NotReady("the task's tools do not match its frozen fingerprint; unfreeze and freeze it again")
    archive = snapshot_share.snapshot_publish_checked(task=task, codes=codes)
    published = {"archive": archive}
    workspace = Path(task.domain.workspace_path)
    if "workspace_bundle" not in info and workspace.is_dir():
        raw_data = [Path(p) for p in [info.get("data_file"), *(info.get("public_source_paths") or [])] if p]
        try:
            published["workspace_bundle"] = snapshot_share.workspace_bundle_publish(
                workspace=workspace, files=files, fingerprint=task.fingerprint, raw_data=raw_data)
        except NotReady:
            pass  # a file the tools import changed since the freeze: no bundle (it would be refused anyway)
    with transaction.atomic():
        locked = Task.objects.select_for_update().get(pk=task.pk)
        same = (locked.is_frozen and locked.fingerprint == task.fingerprint
                and locked.data_fingerprint == task.data_fingerprint and locked.snapshot_path == task.snapshot_path)
        if same and not ((locked.snapshot_info or {}).get("archive") or {}).get("name"):
            locked.snapshot_info = {**(locked.snapshot_info or {}), **published}
            locked.save(update_fields=["snapshot_info", "updated_at"])
            return archive
    for key, published_info in published.items():
        if published_info.get("name") and not _archive_recorded(key, published_info["name"]):
            snapshot_share.archive_remove(published_info)
    if same:  # another process of a machine holding the folder published it first
        return locked.snapshot_info["archive"]
    raise Conflict("the task was unfrozen or frozen again while its snapshot was published")


def tasks_snapshot_publish_missing() -> list[dict]:
    """task_snapshot_publish for every frozen task without an archive whose folder recorded at freeze
    is on this machine; return one {"domain", "archive"} or {"domain", "problem"} per task tried.

    Runs at every worker start (agentrun.apps) and from `dojo_storage publish`. One process per
    machine at a time (a lock file in DOJO_CACHE_DIR): the others return [] at once rather than hash
    the same folders."""
    candidates = [task for task in Task.objects.filter(frozen_at__isnull=False).select_related("domain")
                  if not ((task.snapshot_info or {}).get("archive") or {}).get("name")
                  and task.snapshot_path and os.path.isdir(task.snapshot_path)]
    if not candidates:
        return []
    lock_path = snapshot_share.cache_dir() / "publish.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return []
        done = []
        for task in candidates:
            try:
                task.refresh_from_db()
                done.append({"domain": task.domain.name, "archive": task_snapshot_publish(task=task)})
            except Task.DoesNotExist:
                continue
            except DojoError as exc:
                log.warning("the snapshot of domain %s was not published: %s", task.domain.name, exc)
                done.append({"domain": task.domain.name, "problem": str(exc)})
        return done


def task_assert_ready(*, task: Task, snapshot_dir: Path | None = None, workspace_dir: Path | None = None) -> None:
    """Raise NotReady unless the task is frozen, its fingerprint matches its current tools and
    contract version, and its snapshot (with the materialized tools unchanged) is on this machine:
    in `snapshot_dir` when given, else where snapshot_share.snapshot_local finds or fetches it. The
    contract's workspace files are checked in `workspace_dir` (default: the domain's workspace)."""
    name = task.domain.name
    if not task.is_frozen:
        raise NotReady(f"the task of domain {name!r} is not frozen; run `dojo_task setup --domain {name}`")
    if task.contract_version != CONTRACT_VERSION:
        raise NotReady(
            f"the task was frozen under contract version {task.contract_version}, the current one is "
            f"{CONTRACT_VERSION}; unfreeze, verify and freeze it again"
        )
    current = task_tools_current(task=task)
    if any(tool is None for tool in current.values()):
        raise NotReady("the frozen task has lost a tool; unfreeze and set it up again")
    codes = {n: t.code for n, t in current.items()}
    files = task.contract_files or {}
    if tools_fingerprint(load_data=codes["load_data"], evaluate=codes["evaluate"], files=files or None) != task.fingerprint:
        raise NotReady("the task's tools do not match its frozen fingerprint; unfreeze and freeze it again")
    changed = _contract_files_changed(workspace=workspace_dir or Path(task.domain.workspace_path), files=files)
    if changed:
        raise NotReady(
            f"the workspace file {changed[0]} changed after the task was frozen (the frozen load_data/evaluate "
            "import it, so it is part of the contract); restore it, or unfreeze and freeze the task again"
        )
    if snapshot_dir is None:
        snapshot_dir = snapshot_share.snapshot_local(task)
    problems = snapshot.snapshot_problems(task, codes=codes, root=snapshot_dir)
    if problems:
        raise NotReady(f"the task's snapshot is not usable: {problems[0]}; unfreeze and freeze it again")


def task_setup(*, task: Task, method: str = "auto", override_reason: str = "", by: str = "") -> Task:
    """Generate (only when a tool is missing), verify (unless both are verified as they are) and
    freeze. An already frozen task is returned as it is. NotReady when verification fails or the
    leak audit blocks freezing (see task_freeze's override_reason)."""
    if task.is_frozen:
        return task
    if any(tool is None for tool in task_tools_current(task=task).values()):
        task_generate(task=task, method=method)
    if any(not tool.is_verified for tool in task_tools_current(task=task).values()):
        run = task_verify(task=task)
        if not run.ok:
            raise NotReady("verification failed: " + "; ".join(run.errors))
    return task_freeze(task=task, override_reason=override_reason, by=by)


# Queued contract jobs (DOJO_INLINE_TASKS=False): verify, freeze, generate and setup (all three) run
# the task's code in the sandbox, so a web node or the CLI hands them to a worker. The task carries one job record at a time
# (Task.job); the API's task status, the Task tab (htmx polling) and `dojo_task` read it.
JOB_KINDS = ("verify", "freeze", "generate", "setup")
JOB_ACTIVE = ("queued", "running")
# A job still queued/running after this long lost its worker (kill -9): a new one may replace it.
JOB_STALE_SECONDS = 6 * 3600


def tasks_inline() -> bool:
    """Whether sandboxed work runs in the request/command (one machine) rather than on a worker."""
    from django.conf import settings

    return bool(getattr(settings, "DOJO_INLINE_TASKS", True))


def task_job_active(task: Task) -> bool:
    """Whether the task's job is queued or running (and not stale)."""
    job = task.job or {}
    if job.get("state") not in JOB_ACTIVE:
        return False
    since = job.get("started_at") or job.get("queued_at") or ""
    try:
        age = (timezone.now() - timezone.datetime.fromisoformat(since)).total_seconds()
    except (TypeError, ValueError):
        return True
    return age < JOB_STALE_SECONDS


def task_job_enqueue(*, task: Task, kind: str, params: dict | None = None) -> Task:
    """Record a `queued` job of `kind` (verify | freeze | generate | setup) on the task and hand it to a
    django-q2 worker once the transaction commits; return the task (poll task.job).

    Raises InvalidInput for an unknown kind, Conflict when a job is already queued or running, and
    Conflict for freeze/generate on a frozen task (checked again when the job runs)."""
    from functools import partial

    if kind not in JOB_KINDS:
        raise InvalidInput(f"unknown job {kind!r}; use {', '.join(JOB_KINDS)}")
    if kind in ("freeze", "generate") and task.is_frozen:
        raise Conflict(f"the task is already frozen (fingerprint {task.fingerprint[:12]})")
    params = dict(params or {})
    with transaction.atomic():
        locked = Task.objects.select_for_update().get(pk=task.pk)
        if task_job_active(locked):
            raise Conflict(f"a {locked.job.get('kind')} job is already {locked.job.get('state')} for this task")
        job = {"kind": kind, "state": "queued", "error": "", "result": {}, "params": params,
               "queued_at": timezone.now().isoformat(), "started_at": None, "finished_at": None}
        Task.objects.filter(pk=task.pk).update(job=job)
        task.job = job
        transaction.on_commit(partial(_job_enqueue, task.pk, kind))
    return task


def _job_enqueue(task_id: int, kind: str) -> None:
    from django_q.tasks import async_task

    async_task("domains.tasks.task_job_task", task_id, task_name=f"dojo-task-{kind}-{task_id}")


def task_job_run(*, task_id: int) -> Task:
    """Run the task's queued job now (the worker's side) and return the task with the job `done`
    or `failed` (error = the reason; a failed verification keeps each tool's errors in
    result). Claimed with a conditional update, so two workers never run it twice; a job that is
    not queued is left as it is. Never leaves the job `running` unless the process dies."""
    with transaction.atomic():
        task = Task.objects.select_for_update().select_related("domain").get(pk=task_id)
        job = dict(task.job or {})
        if job.get("state") != "queued":
            return task
        job.update(state="running", started_at=timezone.now().isoformat())
        Task.objects.filter(pk=task_id).update(job=job)
    params = job.get("params") or {}
    result: dict = {}
    error = ""
    try:
        if job["kind"] == "verify":
            run = task_verify(task=task)
            result = {
                "ok": run.ok, "isolation": run.isolation, "seconds": run.seconds,
                **{c.name: {"ok": c.ok, "errors": c.errors, "seconds": c.seconds} for c in (run.load_data, run.evaluate)},
            }
            if not run.ok:
                error = "verification failed: " + "; ".join(run.errors)
        elif job["kind"] in ("freeze", "setup"):
            frozen_by = {"override_reason": params.get("override_reason", ""), "by": params.get("by", "")}
            if job["kind"] == "freeze":
                task = task_freeze(task=task, **frozen_by)
            else:
                task = task_setup(task=task, method=params.get("method", "auto"), **frozen_by)
            result = {"fingerprint": task.fingerprint, "data_fingerprint": task.data_fingerprint}
        else:
            tools = task_generate(task=task, method=params.get("method", "auto"), hint=params.get("hint", ""))
            result = {"tools": [{"name": t.name, "version": t.version, "origin": t.origin} for t in tools]}
    except DojoError as exc:
        error = str(exc)
    except Exception as exc:  # noqa: BLE001 - recorded on the job; never left running
        log.exception("task job %s of task %s crashed", job.get("kind"), task_id)
        error = f"internal error: {type(exc).__name__}: {exc}"
    job.update(state="failed" if error else "done", error=error[:4000], result=result,
               finished_at=timezone.now().isoformat())
    Task.objects.filter(pk=task_id).update(job=job)
    task = Task.objects.select_related("domain").get(pk=task_id)
    return task


def task_contract_matches(*, task: Task, task_fingerprint: str, data_fingerprint: str) -> bool:
    """Whether an experiment scored with these fingerprints ran under the task's current contract."""
    return bool(task.fingerprint) and task_fingerprint == task.fingerprint and data_fingerprint == task.data_fingerprint


def contract_current(queryset, *, task: Task):
    """Only the experiments scored under the task's current contract (tools and data alike):
    numbers from an earlier contract are not comparable and must not rank against these."""
    return queryset.filter(task_fingerprint=task.fingerprint, data_fingerprint=task.data_fingerprint)


def contract_annotate(queryset, *, task: Task):
    """Annotate experiments (any queryset with task_fingerprint / data_fingerprint) with
    `other_contract`: True when scored under another contract than the task's current one."""
    from django.db.models import BooleanField, Case, Q, Value, When

    same = Q(task_fingerprint=task.fingerprint, data_fingerprint=task.data_fingerprint)
    if not task.fingerprint:
        return queryset.annotate(other_contract=Value(True, output_field=BooleanField()))
    return queryset.annotate(
        other_contract=Case(When(same, then=Value(False)), default=Value(True), output_field=BooleanField())
    )


def _job_public(job: dict | None) -> dict:
    """The job record as shown (its parameters may hold an override reason: kept, they are the owner's)."""
    return {k: v for k, v in (job or {}).items() if k != "params"}


def task_status(*, task: Task) -> dict:
    """Everything `dojo_task show` and the API show: state, fingerprints, tools, snapshot."""
    from domains.sandbox import ISOLATION_HINT, sandbox_isolation

    current_fp = task_fingerprint(task=task)
    tools = {}
    for name, tool in task_tools_current(task=task).items():
        tools[name] = None if tool is None else {
            "version": tool.version,
            "origin": tool.origin,
            "code_sha256": tool.code_sha256,
            "verified": tool.is_verified,
            "verified_ok": tool.verified_ok,
            "edited_after_verification": bool(tool.verified_code_sha256) and tool.verified_code_sha256 != tool.code_sha256,
            "verification_errors": tool.verification_errors,
            "verification_sample": tool.verification_sample,
            "verification_seconds": tool.verification_seconds,
            "verified_at": tool.verified_at.isoformat() if tool.verified_at else None,
            "created_at": tool.created_at.isoformat(),
        }
    if task.is_frozen:
        state = "frozen"
    elif all(t and t["verified"] and t["verified_ok"] for t in tools.values()):
        state = "verified"
    elif all(tools.values()):
        state = "tools written"
    else:
        state = "no tools"
    isolation = sandbox_isolation()
    return {
        "domain": task.domain.name,
        "task_type": task.task_type,
        "state": state,
        "frozen": task.is_frozen,
        "frozen_at": task.frozen_at.isoformat() if task.frozen_at else None,
        "primary_metric": task.primary_metric,
        "direction": task.direction,
        "expected_metrics": list(task.expected_metrics),
        "config": task.config,
        "contract_version": task.contract_version,
        "fingerprint": task.fingerprint,
        "tools_fingerprint": current_fp,
        "data_fingerprint": task.data_fingerprint,
        "snapshot_path": task.snapshot_path,
        "snapshot": task.snapshot_info,
        "contract_files": task.contract_files or {},
        "unfrozen_at": task.unfrozen_at.isoformat() if task.unfrozen_at else None,
        "unfreeze_reason": task.unfreeze_reason,
        "audit": task.audit,
        "audit_blocks_freeze": bool(audit.findings_severe(task.audit)) and not task.is_frozen,
        "audit_override": task.audit_override,
        "tools": tools,
        "isolation": isolation,
        "isolation_hint": ISOLATION_HINT if isolation != "bwrap" else "",
        "setup_notes": task.setup_notes or {},
        "job": _job_public(task.job),
    }

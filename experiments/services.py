"""Running one experiment (the only path to scored metrics), and reading experiments back.

experiment_run: check the contract → record the experiment → train in the sandbox (warm pool, or a
cold spawn) → score with the trusted evaluator → keep the artifacts → record the result → track.
Every failure ends the experiment `failed` with a reason a person can act on; nothing is left
`running`. Architecture: DESIGN §4; the harness processes are in experiments/harness/.
experiment_dispatch (DOJO_DISPATCH=queue): the same, on whichever experiment worker is free; see
"Queue dispatch" below.
"""

from __future__ import annotations

import hashlib
import logging
import math
import mimetypes
import os
import secrets
import shutil
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from pathlib import Path
from typing import TypedDict

from django.conf import settings
from django.core.files import File
from django.db import connections, transaction
from django.db.models import F, QuerySet
from django.utils import timezone

from dojo_site.errors import InvalidInput, NotFound, NotReady
from dojo_site.queues import queue_entry_drop, queue_lost
from dojo_site.schemas import DB_INT_MAX
from domains import contracts, safe_read
from domains.audit import bundled_data_paths
from domains.models import Domain, Task
from domains.sandbox import ISOLATION_HINT, sandbox_env, sandbox_isolation
from domains.snapshot_share import (
    local_dirs_outside_home,
    shared_storage,
    shared_touch,
    snapshot_local,
    workspace_local,
)
from experiments.analysis import family_of
from experiments.harness import pool
from experiments.models import Artifact, Experiment
from experiments.quarantine import prediction_check, quarantine_assess
from experiments.ranking import cv_parse, ranking_update
from experiments.scan import scan_train_code

log = logging.getLogger(__name__)

TAIL_BYTES = 65536
META_MAX_BYTES = 65536  # meta.json / error.json: a few numbers and a message
DEADLINE_GRACE_SECONDS = 3.0  # past the limit, an unanswered trainer is killed from outside
PRED_HEADER_BYTES = 4096  # a .npy header is ~128 bytes; room for odd but valid ones
CONTRACTS_PATH = Path(contracts.__file__).resolve()


# --- Limits ----------------------------------------------------------------------------------


def _setting(name: str, default):
    """A harness knob from settings.py (tests override settings); the env var is read too so a
    process started with DOJO_SANDBOX=fallback etc. after settings were loaded still obeys it."""
    value = getattr(settings, name, None)
    if value is None or value == "":
        value = os.environ.get(name, "")
    return default if value == "" else type(default)(value)



@dataclass(frozen=True)
class Limits:
    timeout_seconds: float
    memory_mb: int
    max_processes: int
    max_file_mb: int
    artifacts_max_file_mb: int
    artifacts_max_total_mb: int
    cpu_share: float

    @property
    def threads(self) -> int:
        return max(1, int((os.cpu_count() or 1) * self.cpu_share))




def experiment_limits(*, task: Task) -> Limits:
    """Settings defaults, overridden per task by task.config["limits"] (same key names)."""
    values = {
        "timeout_seconds": float(settings.DOJO_TRAIN_TIMEOUT_SECONDS),
        "memory_mb": int(settings.DOJO_TRAIN_MEMORY_MB),
        "max_processes": _setting("DOJO_TRAIN_MAX_PROCESSES", 512),
        "max_file_mb": _setting("DOJO_TRAIN_MAX_FILE_MB", 256),
        "artifacts_max_file_mb": _setting("DOJO_ARTIFACTS_MAX_FILE_MB", 100),
        "artifacts_max_total_mb": _setting("DOJO_ARTIFACTS_MAX_TOTAL_MB", 500),
        "cpu_share": float(settings.DOJO_CPU_SHARE),
    }
    overrides = (task.config or {}).get("limits") or {}
    for key, value in overrides.items():
        if key in contracts.LIMIT_KEYS and value not in (None, ""):
            try:
                values[key] = contracts.LIMIT_KEYS[key](value)
            except (TypeError, ValueError):
                log.warning("ignoring task limit %s=%r (not a number)", key, value)
    return Limits(**values)


# --- Sandbox specs ---------------------------------------------------------------------------


def _raw_data_paths(task: Task, isolation: str, domain: Domain | None = None,
                    workspace: Path | None = None) -> list[Path]:
    """The raw data files recorded at freeze (snapshot_info["data_file"]) of this task AND of every other
    frozen task: they hold test rows' labels, and load_data's split is reproducible from the seed, so
    the trainer must not read them. Another domain's file may be a copy of this one's data (a second
    domain on the same CSV, or one kept elsewhere), and a lookup there works just as well. Only bwrap
    can cover single files inside the bound workspace; the fallback would have to chmod users' files.

    Where the experiment runs in a per-machine copy of the domain's workspace (`workspace`, a git
    clone in DOJO_CACHE_DIR: the path recorded at freeze does not exist here), a file recorded under
    the domain's workspace path is hidden at the same place in the copy."""
    if isolation != "bwrap":
        return []
    infos = Task.objects.filter(frozen_at__isnull=False).exclude(pk=task.pk).values_list("snapshot_info", flat=True)
    files = {Path(f) for f in ((info or {}).get("data_file") or "" for info in [task.snapshot_info, *infos]) if f}
    if domain is not None and workspace is not None and workspace != Path(domain.workspace_path):
        recorded = {Path(domain.workspace_path), Path(os.path.realpath(domain.workspace_path))}
        for path in list(files):
            for base in recorded:
                if path.is_relative_to(base):
                    files.add(workspace / path.relative_to(base))
    return sorted(f for f in files if f.is_file())


def _workspace_copy_hidden(domain: Domain, workspace: Path) -> list[Path]:
    """A per-machine git clone's history (.git) is not the trainer's to read: past commits may hold
    the raw data file (hidden above only in the checked-out tree). Nothing for the domain's own folder."""
    if workspace == Path(domain.workspace_path):
        return []
    git_dir = workspace / ".git"
    return [git_dir] if git_dir.is_dir() else []


def _public_data_paths(task: Task, python: str, isolation: str) -> list[Path]:
    """Public copies of datasets a train() could reload and look the labels up in (domains/audit.py):
    the bundled-dataset folders of installed packages, for every task, and the package files the
    leak audit found identical to this task's data. bwrap only, like the raw data file: the
    fallback could only chmod files of a shared installation."""
    if isolation != "bwrap":
        return []
    paths = list(bundled_data_paths(python if python != sys.executable else ""))
    for extra in (task.snapshot_info or {}).get("public_source_paths") or []:
        if isinstance(extra, str) and Path(extra).exists() and Path(extra) not in paths:
            paths.append(Path(extra))
    return paths


def _hidden_paths() -> list[Path]:
    """What no sandboxed process may see: all of DOJO_HOME, the machine's cache folder and the
    shared storage's folder wherever they are (re-bound piecemeal where needed), the database
    files and folder, and the project's .env."""
    hidden = [Path(settings.DOJO_HOME), *local_dirs_outside_home()]
    for alias in connections:
        conn = connections[alias]
        if conn.vendor != "sqlite":
            continue
        name = str(conn.settings_dict.get("NAME") or "")
        if not name or name.startswith("file:") or name == ":memory:":
            continue
        db = Path(name).absolute()
        hidden += [db, Path(f"{db}-wal"), Path(f"{db}-shm"), Path(f"{db}-journal")]
        # The DB's own folder holds the secret key file too; hide it unless it holds the code.
        base = Path(settings.BASE_DIR).resolve()
        if db.parent != base and base not in db.parent.parents and db.parent != Path("/"):
            hidden.append(db.parent)
    hidden.append(Path(settings.BASE_DIR) / ".env")
    return hidden


def _python(domain: Domain) -> str:
    """The untrusted trainer's interpreter (never the evaluator's)."""
    return domain.trainer_python


def _isolation_setting() -> str | None:
    return _setting("DOJO_SANDBOX", "") or None


def _dojo_packages_for(python: str) -> tuple[Path, ...]:
    """A domain's environment reaches Dojo's own numpy/pandas/scikit-learn through a .pth file
    (docs/decisions.md): Dojo's install prefix must then be readable in its sandbox too, wherever
    Dojo is installed (under /tmp, which the sandbox replaces, a fresh clone's venv was not)."""
    if python == sys.executable:
        return ()
    return tuple({Path(sys.prefix), Path(sys.base_prefix)})


def _trainer_spec(domain: Domain, task: Task, limits: Limits) -> pool.Spec:
    snap = snapshot_local(task)
    workspace = workspace_local(task, domain)
    isolation = sandbox_isolation(_isolation_setting())
    extra = {str(k): str(v) for k, v in (domain.env_vars or {}).items()}
    extra["DOJO_PID_NAMESPACE"] = "1" if isolation == "bwrap" else "0"
    env = sandbox_env(threads=limits.threads, extra=extra)
    python = _python(domain)
    idle = str(_setting("DOJO_POOL_IDLE_SECONDS", 600))
    return pool.Spec(
        key=("trainer", task.pk, str(snap), task.data_fingerprint, python, str(workspace),
             tuple(sorted(env.items())), isolation),
        kind="trainer",
        argv=(python, str(pool.TRAINER), "serve", "--public", str(snap / "public"), "--work", "{work}",
              "--idle", idle),
        cwd=workspace,
        env=tuple(sorted(env.items())),
        home=Path(settings.DOJO_CACHE_DIR),
        readable=(snap / "public", workspace, *_dojo_packages_for(python)),
        hidden=(*_hidden_paths(), snap / "sealed", snap / "tools", *_raw_data_paths(task, isolation, domain, workspace),
                *_workspace_copy_hidden(domain, workspace),
                *_public_data_paths(task, python, isolation)),
        isolation=isolation,
        drop_user=True,
        max_slots=_setting("DOJO_POOL_MAX", 4),
    )


_evaluate_shas: dict[tuple[int, str], str] = {}


def _evaluate_sha(task: Task) -> str:
    """sha256 of the frozen evaluate; the task fingerprint covers the tool code, so it keys a cache."""
    key = (task.pk, task.fingerprint)
    if key not in _evaluate_shas:
        tool = task.tools.filter(name="evaluate", is_current=True).first()
        _evaluate_shas[key] = tool.code_sha256 if tool else ""
    return _evaluate_shas[key]


def _evaluator_spec(domain: Domain, task: Task) -> pool.Spec:
    snap = snapshot_local(task)
    workspace = workspace_local(task, domain)
    isolation = sandbox_isolation(_isolation_setting())
    # Trusted code runs in Dojo's own interpreter (DESIGN §8): a domain's interpreter is chosen by
    # a user and could be anything that speaks the protocol, so it serves the trainer only.
    python = sys.executable
    env = sandbox_env(threads=1)
    idle = str(_setting("DOJO_POOL_IDLE_SECONDS", 600))
    sha = _evaluate_sha(task)
    return pool.Spec(
        key=("evaluator", task.pk, str(snap), task.fingerprint, task.data_fingerprint, python, sha,
             isolation),
        kind="evaluator",
        argv=(python, str(pool.EVALUATOR), "serve", "--snapshot", str(snap), "--contracts", str(CONTRACTS_PATH),
              "--task-type", task.task_type, "--metrics", ",".join(task.expected_metrics),
              "--evaluate-sha", sha, "--work", "{work}", "--idle", idle),
        cwd=workspace,
        env=tuple(sorted(env.items())),
        home=Path(settings.DOJO_CACHE_DIR),
        readable=(snap, CONTRACTS_PATH.parent, workspace),
        hidden=tuple(_hidden_paths()),
        isolation=isolation,
        # Trusted: it must read the sealed labels, which the sandbox user may not.
        drop_user=False,
    )


# --- Running ---------------------------------------------------------------------------------


class _Failed(Exception):
    """Ends the experiment `failed` with this message."""


class _Stopped(_Failed):
    """Ends the experiment `stopped`: a stop request killed its trainer."""


def _tail(job_fd: int, name: str, warnings: list[str], size: int = TAIL_BYTES) -> str:
    """The end of a log the trainer wrote, read by descriptor (domains.safe_read): a planted
    symlink, FIFO or hard link is refused and noted in `warnings`, never followed."""
    try:
        data, length = safe_read.read_tail(job_fd, name, owner=safe_read.sandbox_owner(), size=size)
    except FileNotFoundError:
        return ""
    except safe_read.Refused as exc:
        warnings.append(f"log {exc}")
        return ""
    text = data.decode("utf-8", errors="replace")
    return f"[… {length - size} bytes cut …]\n{text}" if length > size else text


def _read_json(job_fd: int, name: str, warnings: list[str], cap: int = META_MAX_BYTES) -> dict | None:
    import json

    try:
        data = json.loads(safe_read.read_file(job_fd, name, owner=safe_read.sandbox_owner(), cap=cap))
    except FileNotFoundError:
        return None
    except safe_read.Refused as exc:
        warnings.append(str(exc))
        return None
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def prediction_cap(*, task: Task) -> int:
    """The most bytes a y_pred hand-over may take: X_test's rows × the classes (at least 2, so a
    wrong-shaped predict_proba still gets its own clear message) × 8 bytes, plus the .npy header.
    512 MB when the snapshot does not say how many rows it has (an old snapshot)."""
    info = task.snapshot_info or {}
    rows = info.get("n_test")
    if not isinstance(rows, int) or rows <= 0:
        return 512 * 1024 * 1024
    classes = info.get("classes")
    width = max(len(classes) if isinstance(classes, list) else 1, 2)
    return rows * width * 8 + PRED_HEADER_BYTES


def _read_cold_prediction(jobs: Path, job_id: str, cap: int, warnings: list[str]) -> bytes:
    """y_pred.npy as `trainer.py once` wrote it (after everything the job started was killed)."""
    try:
        fd = safe_read.open_dir(job_id, under=jobs)
    except (safe_read.Refused, OSError):
        return b""
    try:
        return safe_read.read_file(fd, "y_pred.npy", owner=safe_read.sandbox_owner(), cap=cap)
    except FileNotFoundError:
        return b""
    except safe_read.Refused as exc:
        raise _Failed(f"the hand-over {exc}") from None
    finally:
        os.close(fd)


def _record(exp: Experiment, **fields) -> None:
    """Set fields to be written with the experiment's next state change (fewer DB writes)."""
    for key, value in fields.items():
        setattr(exp, key, value)
    exp._unsaved = getattr(exp, "_unsaved", set()) | set(fields)


def _save(exp: Experiment, **fields) -> None:
    _record(exp, **fields)
    exp.save(update_fields=sorted(exp._unsaved))
    exp._unsaved = set()


def _check_input(domain: Domain, train_code, variables, parent) -> tuple[dict, Experiment | None]:
    if not isinstance(train_code, str) or not train_code.strip():
        raise InvalidInput("the train code is empty; it must define train(X_train, y_train, X_test, *, artifacts_dir)")
    if len(train_code.encode()) > 1_000_000:
        raise InvalidInput("the train code is larger than 1 MB")
    if "\x00" in train_code:
        raise InvalidInput("the train code contains a NUL byte")
    if variables is None:
        variables = {}
    if not isinstance(variables, dict):
        raise InvalidInput("variables must be a JSON object (a dict of name → value)")
    if parent is not None and not isinstance(parent, Experiment):
        try:
            parent = Experiment.objects.get(pk=int(parent))
        except (TypeError, ValueError, Experiment.DoesNotExist):
            raise InvalidInput(f"parent experiment {parent!r} does not exist") from None
    if parent is not None and parent.domain_id != domain.pk:
        raise InvalidInput(f"parent experiment #{parent.pk} belongs to another domain")
    return variables, parent


# Readiness checks that passed, by everything they depend on: the task row's contract fields, the
# current tools' code (read on every call, one light query) and the identity of every snapshot file
# (inode, size, mtime, ctime: an edit or a replacement on disk changes one). A hit skips only the
# re-reading and re-hashing of what is provably unchanged.
_ready_ok: dict[tuple, bool] = {}
_SNAPSHOT_FILES = ("manifest", "X_train", "y_train", "X_test", "y_test", "split", "load_data", "evaluate")


def _ready_key(task: Task, snap: Path, workspace: Path) -> tuple | None:
    from domains.models import TaskTool
    from domains.snapshot import snapshot_paths

    if not task.is_frozen or not task.snapshot_path:
        return None
    tools = tuple(
        TaskTool.objects.filter(task_id=task.pk, is_current=True).order_by("name", "pk").values_list("name", "pk", "code")
    )
    paths = snapshot_paths(snap)
    files = []
    try:
        for name in _SNAPSHOT_FILES:
            st = os.stat(getattr(paths, name))
            files.append((st.st_ino, st.st_dev, st.st_size, st.st_mtime_ns, st.st_ctime_ns))
        # The workspace modules the frozen tools import are part of the contract too.
        for rel in sorted(task.contract_files or {}):
            st = os.stat(workspace / rel)
            files.append((rel, st.st_ino, st.st_dev, st.st_size, st.st_mtime_ns, st.st_ctime_ns))
    except OSError:
        return None
    return (task.pk, task.contract_version, task.fingerprint, task.data_fingerprint, str(snap), str(workspace),
            tools, tuple(files))


def _ready_task(domain: Domain) -> Task:
    from domains.services import task_assert_ready

    task = Task.objects.filter(domain=domain).first()
    if task is None:
        raise NotReady(f"domain {domain.name!r} has no task; run `dojo_task setup --domain {domain.name}`")
    task.domain = domain  # the check's messages name it; no second query
    if not task.is_frozen:
        task_assert_ready(task=task)  # raises the usual message
    # This machine's snapshot folder: the one written at freeze, or a verified copy fetched from the
    # shared storage (a stat when it is here; NotReady, before anything runs, when the archive fails).
    snap = snapshot_local(task)
    # The domain's workspace, or on a machine without it a git clone at the domain's commit or the bundle.
    workspace = workspace_local(task, domain)
    key = _ready_key(task, snap, workspace)
    if key is None or key not in _ready_ok:
        task_assert_ready(task=task, snapshot_dir=snap, workspace_dir=workspace)
        if key is not None:
            if len(_ready_ok) > 256:
                _ready_ok.clear()
            _ready_ok[key] = True
    return task


def experiment_provenance(*, domain: Domain) -> dict:
    """Where an experiment's code and packages came from: the workspace's git commit (read from .git,
    no subprocess), the domain's git URL, and the sha256 of its environment lock."""
    from domains.workspaces import git_head

    out = {"git_commit": git_head(domain.workspace_path) or domain.git_commit, "interpreter": _python(domain)}
    if domain.git_url:
        out["git_url"] = domain.git_url
    if domain.env_lock:
        out["env_lock_sha256"] = hashlib.sha256(domain.env_lock.encode()).hexdigest()
    return out


def _new_experiment_fields(domain: Domain, train_code, hypothesis, variables, parent, seed) -> tuple[Task, dict]:
    """The checked fields of a new experiment, and its ready task. Raises, recording nothing,
    InvalidInput for bad arguments and NotReady when the task is not ready."""
    variables, parent = _check_input(domain, train_code, variables, parent)
    if isinstance(seed, int) and not -DB_INT_MAX - 1 <= seed <= DB_INT_MAX:  # the seed column's range
        raise InvalidInput(f"seed must be between {-DB_INT_MAX - 1} and {DB_INT_MAX}, got {seed}")
    task = _ready_task(domain)
    if seed is None:
        seed = int((task.config or {}).get("seed", 0) or 0)
    return task, dict(
        domain=domain, parent=parent, hypothesis=(hypothesis or "").strip(), variables=variables,
        train_code=train_code, code_sha256=hashlib.sha256(train_code.encode()).hexdigest(), seed=seed,
        task_fingerprint=task.fingerprint, data_fingerprint=task.data_fingerprint,
        code_flags=scan_train_code(train_code), provenance=experiment_provenance(domain=domain),
        family=family_of(variables),
    )


def experiment_run(
    *,
    domain: Domain,
    train_code: str,
    hypothesis: str = "",
    variables: dict | None = None,
    parent: Experiment | int | None = None,
    run=None,
    seed: int | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> Experiment:
    """Run one experiment synchronously; return it `completed`, `failed`, or `stopped` (when
    `should_stop` killed its trainer), never `running`.

    Raises (before recording anything) InvalidInput for bad arguments and NotReady when the task
    is not frozen or no longer matches its fingerprint. Thread-safe; a worker thread should close
    its DB connections when it is done (django.db.connections.close_all())."""
    started = time.perf_counter()
    task, fields = _new_experiment_fields(domain, train_code, hypothesis, variables, parent, seed)
    # Recorded straight as `running` (one INSERT): it starts running now; nothing is pending.
    exp = Experiment.objects.create(
        **fields, run=run, state=Experiment.State.RUNNING, started_at=timezone.now(), worker_host=WORKER_HOST,
        worker_pid=os.getpid(),
    )
    exp._unsaved = set()
    try:
        _execute(exp, domain, task, should_stop, started)
    except _Failed as exc:
        _finish_failed(exp, str(exc), started, stopped=isinstance(exc, _Stopped))
    except BaseException as exc:  # noqa: BLE001 - never leave an experiment running
        log.exception("experiment %s crashed", exp.pk)
        reason = "interrupted" if isinstance(exc, KeyboardInterrupt) else f"internal error: {type(exc).__name__}: {exc}"
        _finish_failed(exp, reason, started)
        if not isinstance(exc, Exception):
            raise
    if exp.state == Experiment.State.COMPLETED:
        _after_scoring(exp, task)
        _track(exp)
    return exp


def _after_scoring(exp: Experiment, task: Task | None = None) -> None:
    """Rank the completed experiment within its configuration. Never fails the experiment: a
    failure here is logged and the experiment stays as scored (unranked until the next update)."""
    try:
        # The audit first (experiments/quarantine.py): a quarantined experiment never ranks.
        quarantine_assess(experiment=exp, check=getattr(exp, "_prediction_check", None), task=task)
    except Exception:  # noqa: BLE001
        log.exception("auditing experiment %s failed", exp.pk)
    try:
        ranking_update(experiment=exp, task=task)
    except Exception:  # noqa: BLE001
        log.exception("ranking experiment %s failed", exp.pk)
    exp._prediction_check = None


def experiments_fail_stale(*, domain: Domain, limits: Limits) -> int:
    """Fail by-hand experiments of the domain still `running` long after any of them could be: the
    process running them died (kill -9, a crash). Runs' experiments are the agent reaper's."""
    cutoff = timezone.now() - timedelta(seconds=limits.timeout_seconds + 900)
    stale = Experiment.objects.filter(
        domain=domain, run__isnull=True, state__in=[Experiment.State.RUNNING, Experiment.State.PENDING],
        created_at__lt=cutoff,
    ).exclude(state=Experiment.State.RUNNING, heartbeat_at__isnull=False)  # a beating worker's: the reaper's
    if not stale.exists():  # the usual case: a read, no write lock taken
        return 0
    return stale.update(
        state=Experiment.State.FAILED, finished_at=timezone.now(),
        error="the process running this experiment stopped before it finished (crash or kill)",
    )


def _finish_failed(exp: Experiment, reason: str, started: float, *, stopped: bool = False) -> None:
    _save(
        exp, state=Experiment.State.STOPPED if stopped else Experiment.State.FAILED, error=reason[:5000],
        finished_at=timezone.now(),
        total_seconds=time.perf_counter() - started,
    )


def _execute(exp: Experiment, domain: Domain, task: Task, should_stop, started: float) -> None:
    limits = experiment_limits(task=task)
    # Unguessable: the trainer's work folder is writable from inside the sandbox, so an earlier
    # experiment in the same warm slot must not be able to plant files in the next one's folder.
    job_id = f"e{exp.pk}-{secrets.token_hex(8)}"
    job = {
        "id": job_id, "code": exp.train_code, "timeout": limits.timeout_seconds, "memory_mb": limits.memory_mb,
        "max_processes": limits.max_processes, "max_file_mb": limits.max_file_mb, "seed": exp.seed,
        "max_pred_bytes": prediction_cap(task=task), "max_meta_bytes": META_MAX_BYTES,
    }
    spec = _trainer_spec(domain, task, limits)
    jobs = Path(settings.DOJO_CACHE_DIR) / "jobs"
    jobs.mkdir(parents=True, exist_ok=True)
    job_dir = jobs / job_id
    warnings: list[str] = []
    evaluator_spec = _evaluator_spec(domain, task)
    pool.evaluator_start(evaluator_spec)
    warm, why = pool.trainer_checkout(spec)
    if warm is not None:
        warm.job_folder(job_id)
        answer = warm.request(
            job, timeout=limits.timeout_seconds + DEADLINE_GRACE_SECONDS, should_stop=should_stop,
            on_stop=lambda: warm.send({"stop": job_id}), while_waiting=lambda: _while_training(domain, limits),
            max_payload=job["max_pred_bytes"],
        )
        _move(warm.work / job_id, job_dir)
        # y_pred came through the trainer's pipe and stays in memory until it goes down the
        # evaluator's: it never sits where the sandbox can write (a y_pred.npy left in the job
        # folder by train() is ignored).
        y_pred = answer.pop("_payload", b"") if answer is not None else b""
        if answer is None:
            failure, log_tail = warm.failure, warm.log_tail()
            pool.trainer_discard(warm)
            raise _no_answer(failure, limits, job_dir, log_tail)
        if answer.get("status") == "exited" and not answer.get("error"):
            pool.trainer_release(warm)
        else:
            # Ended abnormally (timeout, stop, refused hand-over, harness error): whatever the
            # experiment did to its slot goes with it. The next experiment gets a fresh one.
            pool.trainer_discard(warm)
        versions, isolation = (warm.ready or {}).get("versions", {}), warm.isolation
    else:
        if why:
            warnings.append(f"cold start: {why}")
        _while_training(domain, limits)
        answer, result, work = pool.trainer_cold(spec, job, should_stop=should_stop)
        _move(work / job_id, job_dir)
        _discard(work)
        y_pred = _read_cold_prediction(jobs, job_id, job["max_pred_bytes"], warnings) if answer is not None else b""
        isolation = result.isolation
        versions = (answer or {}).get("versions", {})
        if answer is None:
            if result.stopped:
                raise _Stopped("stopped")
            if result.timed_out:
                raise _Failed(f"wall-clock limit ({limits.timeout_seconds:g} s) exceeded; the trainer was killed")
            detail = result.killed_reason or (result.stderr_tail.strip().splitlines() or ["no output"])[-1]
            raise _Failed(f"the trainer could not run: {detail}")
    if isolation == "fallback":
        warnings.append(ISOLATION_HINT)
    # Everything below reads the job folder through one descriptor, opened without following a
    # link (the folder came out of the sandbox): domains.safe_read.
    try:
        job_fd = safe_read.open_dir(job_dir, under=jobs)
    except safe_read.Refused as exc:
        _discard(job_dir)
        raise _Failed(f"the trainer's job folder was replaced ({exc}); nothing in it was read") from None
    try:
        meta = answer.get("meta") or _read_json(job_fd, "meta.json", warnings) or {}
        _record(
            exp, isolation=isolation, audit_trail=_audit_trail(answer), stdout_tail=_tail(job_fd, "stdout.txt", warnings),
            stderr_tail=_tail(job_fd, "stderr.txt", warnings), peak_memory_mb=_number(answer.get("peak_memory_mb")),
            train_seconds=_number(meta.get("train_seconds")),
            environment={**versions, "interpreter": _python(domain), "evaluator": sys.executable,
                         "isolation": isolation, "warm": warm is not None, "threads": limits.threads},
            warnings=warnings,
        )
        _trainer_outcome(answer, job_fd, limits, y_pred, warnings)
        checked: list = []

        def check_predictions() -> None:  # a read: done while the evaluator scores
            if not checked:
                checked.append(_prediction_check(exp, y_pred))

        scores = _evaluate(evaluator_spec, exp, y_pred, while_waiting=check_predictions)
        check_predictions()
        exp._prediction_check = checked[0]
        artifacts = _collect_artifacts(exp, job_fd, scores.pop("_eval_dirs"), limits, warnings)
        primary = task.primary_metric
        # The CV line is the train code's own claim (untrusted): stored as reported, and
        # experiments/ranking.py lets it only lower the experiment's rank.
        cv_value, cv_rows = cv_parse(exp.stdout_tail, primary)
        completed = dict(
            state=Experiment.State.COMPLETED, metrics=scores["metrics"],
            holdout_metrics=scores["holdout_metrics"], primary_value=scores["metrics"].get(primary),
            holdout_primary_value=scores["holdout_metrics"].get(primary), finished_at=timezone.now(),
            warnings=warnings, cv_value=cv_value, cv_rows=cv_rows or None,
            validation_ci=scores["ci"]["validation"], holdout_ci=scores["ci"]["holdout"],
        )
        if artifacts:
            with transaction.atomic():
                Artifact.objects.bulk_create(artifacts)
                _save(exp, **completed, total_seconds=time.perf_counter() - started)
        else:  # one UPDATE is atomic by itself
            _save(exp, **completed, total_seconds=time.perf_counter() - started)
    finally:
        os.close(job_fd)
        _discard(job_dir)


AUDIT_KINDS = ("open", "dataset_loader", "subprocess", "socket", "ctypes", "proc", "truncated", "tampered")


def _audit_trail(answer: dict) -> list[dict]:
    """The audit events the warm trainer collected from the child's audit pipe (see trainer.py),
    checked: the trainer is on the sandbox's side, so only known kinds, short strings, bounded."""
    events = answer.get("audit_trail")
    if not isinstance(events, list):
        return []
    out = []
    for event in events[:202]:
        if isinstance(event, dict) and event.get("kind") in AUDIT_KINDS and isinstance(event.get("detail"), str):
            out.append({"kind": event["kind"], "detail": event["detail"][:300]})
    return out


def _number(value) -> float | None:
    """A finite float, or None: the trainer reports these and is not trusted to type them."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _move(src: Path, dst: Path) -> None:
    if dst.exists():
        shutil.rmtree(dst, ignore_errors=True)
    if src.exists():
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.replace(src, dst)
    else:
        dst.mkdir(parents=True, exist_ok=True)


_trash_lock = threading.Lock()
_trash: list[Path] = []
TRASH_MAX = 32


def _discard(path: Path) -> None:
    """Remove a job folder off the experiment's critical path: it is renamed at once into
    DOJO_CACHE_DIR/jobs/.trash (so it is gone from where it was) and deleted later by _empty_trash,
    which the next experiment calls while its train() runs and this process only waits.
    Deleting a folder tree costs a few ms on this file system; a rename costs microseconds."""
    if not path.exists():
        return
    trash = Path(settings.DOJO_CACHE_DIR) / "jobs" / ".trash"
    target = trash / f"{path.name}-{os.getpid()}-{threading.get_ident()}-{time.monotonic_ns()}"
    try:
        trash.mkdir(parents=True, exist_ok=True)
        os.replace(path, target)
    except OSError:
        shutil.rmtree(path, ignore_errors=True)
        return
    with _trash_lock:
        _trash.append(target)
        backlog = len(_trash) > TRASH_MAX
    if backlog:  # no warm experiment came along to do it (cold spawns, failures)
        _empty_trash()


def _empty_trash() -> None:
    with _trash_lock:
        paths = list(_trash)
        _trash.clear()
    for path in paths:
        shutil.rmtree(path, ignore_errors=True)


def _while_training(domain: Domain, limits: Limits) -> None:
    """Housekeeping done while the trainer runs (this process would only wait): delete earlier
    job folders, fail stale by-hand experiments. Never raises: a failure here fails nothing."""
    try:
        _empty_trash()
        experiments_fail_stale(domain=domain, limits=limits)
    except Exception:  # noqa: BLE001
        log.exception("housekeeping during an experiment failed")


def _no_answer(failure: str, limits: Limits, job_dir: Path, log_tail: str) -> _Failed:
    """The reason, for a person, why a warm trainer gave no answer (its slot is already killed)."""
    if failure == "stopped":
        return _Stopped("stopped")
    if failure == "unresponsive":
        return _Failed(
            f"the trainer stopped responding: no answer within the wall-clock limit ({limits.timeout_seconds:g} s) "
            f"+ {DEADLINE_GRACE_SECONDS:g} s; its sandbox and every process in it were killed"
        )
    if failure.startswith("oversize: "):
        return _Failed(f"{failure.removeprefix('oversize: ')}; the trainer's sandbox was killed")
    return _Failed(_dead_trainer_message(job_dir, log_tail))


def _dead_trainer_message(job_dir: Path, log_tail: str) -> str:
    last = (log_tail.strip().splitlines() or [""])[-1]
    return "the warm trainer process died during the experiment" + (f" ({last})" if last else "")


def _trainer_outcome(answer: dict, job_fd: int, limits: Limits, y_pred: bytes, warnings: list[str]) -> None:
    status = answer.get("status")
    if status == "stopped":
        raise _Stopped("stopped")
    if status == "timeout":
        raise _Failed(
            f"wall-clock limit ({limits.timeout_seconds:g} s) exceeded; the trainer and every process it started were killed"
        )
    if status not in ("exited",):
        raise _Failed(f"harness error: {answer.get('error') or status}")
    if answer.get("error"):
        raise _Failed(str(answer["error"]))
    error = _read_json(job_fd, "error.json", warnings)
    if answer.get("signal"):
        sig = answer["signal"]
        name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else str(sig)
        hint = f" (possibly the memory limit, {limits.memory_mb} MB)" if sig == signal.SIGKILL else ""
        raise _Failed(f"the trainer was killed by {name}{hint}")
    if error:
        message = str(error.get("message") or error.get("type") or "train failed")
        if "File too large" in message:
            message = f"file size limit ({limits.max_file_mb} MB) exceeded: {message}"
        raise _Failed(message)
    if answer.get("returncode"):
        last = (_tail(job_fd, "stderr.txt", warnings, 4000).strip().splitlines() or ["no output on stderr"])[-1]
        raise _Failed(f"the trainer exited with code {answer['returncode']}: {last}")
    if not y_pred:
        raise _Failed(
            "train() ended without returning predictions (the process exited early, e.g. sys.exit or os._exit)"
        )


def _prediction_check(exp: Experiment, y_pred: bytes):
    """quarantine.prediction_check that never raises: it runs while the evaluator's answer is
    pending, and a failure there must not leave that answer unread in the pipe."""
    try:
        return prediction_check(experiment=exp, y_pred=y_pred)
    except Exception:  # noqa: BLE001
        log.exception("comparing experiment %s's predictions failed", exp.pk)
        return None


def _evaluate(spec: pool.Spec, exp: Experiment, y_pred: bytes, while_waiting: Callable[[], None] | None = None) -> dict:
    """Score y_pred (.npy bytes) with the trusted evaluator; y_pred goes down its stdin right
    after the request line. One retry when the evaluator died (it is restarted). "_eval_dirs"
    lists (part, evaluator work folder, folder name) of what evaluate wrote, for the artifacts.
    `while_waiting` runs once the request is sent (work that needs no score; it must not raise
    and runs again if the evaluator is retried)."""
    for attempt in (1, 2):
        wp = pool.evaluator_get(spec)
        if wp.ready is None:
            raise _Failed(f"the evaluator could not start: {wp.error[-800:]}")
        with wp.lock:
            answer = wp.request({"id": exp.pk, "y_pred_bytes": len(y_pred)}, payload=y_pred,
                                timeout=_setting("DOJO_EVALUATE_TIMEOUT_SECONDS", 600.0), while_waiting=while_waiting)
        # Only folders evaluate wrote into, directly in the evaluator's own work folder, are taken.
        eval_dirs = []
        for part, path in ((answer or {}).get("artifacts") or {}).items():
            src = Path(str(path))
            if part in ("validation", "holdout") and src.parent == wp.work and src.name not in ("", ".", ".."):
                eval_dirs.append((part, wp.work, src.name))
        if answer is None:
            tail = wp.log_tail()
            pool.evaluator_forget(wp)
            if attempt == 1:
                continue
            raise _Failed(f"the evaluator died while scoring: {(tail.splitlines() or ['no output'])[-1]}")
        if not answer.get("ok"):
            for _, work, name in eval_dirs:
                shutil.rmtree(work / name, ignore_errors=True)
            raise _Failed(str(answer.get("error") or "the evaluator rejected the predictions"))
        return {"metrics": answer.get("metrics") or {}, "holdout_metrics": answer.get("holdout_metrics") or {},
                "ci": _ci_clean(answer.get("ci")), "_eval_dirs": eval_dirs}
    raise _Failed("the evaluator could not score the predictions")


def _ci_clean(raw) -> dict:
    """{part: {metric: [lo, hi]}} with finite numbers only: the evaluator is trusted, but its
    answer is JSON and stored as such."""
    out: dict = {}
    for part in ("validation", "holdout"):
        items = (raw or {}).get(part) if isinstance(raw, dict) else None
        out[part] = {
            str(k): [float(v[0]), float(v[1])] for k, v in (items or {}).items()
            if isinstance(v, list) and len(v) == 2 and all(_number(x) is not None for x in v)
        } if isinstance(items, dict) else {}
    return out


# --- Artifacts -------------------------------------------------------------------------------
# What train() and evaluate() wrote is copied by descriptor (domains.safe_read) into a staging
# folder of the trusted side on this machine; each copy is then put in the shared storage
# (STORAGES["dojo"], domains/snapshot_share.py) under its sha256, artifacts/<sha256[:2]>/<sha256>, and
# the Artifact row records that name. The stored object is made from the trusted copy, never from
# a path the sandbox could touch; the same bytes from many experiments are one object; any web
# node serves them from the storage.

ARTIFACT_STORE_PREFIX = "artifacts"


def artifacts_root(experiment_id: int) -> Path:
    """Where the artifacts of experiments recorded before the shared storage still are (their rows
    have no sha256); served from there on the machine that has them."""
    return Path(settings.DOJO_HOME) / "artifacts" / str(experiment_id)


class _StagedFile(File):
    """A staged copy the storage may move instead of copy (the hook Django's own temporary
    uploads use): a FileSystemStorage then publishes it with one rename, so no reader ever sees a
    half-written object; other storages stream it."""

    def temporary_file_path(self) -> str:
        return self.name


def _artifact_store(staged: Path) -> tuple[str, str]:
    """Put one staged artifact in the shared storage under its sha256; (sha256, storage name).
    An object already stored under that name is the same bytes and is kept as it is (marked as
    just written, so storage_gc keeps it until the row about to record it is committed)."""
    storage = shared_storage()
    with open(staged, "rb") as fh:
        sha = hashlib.file_digest(fh, "sha256").hexdigest()
        name = f"{ARTIFACT_STORE_PREFIX}/{sha[:2]}/{sha}"
        if storage.exists(name) and shared_touch(name):
            return sha, name
        fh.seek(0)
        saved = storage.save(name, _StagedFile(fh, name=str(staged)))
    if saved != name:  # another process stored the same bytes in between; its copy stays
        storage.delete(saved)
    return sha, name


def _collect_artifacts(exp: Experiment, job_fd: int, eval_dirs: list[tuple[str, Path, str]], limits: Limits,
                       warnings: list[str]) -> list[Artifact]:
    """Keep what train() and evaluate() wrote, copied by descriptor (domains.safe_read.copy_tree):
    regular files with one link and the writer's owner, each under the per-file cap, all under the
    total cap; links, FIFOs and devices are refused with a warning and never followed. Each copy
    is then stored in the shared storage by content (_artifact_store)."""
    staging = Path(settings.DOJO_CACHE_DIR) / "staging" / f"a{exp.pk}-{secrets.token_hex(8)}"
    per_file = limits.artifacts_max_file_mb * 1024 * 1024
    total_cap = limits.artifacts_max_total_mb * 1024 * 1024
    copied: list[tuple[str, int]] = []
    sources: list[tuple[int, str, int]] = []  # (folder fd, prefix, owner)
    try:
        try:
            sources.append((safe_read.open_dir("artifacts", dir_fd=job_fd), "train/", safe_read.sandbox_owner()))
        except safe_read.Refused:
            if _exists_at(job_fd, "artifacts"):
                warnings.append("artifacts folder refused: train() replaced it with a link")
        for part, work, name in eval_dirs:
            try:
                sources.append((safe_read.open_dir(name, under=work), f"evaluate/{part}/", os.geteuid()))
            except (safe_read.Refused, OSError):
                warnings.append(f"evaluate's {part} artifacts refused: not a plain folder")
        for fd, prefix, owner in sources:
            if not _has_entries(fd):
                continue  # the usual case: nothing written, no folder made, nothing to walk
            files, notes = safe_read.copy_tree(
                fd, staging / prefix.rstrip("/"), owner=owner, file_cap=per_file,
                total_cap=total_cap - sum(size for _, size in copied), prefix=prefix,
            )
            copied += [(prefix + rel, size) for rel, size in files]
            warnings += notes
        artifacts = []
        for rel, size in copied:
            sha, name = _artifact_store(staging / rel)
            artifacts.append(Artifact(
                experiment=exp, path=rel, size=size, sha256=sha, storage_name=name,
                content_type=mimetypes.guess_type(rel)[0] or "application/octet-stream",
                source="evaluate" if rel.startswith("evaluate/") else "train",
            ))
        return artifacts
    finally:
        for fd, _, _ in sources:
            os.close(fd)
        for _, work, name in eval_dirs:
            _discard(work / name)  # a rename now; deleted while the next train() runs
        _discard(staging)


def _exists_at(dir_fd: int, name: str) -> bool:
    try:
        os.lstat(name, dir_fd=dir_fd)
        return True
    except OSError:
        return False


def _has_entries(folder: Path | int) -> bool:
    try:
        with os.scandir(folder) as entries:
            return any(True for _ in entries)
    except OSError:
        return False


def artifact_open(*, artifact: Artifact) -> File:
    """The artifact's content, open for reading from the shared storage (or, for a row recorded
    before it, from DOJO_HOME/artifacts/<id>/). NotFound when the object is missing."""
    if not artifact.storage_name:
        root = artifacts_root(artifact.experiment_id).resolve()
        path = (root / artifact.path).resolve()
        if root not in path.parents or not path.is_file():
            raise NotFound(f"artifact {artifact.path} is not on disk")
        return File(open(path, "rb"))  # noqa: SIM115 - the response closes it
    try:
        return shared_storage().open(artifact.storage_name, "rb")
    except OSError:
        raise NotFound(f"artifact {artifact.path} is missing from the shared storage") from None


# --- Garbage collection of the shared storage ------------------------------------------------
# Stored objects are shared by content (many rows, one object), so deleting an experiment or a
# domain never deletes its objects; storage_gc removes those no row records any more.

STORAGE_GC_MIN_AGE = timedelta(hours=24)
# Unreferenced objects are re-checked against the database this many at a time, just before deletion.
STORAGE_GC_BATCH = 200


class StorageGcCounts(TypedDict):
    kept_referenced: int
    kept_young: int
    removed: int
    bytes_removed: int
    failed: int


def storage_gc(*, min_age: timedelta = STORAGE_GC_MIN_AGE, dry_run: bool = False, now: datetime | None = None,
               ) -> dict[str, StorageGcCounts]:
    """Delete from the shared storage the artifacts no Artifact row records and the snapshot archives
    and workspace bundles no task records, when older than `min_age`; return counts per kind
    ("artifacts", "snapshots", "workspaces"). With dry_run, count what would go and delete nothing.

    Only the storage API is used (listdir, get_modified_time, size, delete), so it works for any
    Django storage. The grace period keeps an object whose row is not committed yet (an experiment
    or a freeze in flight) and one whose age the storage cannot tell. References are read again for
    each batch just before it is deleted. InvalidInput when min_age is under an hour."""
    if min_age < timedelta(hours=1):
        raise InvalidInput("the grace period must be at least 1 hour: younger objects may belong to a write in flight")
    now = now or timezone.now()
    storage = shared_storage()
    artifact_names = set(Artifact.objects.exclude(storage_name="").values_list("storage_name", flat=True).distinct())
    archive_names = _archive_names_recorded()
    out = {}
    for kind, names, recorded, still_recorded in (
        (ARTIFACT_STORE_PREFIX, _storage_walk(storage, ARTIFACT_STORE_PREFIX), artifact_names,
         lambda batch: set(Artifact.objects.filter(storage_name__in=batch).values_list("storage_name", flat=True))),
        ("snapshots", _storage_walk(storage, "snapshots"), archive_names, lambda batch: _archive_names_recorded()),
        ("workspaces", _storage_walk(storage, "workspaces"), archive_names, lambda batch: _archive_names_recorded()),
    ):
        counts = StorageGcCounts(kept_referenced=0, kept_young=0, removed=0, bytes_removed=0, failed=0)
        candidates = []
        for name in names:
            if name in recorded:
                counts["kept_referenced"] += 1
            elif _storage_age(storage, name, now) < min_age:
                counts["kept_young"] += 1
            else:
                candidates.append(name)
        for start in range(0, len(candidates), STORAGE_GC_BATCH):
            batch = candidates[start:start + STORAGE_GC_BATCH]
            recorded_now = still_recorded(batch)
            for name in batch:
                if name in recorded_now:
                    counts["kept_referenced"] += 1
                    continue
                try:
                    size = storage.size(name)
                    if not dry_run:
                        storage.delete(name)
                except OSError as exc:
                    log.warning("storage gc: %s was not removed: %s", name, exc)
                    counts["failed"] += 1
                    continue
                counts["removed"] += 1
                counts["bytes_removed"] += size
        out[kind] = counts
    return out


def _archive_names_recorded() -> set[str]:
    names = set()
    for info in Task.objects.values_list("snapshot_info", flat=True):
        for key in ("archive", "workspace_bundle"):
            entry = (info or {}).get(key) if isinstance(info, dict) else None
            if isinstance(entry, dict) and entry.get("name"):
                names.add(entry["name"])
    return names


def _storage_walk(storage, folder: str) -> Iterator[str]:
    """Every object name under `folder` in the storage (a missing folder holds none)."""
    try:
        dirs, files = storage.listdir(folder)
    except FileNotFoundError:
        return
    for name in files:
        yield f"{folder}/{name}"
    for sub in dirs:
        yield from _storage_walk(storage, f"{folder}/{sub}")


def _storage_age(storage, name: str, now: datetime) -> timedelta:
    """How long ago the object was last written; zero when the storage cannot tell (kept)."""
    try:
        modified = storage.get_modified_time(name)
    except (NotImplementedError, OSError):
        return timedelta(0)
    if timezone.is_naive(modified):
        modified = timezone.make_aware(modified)
    return now - modified


# --- Tracking --------------------------------------------------------------------------------

_mlflow_lock = threading.Lock()


def _track(exp: Experiment) -> None:
    """MLflow when DOJO_TRACKING=mlflow (the store and its artifacts under DOJO_HOME/mlflow unless
    MLFLOW_TRACKING_URI says otherwise); a failure is a warning."""
    if getattr(settings, "DOJO_TRACKING", "db") != "mlflow":
        return
    try:
        from experiments.tracking import mlflow_locations, mlflow_log_experiment

        uri, artifact_root = mlflow_locations()
        scratch = Path(settings.DOJO_CACHE_DIR) / "staging" / f"mlflow-{exp.pk}-{secrets.token_hex(8)}"
        try:
            _artifacts_fetch(exp, scratch)
            with _mlflow_lock:  # mlflow's fluent API keeps the active run in process state
                mlflow_log_experiment(exp, uri=uri, artifacts_dir=scratch, artifact_root=artifact_root)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    except Exception as exc:  # noqa: BLE001 - tracking never fails an experiment
        log.warning("MLflow tracking failed for experiment %s: %s", exp.pk, exc)
        _save(exp, warnings=[*exp.warnings, f"tracking: MLflow failed: {type(exc).__name__}: {exc}"[:500]])


def _artifacts_fetch(exp: Experiment, folder: Path) -> None:
    """Write the experiment's artifacts, read back from the storage, under `folder` (MLflow logs a
    folder of files). Paths were checked when the artifacts were kept (no "..", no absolute)."""
    for artifact in exp.artifacts.all():
        target = folder / artifact.path
        target.parent.mkdir(parents=True, exist_ok=True)
        with artifact_open(artifact=artifact) as content, open(target, "wb") as out:
            shutil.copyfileobj(content, out)


# --- Reading ---------------------------------------------------------------------------------

SORTS = ("rank", "validation", "holdout", "created")


def experiment_get(*, experiment_id, domain: Domain | None = None) -> Experiment:
    try:
        pk = int(experiment_id)
    except (TypeError, ValueError):
        raise InvalidInput(f"experiment id must be a number, got {experiment_id!r}") from None
    qs = Experiment.objects.select_related("domain", "parent")
    if domain is not None:
        qs = qs.filter(domain=domain)
    exp = qs.filter(pk=pk).first()
    if exp is None:
        where = f" in domain {domain.name!r}" if domain else ""
        raise NotFound(f"experiment #{pk} does not exist{where}")
    return exp


def experiment_leaderboard(*, domain: Domain, sort: str = "rank", state: str | None = None) -> QuerySet:
    """The domain's experiments, best first by rank (experiments/ranking.py: the one meaning of
    "best"; quarantined ones after every ranked one), or by the raw validation or holdout primary
    metric (direction from the task), or newest first; annotated with `other_contract`."""
    from django.db.models import BooleanField, Case, Value, When

    from domains.services import contract_annotate
    from experiments.ranking import UNRANKED_STATES, rank_order

    if sort not in SORTS:
        raise InvalidInput(f"sort must be one of {', '.join(SORTS)}")
    # gap = holdout − validation primary value: how much the validation score flatters the model.
    qs = Experiment.objects.filter(domain=domain).annotate(gap=F("holdout_primary_value") - F("primary_value"))
    if state:
        if state not in Experiment.State.values:
            raise InvalidInput(f"state must be one of {', '.join(Experiment.State.values)}")
        qs = qs.filter(state=state)
    else:
        qs = qs.exclude(state=Experiment.State.ARCHIVED)  # archived ones show only when asked for
    task = Task.objects.filter(domain=domain).first()
    if task is not None:
        qs = contract_annotate(qs, task=task)
    if sort == "created":
        return qs.order_by("-created_at", "-pk")
    maximize = task is not None and task.direction == Task.Direction.MAXIMIZE
    if sort == "rank":
        qs = qs.annotate(unranked=Case(
            When(quarantine_state__in=UNRANKED_STATES, then=Value(True)), default=Value(False),
            output_field=BooleanField(),
        ))
        qs = rank_order(qs, direction="maximize" if maximize else "minimize")
        return qs.order_by("unranked", *qs.query.order_by)
    column = "primary_value" if sort == "validation" else "holdout_primary_value"
    order = F(column).desc(nulls_last=True) if maximize else F(column).asc(nulls_last=True)
    return qs.order_by(order, "-created_at")


def experiment_best(*, domain: Domain, run=None) -> Experiment | None:
    """The best experiment (experiments/ranking.py), or None when nothing ranks yet."""
    from experiments.ranking import best_experiment

    return best_experiment(domain, run=run)


def _reproduction_create(experiment: Experiment) -> Experiment:
    task = _ready_task(experiment.domain)
    return Experiment.objects.create(
        domain=experiment.domain, parent=experiment.parent, reproduction_of=experiment,
        hypothesis=f"Reproduce #{experiment.pk}: {experiment.hypothesis}"[:2000],
        variables=dict(experiment.variables or {}), train_code=experiment.train_code,
        code_sha256=hashlib.sha256(experiment.train_code.encode()).hexdigest(), state=Experiment.State.PENDING,
        seed=experiment.seed, task_fingerprint=task.fingerprint, data_fingerprint=task.data_fingerprint,
        code_flags=experiment.code_flags, provenance=experiment.provenance, family=experiment.family,
    )


def experiment_reproduce(*, experiment: Experiment, should_stop=None) -> Experiment:
    """Run the stored code again (same seed) now; return the copy `completed` or `failed`.

    The copy has `reproduction_of` = the original (it is not a leaderboard entry of its own) and
    the original's parent. Raises NotReady (recording nothing) when the task is not ready."""
    copy = _reproduction_create(experiment)
    return experiment_run_pending(experiment_id=copy.pk, should_stop=should_stop)


def experiment_reproduce_enqueue(*, experiment: Experiment) -> Experiment:
    """Record a `pending` reproduction of `experiment` and hand it to a django-q2 worker once the
    transaction commits; return the copy (poll it for progress). Raises NotReady (recording
    nothing) when the task is not ready."""
    with transaction.atomic():
        copy = _reproduction_create(experiment)
        transaction.on_commit(partial(_enqueue_pending, copy.pk))
    return copy


def experiment_enqueue(
    *,
    domain: Domain,
    train_code: str,
    hypothesis: str = "",
    variables: dict | None = None,
    parent: Experiment | int | None = None,
    seed: int | None = None,
) -> Experiment:
    """Record a by-hand experiment `pending` and hand it to a django-q2 worker once the transaction
    commits (DOJO_INLINE_TASKS=False: the web node runs no train code); return it (poll it: it
    becomes `running`, then `completed` or `failed`). Raises, recording nothing, what
    experiment_run raises before it runs: InvalidInput for bad arguments, NotReady when the task
    is not ready."""
    _, fields = _new_experiment_fields(domain, train_code, hypothesis, variables, parent, seed)
    with transaction.atomic():
        exp = Experiment.objects.create(**fields, state=Experiment.State.PENDING)
        transaction.on_commit(partial(_enqueue_pending, exp.pk))
    return exp


def _enqueue_pending(experiment_id: int, *, timeout: float | None = None) -> None:
    """Queue a pending experiment: for the experiment workers with DOJO_DISPATCH=queue, else for
    the one queue. `timeout` (seconds) is the queue's own limit for this task."""
    from django_q.tasks import async_task

    options: dict = {"timeout": int(timeout)} if timeout else {}
    if settings.DOJO_DISPATCH == "queue":
        options["cluster"] = settings.DOJO_EXPERIMENT_QUEUE
    task_id = async_task("experiments.tasks.experiment_run_pending_task", experiment_id,
                         task_name=f"dojo-experiment-{experiment_id}", **options)
    if settings.DOJO_DISPATCH == "queue":  # the reaper watches the experiments' queue (experiments_requeue_lost)
        Experiment.objects.filter(pk=experiment_id).update(queue_task_id=str(task_id or ""))


def experiment_run_pending(*, experiment_id: int, should_stop=None) -> Experiment:
    """Run a `pending` experiment (a queued reproduction or by-hand experiment) and return it
    `completed` or `failed`.

    The row is claimed with a conditional update, so two workers never run it twice; an
    experiment that is no longer pending is returned as it is (one asked to stop before it
    started ends `stopped`). While it runs, this process beats on the row (the reaper requeues it
    once when the beats stop: experiments_requeue_lost) and watches its stop flag (set: the trainer
    is killed and it ends `stopped`). A task that is no longer ready fails the experiment with the
    reason. Never leaves it `running`."""
    now = timezone.now()
    claimed = Experiment.objects.filter(pk=experiment_id, state=Experiment.State.PENDING, stop_requested=False).update(
        state=Experiment.State.RUNNING, started_at=now, heartbeat_at=now, worker_host=WORKER_HOST,
        worker_pid=os.getpid(), attempts=F("attempts") + 1,
    )
    if not claimed:
        Experiment.objects.filter(pk=experiment_id, state=Experiment.State.PENDING, stop_requested=True).update(
            state=Experiment.State.STOPPED, error="stopped before it started", finished_at=now
        )
    exp = Experiment.objects.select_related("domain").get(pk=experiment_id)
    if not claimed:
        return exp
    exp._unsaved = set()
    started = time.perf_counter()
    try:
        with _worker_watch(exp.pk) as stop_requested:
            def stop() -> bool:
                return stop_requested.is_set() or (should_stop is not None and should_stop())

            task = _ready_task(exp.domain)
            _save(exp, task_fingerprint=task.fingerprint, data_fingerprint=task.data_fingerprint)
            _execute(exp, exp.domain, task, stop, started)
    except (_Failed, NotReady) as exc:
        _finish_failed(exp, str(exc), started, stopped=isinstance(exc, _Stopped))
    except BaseException as exc:  # noqa: BLE001 - never leave an experiment running
        log.exception("experiment %s crashed", exp.pk)
        reason = "interrupted" if isinstance(exc, KeyboardInterrupt) else f"internal error: {type(exc).__name__}: {exc}"
        _finish_failed(exp, reason, started)
        if not isinstance(exc, Exception):
            raise
    if exp.state == Experiment.State.COMPLETED:
        if exp.reproduction_of_id is None:  # a queued by-hand experiment ranks like one run inline
            _after_scoring(exp)
        _track(exp)
    return exp


# --- Queue dispatch (DOJO_DISPATCH=queue, docs/cluster.md) ----------------------------------
# A run's experiment is recorded `pending`, queued for the experiment workers (their own queue, so a
# run waiting for its experiments never holds the slots they need) and run there by
# experiment_run_pending; the run polls the row for the result. The executing worker beats on the
# row; when the beats stop (or its pid is gone, on the same host) the reaper requeues the experiment
# once, and fails it the second time. Stopping goes through the row too: `stop_requested`.

def _worker_host() -> str:
    """This machine as the reaper tells machines apart: its host name and its kernel's boot id (two
    cloned machines may share a name, never a boot), so a pid is only ever checked where it lives."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()[:8]
    except OSError:
        boot = ""
    return f"{socket.gethostname()}#{boot}" if boot else socket.gethostname()


WORKER_HOST = _worker_host()
DISPATCH_POLL_SECONDS = 0.2
DISPATCH_WORKER_CHECK_SECONDS = 2.0
WORKER_STOP_POLL_SECONDS = 0.5
# After a stop request, how long the run waits for the worker to confirm before ending it itself.
DISPATCH_STOP_GRACE_SECONDS = 30.0
DIED_TWICE = "the worker running it died twice"


def _heartbeat_interval() -> float:
    # Several beats fit in the reaper's timeout, so one slow write never looks like a dead worker.
    return max(0.5, min(10.0, settings.DOJO_HEARTBEAT_TIMEOUT_SECONDS / 6))


@contextmanager
def _worker_watch(experiment_id: int) -> Iterator[threading.Event]:
    """While the block runs, a thread beats on the experiment's row and sets the yielded event
    once someone asks the experiment to stop."""
    stop_requested = threading.Event()
    done = threading.Event()

    def watch() -> None:
        interval, last_beat = _heartbeat_interval(), time.monotonic()
        try:
            while not done.wait(WORKER_STOP_POLL_SECONDS):
                try:
                    if Experiment.objects.filter(pk=experiment_id, stop_requested=True).exists():
                        stop_requested.set()
                    if time.monotonic() - last_beat >= interval:
                        Experiment.objects.filter(pk=experiment_id, state=Experiment.State.RUNNING).update(
                            heartbeat_at=timezone.now()
                        )
                        last_beat = time.monotonic()
                except Exception:  # noqa: BLE001 - a locked database for a moment must not end the watch
                    log.exception("heartbeat of experiment %s failed", experiment_id)
        finally:
            connections.close_all()  # this thread's connections only

    thread = threading.Thread(target=watch, name=f"experiment-{experiment_id}-watch", daemon=True)
    thread.start()
    try:
        yield stop_requested
    finally:
        done.set()
        thread.join(timeout=10)


def _queue_timeout(task: Task) -> float:
    """django-q2's own limit for one queued experiment: above anything the experiment's limits allow."""
    return experiment_limits(task=task).timeout_seconds + settings.DOJO_EVALUATE_TIMEOUT_SECONDS + 300


def experiment_dispatch(
    *,
    domain: Domain,
    train_code: str,
    hypothesis: str = "",
    variables: dict | None = None,
    parent: Experiment | int | None = None,
    run=None,
    seed: int | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> Experiment:
    """experiment_run on whichever experiment worker has a free slot (DOJO_DISPATCH=queue): record
    the experiment `pending`, queue it, wait for it, and return it `completed`, `failed` or
    `stopped`, never `pending` or `running`.

    Raises, before recording anything, what experiment_run raises (InvalidInput, NotReady). Once
    `should_stop` answers True the experiment is asked to stop: it ends `stopped` (at once when no
    worker took it yet; else when its worker has killed the trainer, or after
    DISPATCH_STOP_GRACE_SECONDS when the worker does not answer). A retry after its worker died
    (experiments_requeue_lost, or this wait itself: it applies the reaper's rule to its own
    experiment every DISPATCH_WORKER_CHECK_SECONDS) is waited for like the first attempt."""
    task, fields = _new_experiment_fields(domain, train_code, hypothesis, variables, parent, seed)
    exp = Experiment.objects.create(**fields, run=run, state=Experiment.State.PENDING)
    transaction.on_commit(partial(_enqueue_pending, exp.pk, timeout=_queue_timeout(task)))
    ended = {Experiment.State.COMPLETED, Experiment.State.FAILED, Experiment.State.STOPPED, Experiment.State.ARCHIVED}
    stop_asked_at: float | None = None
    next_worker_check = 0.0
    row = Experiment.objects.filter(pk=exp.pk)
    while True:
        state = row.values_list("state", flat=True).first()
        if state is None:
            raise NotFound(f"experiment #{exp.pk} was deleted while it ran")
        if state in ended:
            break
        if stop_asked_at is None and should_stop is not None and should_stop():
            stop_asked_at = time.monotonic()
            row.update(stop_requested=True)
            # Not taken by a worker yet: it ends here (a worker's claim skips stop-requested rows).
            row.filter(state=Experiment.State.PENDING).update(
                state=Experiment.State.STOPPED, error="stopped", finished_at=timezone.now()
            )
            continue
        if stop_asked_at is not None and time.monotonic() - stop_asked_at > DISPATCH_STOP_GRACE_SECONDS:
            row.filter(state__in=[Experiment.State.PENDING, Experiment.State.RUNNING]).update(
                state=Experiment.State.STOPPED, finished_at=timezone.now(),
                error="stopped (its worker did not confirm the stop in time)",
            )
            continue
        if state == Experiment.State.RUNNING and time.monotonic() >= next_worker_check:
            # The waiting run watches its own experiment's worker too, with the reaper's rule (the
            # same conditional update, so the two never both move it): a worker of this host that
            # died is seen within seconds, not at the reaper's next minute.
            next_worker_check = time.monotonic() + DISPATCH_WORKER_CHECK_SECONDS
            _requeue_dead_workers(row, now=timezone.now())
        time.sleep(DISPATCH_POLL_SECONDS)
    return Experiment.objects.select_related("domain").get(pk=exp.pk)


def _worker_gone(exp: Experiment) -> bool:
    """True when the experiment's worker process ran on this host and no longer exists."""
    if exp.worker_host != WORKER_HOST or not exp.worker_pid:
        return False
    try:
        os.kill(exp.worker_pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def experiments_requeue_lost(*, now=None) -> list[int]:
    """Requeue queued experiments whose worker died, or whose queue entry a dead cluster took; return
    their ids. Safe to run anywhere, any number of times: each row moves with a conditional update.

    - `running`, its worker dead (no heartbeat for DOJO_HEARTBEAT_TIMEOUT_SECONDS, or, on this host,
      its process gone): requeued (_experiment_requeue).
    - `pending`, its entry taken off the experiments' queue by an experiment cluster that died before a
      worker claimed it (dojo_site.queues.queue_lost: taken more than QUEUE_LOST_AFTER_SECONDS ago, no
      live experiment cluster may hold it): requeued with a new entry, the dead cluster's entry
      dropped (_experiment_requeue_lost). One still waiting in the queue is never touched.

    Both count as an attempt (`attempts`: a worker's claim adds one, a loss in the queue adds one),
    and both follow one rule: retried once, then failed with DIED_TWICE and what happened last; one
    asked to stop ends `stopped` instead. A lost entry that a live cluster held after all is harmless:
    the worker's claim takes a row only while it is pending, so a duplicate delivery does nothing."""
    now = now or timezone.now()
    moved = _requeue_dead_workers(Experiment.objects.all(), now=now)
    pending = list(Experiment.objects.filter(state=Experiment.State.PENDING).exclude(queue_task_id=""))
    lost = set(queue_lost({exp.queue_task_id: exp.created_at for exp in pending}, queue=settings.DOJO_EXPERIMENT_QUEUE,
                          retry=settings.DOJO_EXPERIMENT_QUEUE_RETRY, now=now))
    return moved + [exp.pk for exp in pending if exp.queue_task_id in lost and _experiment_requeue_lost(exp, now=now)]


def _requeue_dead_workers(experiments: QuerySet, *, now) -> list[int]:
    """Of these experiments, requeue (or end) the `running` ones whose worker died: no heartbeat for
    DOJO_HEARTBEAT_TIMEOUT_SECONDS, or, on this host, its process is gone. Returns their ids."""
    cutoff = now - timedelta(seconds=settings.DOJO_HEARTBEAT_TIMEOUT_SECONDS)
    running = experiments.filter(state=Experiment.State.RUNNING, heartbeat_at__isnull=False)
    return [
        exp.pk for exp in running
        if (exp.heartbeat_at < cutoff or _worker_gone(exp)) and _experiment_requeue(exp, now=now, died=True)
    ]


def experiments_requeue_after_shutdown(*, worker_pids: set[int]) -> list[int]:
    """Requeue, without counting it as a worker death, the experiments these worker processes of
    this host were running when their cluster was shut down (SIGTERM) and killed; return their ids."""
    now = timezone.now()
    running = Experiment.objects.filter(
        state=Experiment.State.RUNNING, heartbeat_at__isnull=False, worker_host=WORKER_HOST,
        worker_pid__in=worker_pids,
    )
    return [exp.pk for exp in running if _experiment_requeue(exp, now=now, died=False)]


def _experiment_requeue(exp: Experiment, *, now, died: bool) -> bool:
    """Put a running experiment whose worker is gone back in the queue (or end it: stopped when
    asked to stop, failed when its worker died twice); True when this call moved it."""
    where = f"{exp.worker_host}, pid {exp.worker_pid}"
    # Unchanged since it was read: not beating again, not moved by another reaper.
    same = Experiment.objects.filter(
        pk=exp.pk, state=Experiment.State.RUNNING, heartbeat_at=exp.heartbeat_at, attempts=exp.attempts
    )
    if exp.stop_requested:
        outcome = "stopped"
        moved = same.update(state=Experiment.State.STOPPED, error=f"stopped (its worker ended: {where})",
                            finished_at=now)
    elif died and exp.attempts >= 2:
        outcome = "failed"
        moved = same.update(state=Experiment.State.FAILED, error=f"{DIED_TWICE} (last on {where})", finished_at=now)
    else:
        outcome = "requeued"
        moved = same.update(state=Experiment.State.PENDING, heartbeat_at=None, worker_pid=None, worker_host="",
                            attempts=exp.attempts if died else exp.attempts - 1, queue_task_id="")
        if moved:
            _enqueue_again(exp)
    if moved:
        log.warning("experiment %s: its worker (%s) %s; %s", exp.pk, where, "died" if died else "was shut down",
                    outcome)
    return bool(moved)


def _enqueue_again(exp: Experiment) -> None:
    """Queue a requeued experiment once the transaction commits, with its task's queue timeout."""
    task = Task.objects.filter(domain_id=exp.domain_id).first()
    timeout = _queue_timeout(task) if task is not None else None
    transaction.on_commit(partial(_enqueue_pending, exp.pk, timeout=timeout))


LOST_IN_QUEUE = "the experiment cluster that took it off the queue died before a worker started it"


def _experiment_requeue_lost(exp: Experiment, *, now) -> bool:
    """Queue a pending experiment again whose entry a dead cluster took (or end it: stopped when asked
    to stop, failed when this is its second attempt); True when this call moved it."""
    # Unchanged since it was read: not claimed by a worker, not moved by another reaper.
    same = Experiment.objects.filter(
        pk=exp.pk, state=Experiment.State.PENDING, queue_task_id=exp.queue_task_id, attempts=exp.attempts
    )
    with transaction.atomic():
        if exp.stop_requested:
            outcome = "stopped"
            moved = same.update(state=Experiment.State.STOPPED, error="stopped before it started", finished_at=now)
        elif exp.attempts >= 1:
            outcome = "failed"
            moved = same.update(state=Experiment.State.FAILED, error=f"{DIED_TWICE} (last: {LOST_IN_QUEUE})",
                                finished_at=now)
        else:
            outcome = "requeued"
            moved = same.update(attempts=exp.attempts + 1, queue_task_id="")
            if moved:
                _enqueue_again(exp)
        if moved:  # django-q2 would deliver the dead cluster's entry again after `retry`
            queue_entry_drop(queue=settings.DOJO_EXPERIMENT_QUEUE, task_id=exp.queue_task_id)
    if moved:
        log.warning("experiment %s: %s; %s", exp.pk, LOST_IN_QUEUE, outcome)
    return bool(moved)


def experiment_summary(exp: Experiment, *, holdout: bool = True) -> dict:
    """Plain data for --json, the API and the agent tools (holdout=False for the agent)."""
    data = {
        "id": exp.pk, "domain": exp.domain.name, "run_id": exp.run_id, "parent_id": exp.parent_id,
        "reproduction_of_id": exp.reproduction_of_id,
        "state": exp.state, "hypothesis": exp.hypothesis, "variables": exp.variables,
        "metrics": exp.metrics, "primary_value": exp.primary_value, "error": exp.error,
        "warnings": exp.warnings, "code_sha256": exp.code_sha256, "seed": exp.seed,
        "train_seconds": exp.train_seconds, "total_seconds": exp.total_seconds,
        "peak_memory_mb": exp.peak_memory_mb, "task_fingerprint": exp.task_fingerprint,
        "data_fingerprint": exp.data_fingerprint, "environment": exp.environment, "provenance": exp.provenance,
        "isolation": exp.isolation, "cv_value": exp.cv_value, "cv_rows": exp.cv_rows,
        "rank_value": exp.rank_value, "seed_spread": exp.seed_spread, "seed_count": exp.seed_count,
        "validation_ci": exp.validation_ci, "quarantine_state": exp.quarantine_state,
        "quarantine_reasons": exp.quarantine_reasons, "probe_of": exp.probe_of_id,
        "created_at": exp.created_at.isoformat() if exp.created_at else None,
        "finished_at": exp.finished_at.isoformat() if exp.finished_at else None,
    }
    if holdout:  # people's view; the audit is for reviewers, not something an agent tunes against
        data["code_flags"] = exp.code_flags
        data["audit_trail"] = exp.audit_trail
        data["holdout_metrics"] = exp.holdout_metrics
        data["holdout_ci"] = exp.holdout_ci
        data["holdout_primary_value"] = exp.holdout_primary_value
    return data

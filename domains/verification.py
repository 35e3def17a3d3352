"""Running the contract tools in the sandbox: verification, and load_data's one run at freeze.

The work happens in domains/verify_entry.py, a script with no Django in it, run by
domains.sandbox.sandbox_run with a wall-clock limit (its whole process group, and with bwrap its
PID namespace, is killed on timeout) and capped output. DOJO_HOME and the database are hidden from
it; the workspace is its read-only working directory.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from django.conf import settings

from domains import contracts, safe_read
from domains.sandbox import sandbox_env, sandbox_run

ENTRY_SCRIPT = Path(__file__).with_name("verify_entry.py")
DEFAULT_TIMEOUT_SECONDS = 300.0
PRINT_LIMIT_BYTES = 1_000_000


@dataclass
class ToolCheck:
    name: str
    errors: list[str] = field(default_factory=list)
    sample: dict = field(default_factory=dict)
    seconds: float | None = None

    @property
    def ok(self) -> bool:
        return not self.errors


@dataclass
class ToolsRun:
    """What one sandboxed run of the tools found."""

    load_data: ToolCheck
    evaluate: ToolCheck
    isolation: str
    seconds: float
    snapshot: dict | None = None  # shapes/dtypes/classes, in mode "snapshot"
    peak_memory_mb: float | None = None  # of the sandboxed process tree
    # Workspace-relative source files of the user's own modules the tools imported (as reported
    # from inside the sandbox: names only; the trusted side hashes them itself).
    workspace_files: list[str] = field(default_factory=list)
    audit: dict | None = None  # leak measurements (verify_entry.measure_leaks), mode "verify"

    @property
    def ok(self) -> bool:
        return self.load_data.ok and self.evaluate.ok

    @property
    def errors(self) -> list[str]:
        return [*self.load_data.errors, *self.evaluate.errors]


def tools_run(
    *,
    codes: dict[str, str],
    task_type: str,
    primary_metric: str,
    direction: str,
    config: dict,
    workspace: Path,
    python: str = "",
    env_vars: dict | None = None,
    mode: str = "verify",
    snapshot_dir: Path | None = None,
) -> ToolsRun:
    """Run the tools once in the sandbox. Mode "verify" checks both; mode "snapshot" runs load_data
    and writes its output into snapshot_dir (which must hold empty public/ and sealed/ folders)."""
    home = Path(settings.DOJO_HOME)
    work = home / "work" / f"tools-{uuid.uuid4().hex[:12]}"
    (work / "tools").mkdir(parents=True)
    (work / "artifacts").mkdir()
    try:
        for name, code in codes.items():
            (work / "tools" / f"{name}.py").write_text(code, encoding="utf-8")
        shutil.copyfile(ENTRY_SCRIPT, work / "verify_entry.py")
        shutil.copyfile(contracts.__file__, work / "dojo_contracts.py")
        output = work / "result.json"
        spec = {
            "mode": mode,
            "task_type": task_type,
            "primary_metric": primary_metric,
            "direction": direction,
            "tools_dir": str(work / "tools"),
            "contracts_path": str(work / "dojo_contracts.py"),
            "artifacts_dir": str(work / "artifacts"),
            "output": str(output),
            "seed": int(config.get("seed", 42)),
            "holdout_ratio": float(config.get("holdout_ratio", 0.5)),
            "snapshot_dir": str(snapshot_dir) if snapshot_dir else "",
            "print_limit_bytes": PRINT_LIMIT_BYTES,
        }
        (work / "spec.json").write_text(json.dumps(spec))
        timeout = float(config.get("verify_timeout_seconds", DEFAULT_TIMEOUT_SECONDS))
        writable = [work] + ([snapshot_dir] if snapshot_dir else [])
        run = sandbox_run(
            [python or sys.executable, str(work / "verify_entry.py"), str(work / "spec.json")],
            cwd=workspace,
            timeout=timeout,
            env=sandbox_env(extra={k: str(v) for k, v in (env_vars or {}).items()}),
            writable=writable,
            hidden=_hidden_paths(home),
            output_cap=16384,
            memory_mb=settings.DOJO_TRAIN_MEMORY_MB,
        )
        # The work folder was writable inside the sandbox: read it by descriptor, never by path.
        work_fd = safe_read.open_dir(work.name, under=work.parent)
        try:
            result = _read_json(work_fd, output.name)
            phase = _read_text(work_fd, output.name + ".phase") if result is None else ""
        finally:
            os.close(work_fd)
        if result is not None and snapshot_dir is not None:
            problem = _snapshot_tree_problem(snapshot_dir)
            if problem:
                result["load_data"]["errors"] = [*result["load_data"].get("errors", []), problem]
                result["snapshot"] = None
        if result is None:
            phase = phase or "load_data"
            tool = "evaluate" if phase == "evaluate" else "load_data"
            if run.timed_out:
                message = (
                    f"{tool}: did not finish within {timeout:g} s; it was stopped and its processes "
                    "killed (raise the task config's verify_timeout_seconds if it is just slow)"
                )
            else:
                last = (run.stderr_tail.strip().splitlines() or [""])[-1][:300]
                why = run.killed_reason or f"exit code {run.returncode}"
                message = f"{tool}: the check ended without a result ({why}){': ' + last if last else ''}"
            checks = {"load_data": ToolCheck("load_data"), "evaluate": ToolCheck("evaluate")}
            checks[tool].errors.append(message)
            if tool == "load_data":
                checks["evaluate"].errors.append("evaluate: not checked, because load_data failed")
            return ToolsRun(
                load_data=checks["load_data"], evaluate=checks["evaluate"],
                isolation=run.isolation, seconds=run.seconds, peak_memory_mb=run.peak_memory_mb,
            )
        return ToolsRun(
            load_data=_tool_check("load_data", result["load_data"]),
            evaluate=_tool_check("evaluate", result["evaluate"]),
            isolation=run.isolation,
            seconds=run.seconds,
            snapshot=result.get("snapshot"),
            audit=result.get("audit") if isinstance(result.get("audit"), dict) else None,
            peak_memory_mb=max(run.peak_memory_mb or 0.0, result.get("peak_rss_mb") or 0.0) or None,
            workspace_files=[f for f in result.get("workspace_files") or [] if isinstance(f, str)][:500],
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _hidden_paths(home: Path) -> list[Path]:
    """DOJO_HOME (DB, snapshots, other tasks' files), the machine's cache folder and the shared
    storage's folder wherever they are (fetched snapshots and archives hold sealed labels), and
    the database file wherever it lives."""
    # Imported here: snapshot_share imports domains.snapshot, which imports this module.
    from domains.snapshot_share import local_dirs_outside_home

    hidden = [home, *local_dirs_outside_home()]
    name = settings.DATABASES["default"].get("NAME")
    if settings.DATABASES["default"]["ENGINE"].endswith("sqlite3") and name:
        db = Path(str(name))
        if db.exists() and home not in db.parents:
            hidden.append(db)
    return hidden


RESULT_MAX_BYTES = 8 * 1024 * 1024


def _tool_check(name: str, found: dict) -> ToolCheck:
    """Only the fields a ToolCheck has, typed: the result file came out of the sandbox."""
    errors = found.get("errors")
    sample = found.get("sample")
    seconds = found.get("seconds")
    return ToolCheck(
        name, errors=[str(e) for e in errors] if isinstance(errors, list) else [],
        sample=sample if isinstance(sample, dict) else {},
        seconds=float(seconds) if isinstance(seconds, (int, float)) and not isinstance(seconds, bool) else None,
    )


def _read_json(work_fd: int, name: str) -> dict | None:
    try:
        data = json.loads(safe_read.read_file(work_fd, name, owner=safe_read.sandbox_owner(), cap=RESULT_MAX_BYTES))
    except (OSError, ValueError, safe_read.Refused):
        return None
    if not isinstance(data, dict) or not all(isinstance(data.get(k), dict) for k in ("load_data", "evaluate")):
        return None
    return data


def _read_text(work_fd: int, name: str) -> str:
    try:
        return safe_read.read_file(work_fd, name, owner=safe_read.sandbox_owner(), cap=256).decode(errors="replace").strip()
    except (OSError, safe_read.Refused):
        return ""


def _snapshot_tree_problem(snapshot_dir: Path) -> str:
    """load_data wrote the snapshot's files from inside the sandbox, which has ended: anything in
    that tree but plain folders and regular files would later be followed by root (chmod, hash,
    unpickle), so it fails the snapshot instead."""
    try:
        fd = safe_read.open_dir(snapshot_dir.name, under=snapshot_dir.parent)
    except (OSError, safe_read.Refused) as exc:
        return f"load_data: the snapshot folder was replaced ({exc})"
    try:
        problems = safe_read.tree_problems(fd, owner=(safe_read.sandbox_owner(), os.geteuid()))
    finally:
        os.close(fd)
    if problems:
        return "load_data: the snapshot folder holds what the harness will not follow: " + "; ".join(problems[:5])
    return ""


def own_tree(path: Path) -> None:
    """Take back files the sandbox's unprivileged user wrote (only matters when we run as root)."""
    uid, gid = os.getuid(), os.getgid()
    for root, dirs, files in os.walk(path):
        for name in [*dirs, *files]:
            target = os.path.join(root, name)
            if os.lstat(target).st_uid != uid:
                os.lchown(target, uid, gid)
    if path.stat().st_uid != uid:
        os.chown(path, uid, gid)

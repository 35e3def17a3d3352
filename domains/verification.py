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

from domains import contracts
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
        result = _read_json(output)
        if result is None:
            phase = _read_text(Path(str(output) + ".phase")) or "load_data"
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
            load_data=ToolCheck("load_data", **result["load_data"]),
            evaluate=ToolCheck("evaluate", **result["evaluate"]),
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
    """DOJO_HOME (DB, snapshots, other tasks' files) and the database file wherever it lives."""
    hidden = [home]
    name = settings.DATABASES["default"].get("NAME")
    if settings.DATABASES["default"]["ENGINE"].endswith("sqlite3") and name:
        db = Path(str(name))
        if db.exists() and home not in db.parents:
            hidden.append(db)
    return hidden


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _read_text(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
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

"""How the Claude agent is kept away from what the trainer may not see (issue 9, item 4).

The Claude backend gives the model the built-in file tools (Read, Glob, Grep; Write, Edit and
Bash too when DOJO_CLAUDE_ALLOW_WRITE_TOOLS is on). Those run inside the `claude` CLI process,
so the CLI gets the same walls as the untrusted trainer, in two layers:

1. **The CLI runs in the trainer's bubblewrap profile** (domains.sandbox.sandbox_command): the
   filesystem read-only, DOJO_HOME (database, snapshots with their sealed folders, secret key),
   the database files, the project's .env and every raw data file the domain's tasks were frozen
   with covered by empty mounts, a private /tmp, and the unprivileged sandbox user. Its one
   writable place is its own config folder under DOJO_HOME, made fresh for the run and removed
   after it. Its environment is scrubbed to what the CLI needs (agentrun/claude_exec.py): the
   server's SECRET_KEY, database URL and other variables never reach it. The network cannot be
   narrowed with bubblewrap (it shares the host's network or has none, and the CLI must reach
   the model API), so the CLI keeps the host network — see docs/decisions.md.
2. **Every built-in tool call is checked on resolved real paths** (`tool_refusal`, the SDK's
   `can_use_tool`): each path a call names is made absolute against the workspace, resolved
   (`os.path.realpath`: symlinks and `..`), and must lie inside the workspace and outside every
   hidden path; glob patterns may not be absolute or climb with `..`. Anything else is refused
   with a message the model reads, and the run goes on. The hidden data files are also denied
   by SDK permission rules (`Read(//path)`), a second net inside the CLI itself.

Layer 2 holds without bubblewrap too (fallback isolation); there, Grep over a folder holding a
hidden file is refused as well, since nothing empties that file underneath the CLI.
DOJO_CLAUDE_SANDBOX=off skips layer 1 (for fake CLIs in tests), never layer 2.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.conf import settings

from domains.sandbox import sandbox_command, sandbox_env, sandbox_isolation

EXEC_HELPER = Path(__file__).with_name("claude_exec.py")
# Passed through from the SDK's environment to the CLI: what it needs to reach a model.
ENV_KEEP = [
    "ANTHROPIC_*", "CLAUDE_*", "AWS_*", "CLOUD_ML_REGION", "GOOGLE_APPLICATION_CREDENTIALS",
    "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy",
    "NODE_EXTRA_CA_CERTS", "SSL_CERT_FILE", "SSL_CERT_DIR", "MAX_THINKING_TOKENS",
]
# The input keys in which a built-in tool names a file or folder.
PATH_KEYS = ("file_path", "notebook_path", "path")
PATTERN_KEYS = ("pattern", "glob")
FILE_TOOLS = {"Read", "Glob", "Grep", "Write", "Edit", "MultiEdit", "NotebookEdit"}


@dataclass(frozen=True)
class AgentSandbox:
    workspace: Path  # real path
    hidden: tuple[Path, ...]  # real paths (and their absolute spellings)
    isolation: str  # "bwrap" | "scrubbed" (environment only) | "off"
    cli_path: str | None  # what the SDK should spawn
    home: Path | None  # this run's folder under DOJO_HOME (config + wrapper), removed at the end


def _contains(root: Path, path: Path) -> bool:
    return path == root or root in path.parents


def agent_hidden_paths(*, domain: Any) -> list[Path]:
    """What the agent's tools may never read: all the trainer may not (DOJO_HOME, the database,
    .env), the task's snapshot, and the raw data file it was frozen with or SETUP.md names now."""
    from domains.generation import task_data_file
    from domains.models import Task
    from experiments.services import _hidden_paths  # the one list of what no sandbox may see

    hidden = list(_hidden_paths())
    task = Task.objects.filter(domain=domain).first()
    if task is not None:
        data_file = (task.snapshot_info or {}).get("data_file")
        if data_file:
            hidden.append(Path(data_file))
        if task.snapshot_path:
            hidden.append(Path(task.snapshot_path))
        current = task_data_file(task=task)
        if current is not None:
            hidden.append(current)
    out: list[Path] = []
    for path in hidden:
        for form in (Path(os.path.abspath(path)), Path(os.path.realpath(path))):
            if form not in out:
                out.append(form)
    return out


def _resolve(value: str, workspace: Path) -> Path:
    path = Path(os.path.expanduser(value))
    if not path.is_absolute():
        path = workspace / path
    return Path(os.path.realpath(path))


def _path_refusal(real: Path, sandbox: AgentSandbox) -> str | None:
    if not _contains(sandbox.workspace, real):
        return f"{real} is outside the workspace ({sandbox.workspace}); only the workspace is readable"
    for hidden in sandbox.hidden:
        # DOJO_HOME may hold the workspace (git clones); only what is inside the workspace counts.
        if _contains(hidden, real) and not _contains(hidden, sandbox.workspace):
            return f"{real} is hidden from the agent (raw data, Dojo's own files or the database)"
    return None


def tool_refusal(*, sandbox: AgentSandbox, tool_name: str, tool_input: dict[str, Any]) -> str | None:
    """Why this built-in tool call is refused, or None when it may run."""
    if tool_name.startswith("mcp__dojo__"):
        return None
    if tool_name == "Bash":
        # A shell command names no checkable path; only the bubblewrap walls make it safe.
        if sandbox.isolation == "bwrap" and settings.DOJO_CLAUDE_ALLOW_WRITE_TOOLS:
            return None
        return "Bash is not available to the agent here"
    if tool_name not in FILE_TOOLS:
        return f"{tool_name} is not available to the agent"
    if tool_name not in {"Read", "Glob", "Grep"} and not settings.DOJO_CLAUDE_ALLOW_WRITE_TOOLS:
        return f"{tool_name} is not available to the agent"
    for key in PATTERN_KEYS:
        pattern = tool_input.get(key)
        if isinstance(pattern, str) and (
            pattern.startswith(("/", "~")) or ".." in Path(pattern).parts
        ):
            return f"the {key} {pattern!r} leaves the workspace; use a pattern relative to it"
    named = [v for k, v in tool_input.items() if k in PATH_KEYS and isinstance(v, str) and v.strip()]
    if tool_name in {"Glob", "Grep"} and not named:
        named = [str(sandbox.workspace)]
    if not named and tool_name != "Glob":
        return f"{tool_name} needs a path inside the workspace"
    for value in named:
        real = _resolve(value, sandbox.workspace)
        refusal = _path_refusal(real, sandbox)
        if refusal:
            return refusal
        if tool_name == "Grep" and sandbox.isolation != "bwrap" and real.is_dir():
            # Without bubblewrap nothing empties a hidden file inside the searched folder.
            inside = [h for h in sandbox.hidden if h != real and _contains(real, h)]
            if inside:
                return f"{real} holds a hidden file ({inside[0].name}); grep a file or another folder"
    return None


def permission_deny_rules(sandbox: AgentSandbox) -> list[str]:
    """SDK permission rules denying the hidden files inside the workspace (`//` = absolute)."""
    rules = []
    for hidden in sandbox.hidden:
        if _contains(sandbox.workspace, hidden) and hidden != sandbox.workspace:
            pattern = f"/{hidden}/**" if hidden.is_dir() else f"/{hidden}"
            rules += [f"Read({pattern})", f"Grep({pattern})"]
    return rules


def _credentials(config_dir: Path) -> None:
    """A `claude login` of the server's user, copied into the run's fresh config folder."""
    if any(os.environ.get(name) for name in ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "CLAUDE_CODE_OAUTH_TOKEN")):
        return
    source = Path(os.environ.get("CLAUDE_CONFIG_DIR") or Path.home() / ".claude") / ".credentials.json"
    if source.is_file():
        shutil.copy2(source, config_dir / ".credentials.json")


def agent_sandbox_prepare(*, domain: Any, run_id: int, cli: str) -> AgentSandbox:
    """The walls for one Claude session: a wrapper executable to pass as `cli_path` (running
    `cli` in bubblewrap when available, with a scrubbed environment in any case) and the path
    rules `tool_refusal` applies. Call `agent_sandbox_cleanup` when the session ends."""
    workspace_abs = Path(domain.workspace_path)
    workspace = Path(os.path.realpath(workspace_abs))
    hidden = tuple(agent_hidden_paths(domain=domain))
    mode = str(getattr(settings, "DOJO_CLAUDE_SANDBOX", "") or "auto").lower()
    if mode == "off" or not workspace.is_dir():
        return AgentSandbox(workspace=workspace, hidden=hidden, isolation="off", cli_path=cli, home=None)

    home = Path(settings.DOJO_HOME) / "claude" / f"run-{run_id}"
    shutil.rmtree(home, ignore_errors=True)
    config_dir = home / "config"
    config_dir.mkdir(parents=True)
    _credentials(config_dir)
    env = sandbox_env(extra={
        "CLAUDE_CONFIG_DIR": str(config_dir),
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
    })
    isolation = "bwrap" if sandbox_isolation(settings.DOJO_SANDBOX or None) == "bwrap" else "scrubbed"
    real_cli = os.path.realpath(cli)
    argv = [real_cli]
    if isolation == "bwrap":
        write = bool(settings.DOJO_CLAUDE_ALLOW_WRITE_TOOLS)
        command = sandbox_command(
            [real_cli], cwd=workspace, env=env,
            # Readable as for the trainer (opened to the sandbox user); the hidden files inside
            # it are covered again after the bind.
            readable=[] if write else [workspace],
            writable=[config_dir, *([workspace] if write else [])],
            hidden=list(hidden),
            network=True,
            # With write tools the workspace stays the user's (no hand-over to the sandbox user);
            # the CLI then keeps the caller's user but no capabilities.
            drop_user=not write,
            # The SDK's event loop thread spawns the CLI and outlives it.
            die_with_parent=True,
        )
        argv = command.argv
        if write:
            at = next(i for i, a in enumerate(argv) if os.path.basename(a) == "bwrap") + 1
            argv[at:at] = ["--cap-drop", "ALL"]
    spec = home / "exec.json"
    spec.write_text(json.dumps({"argv": argv, "keep": ENV_KEEP, "set": env}))
    wrapper = home / "claude"
    quoted = " ".join(shlex.quote(str(a)) for a in (sys.executable, EXEC_HELPER, spec))
    wrapper.write_text(f"#!/bin/sh\nexec {quoted} \"$@\"\n")
    wrapper.chmod(0o700)
    return AgentSandbox(workspace=workspace, hidden=hidden, isolation=isolation, cli_path=str(wrapper), home=home)


def agent_sandbox_cleanup(sandbox: AgentSandbox) -> None:
    if sandbox.home is not None:
        shutil.rmtree(sandbox.home, ignore_errors=True)

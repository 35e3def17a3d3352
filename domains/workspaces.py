"""The user's workspace from the outside world: git clones, per-domain environments, scan, status.

The story:
1. **Git.** A domain may come from a git URL: it is cloned into DOJO_HOME/workspaces/<name> and
   checked out at a ref (branch, tag or commit), and the resolved commit is recorded. Only
   `https://`, `ssh://`, `git@host:path` and existing local folders are accepted; `--` always
   separates options from the URL, git never prompts (GIT_TERMINAL_PROMPT=0, ssh in batch mode),
   runs with a scrubbed environment and a deadline, and may use only the https, ssh and file
   transports (GIT_ALLOW_PROTOCOL): `ext::` and friends cannot run commands. A ref that does not
   exist fails loudly and leaves nothing behind. `sync` fetches and moves to a new ref; when the
   move changes a source file the frozen contract imports, the task's fingerprint no longer
   matches and experiments refuse to run until the task is frozen again.
2. **Environments** (`env_*`): see the section below.
3. **Scan and status**: see the sections below.

Everything here is called by domains.services; nothing here touches the database.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings

from dojo_site.errors import InvalidInput

# --- Git -------------------------------------------------------------------------------------

GIT_TIMEOUT_SECONDS = 300.0
# scp-like ssh: git@host:owner/repo(.git)
_SCP_RE = re.compile(r"^git@[A-Za-z0-9._-]+:[A-Za-z0-9._~/-]+$")
_REF_RE = re.compile(r"^[A-Za-z0-9._/@+-]{1,200}$")


class GitFailed(InvalidInput):
    """git refused or failed; the message ends with the tail of its stderr."""


def git_url_check(url: str) -> str:
    """The URL (or local path) stripped; InvalidInput unless it is https://, ssh://, git@host:path or
    an existing local folder."""
    url = (url or "").strip()
    if not url:
        raise InvalidInput("a git URL is required")
    if any(c.isspace() or ord(c) < 32 for c in url) or url.startswith("-"):
        raise InvalidInput(f"invalid git URL {url!r}: no spaces or control characters, and it may not start with '-'")
    lowered = url.lower()
    if lowered.startswith(("https://", "ssh://")) and len(url) > len("https://"):
        return url
    if _SCP_RE.match(url):
        return url
    if "::" in url or "://" in url:
        # ext::, fd::, file://, http://, git://: a transport that can run commands, reads what it
        # should not, or sends the code in clear text.
        raise InvalidInput(
            f"git URL {url!r} is not accepted: use https://, ssh://, git@host:path or a local folder path"
        )
    path = Path(url).expanduser()
    if not path.is_absolute():
        raise InvalidInput(f"a local git repository must be given as an absolute path, not {url!r}")
    if not path.is_dir():
        raise InvalidInput(f"no git repository at {path}")
    return str(path.resolve())


def git_ref_check(ref: str) -> str:
    """The ref stripped ("" means the remote's default branch); InvalidInput when it cannot be a ref."""
    ref = (ref or "").strip()
    if ref and (not _REF_RE.match(ref) or ref.startswith(("-", "/")) or ".." in ref or ref.endswith((".", "/", ".lock"))):
        raise InvalidInput(f"invalid git ref {ref!r}: a branch, tag or commit name, not starting with '-'")
    return ref


def _git_env() -> dict[str, str]:
    """A scrubbed environment: no secrets of the server; no prompts; only safe transports."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/tmp"),  # the server's ~/.ssh and ~/.gitconfig (credentials)
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_ASKPASS": "/bin/false",
        "SSH_ASKPASS": "/bin/false",
        "GIT_SSH_COMMAND": "ssh -o BatchMode=yes -o ConnectTimeout=30",
        "GIT_ALLOW_PROTOCOL": "https:ssh:file",
        "GIT_CONFIG_NOSYSTEM": "1",
    }
    if os.environ.get("SSH_AUTH_SOCK"):
        env["SSH_AUTH_SOCK"] = os.environ["SSH_AUTH_SOCK"]
    return env


def _timeout() -> float:
    return float(getattr(settings, "DOJO_GIT_TIMEOUT_SECONDS", None) or GIT_TIMEOUT_SECONDS)


def git(args: list[str], *, cwd: Path | None = None, what: str, timeout: float | None = None) -> str:
    """Run git; return its stdout. GitFailed with `what` and git's last stderr lines otherwise."""
    if shutil.which("git") is None:
        raise GitFailed("git is not installed on this machine (apt-get install git)")
    try:
        proc = subprocess.run(
            ["git", "-c", "protocol.ext.allow=never", "-c", "core.hooksPath=/dev/null", *args],
            cwd=cwd, env=_git_env(), capture_output=True, text=True, timeout=timeout or _timeout(),
            stdin=subprocess.DEVNULL, start_new_session=True,
        )
    except subprocess.TimeoutExpired:
        raise GitFailed(f"{what}: git did not finish within {timeout or _timeout():g} s") from None
    if proc.returncode != 0:
        tail = " | ".join(line.strip() for line in proc.stderr.strip().splitlines()[-3:] if line.strip())
        raise GitFailed(f"{what}: {tail or f'git exited with code {proc.returncode}'}")
    return proc.stdout


def git_resolve(*, path: Path, ref: str) -> str:
    """The commit `ref` names in the clone at `path` (a remote branch first, then a tag, then a
    commit); the remote's default branch when ref is "". GitFailed when it does not exist."""
    candidates = (
        ["refs/remotes/origin/HEAD", "HEAD"] if not ref
        else [f"refs/remotes/origin/{ref}", f"refs/tags/{ref}", ref]
    )
    for name in candidates:
        try:
            return git(["rev-parse", "--verify", "--quiet", "--end-of-options", f"{name}^{{commit}}"],
                       cwd=path, what="resolve").strip()
        except GitFailed:
            continue
    raise GitFailed(f"the git ref {ref!r} does not exist in the repository (no such branch, tag or commit)")


def git_head(path: Path | str) -> str:
    """The commit checked out in `path`, read from .git without running git (cheap enough for every
    experiment); "" when it is not a git checkout or the commit cannot be read."""
    git_dir = Path(path) / ".git"
    try:
        head = (git_dir / "HEAD").read_text().strip()
    except OSError:
        return ""
    if not head.startswith("ref: "):
        return head if re.fullmatch(r"[0-9a-f]{40,64}", head) else ""
    ref = head[5:].strip()
    try:
        return (git_dir / ref).read_text().strip()
    except OSError:
        pass
    try:
        for line in (git_dir / "packed-refs").read_text().splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[1] == ref:
                return parts[0]
    except OSError:
        pass
    return ""


@dataclass
class Clone:
    path: Path
    commit: str


def clone_target(name: str) -> Path:
    return Path(settings.DOJO_HOME) / "workspaces" / name


def git_clone(*, url: str, ref: str, target: Path) -> Clone:
    """Clone `url` into `target` and check out `ref`; nothing is left behind on failure."""
    url, ref = git_url_check(url), git_ref_check(ref)
    if target.exists():
        raise InvalidInput(f"{target} already exists; remove it or choose another domain name")
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        git(["clone", "--quiet", "--no-recurse-submodules", "--", url, str(target)], what=f"git clone {url}")
        commit = git_resolve(path=target, ref=ref)
        git(["checkout", "--quiet", "--detach", commit], cwd=target, what=f"git checkout {ref or commit}")
    except BaseException:
        shutil.rmtree(target, ignore_errors=True)
        raise
    return Clone(path=target, commit=commit)


@dataclass
class Synced:
    previous: str
    commit: str
    changed_files: list[str]


def git_sync(*, path: Path, ref: str) -> Synced:
    """Fetch from origin and check out `ref` ("" = the remote's default branch) in the clone at
    `path`. GitFailed (the checkout unchanged) on any failure, local edits in the way included."""
    ref = git_ref_check(ref)
    if not (path / ".git").exists():
        raise InvalidInput(f"{path} is not a git checkout")
    previous = git(["rev-parse", "HEAD"], cwd=path, what="git rev-parse").strip()
    git(["fetch", "--quiet", "--tags", "--prune", "origin"], cwd=path, what="git fetch")
    try:
        git(["remote", "set-head", "origin", "--auto"], cwd=path, what="git remote set-head")
    except GitFailed:
        pass  # an old remote without a HEAD: a ref must then be named
    commit = git_resolve(path=path, ref=ref)
    changed = []
    if commit != previous:
        changed = git(["diff", "--name-only", "-z", previous, commit], cwd=path, what="git diff").split("\0")
        git(["checkout", "--quiet", "--detach", commit], cwd=path, what=f"git checkout {ref or commit}")
    return Synced(previous=previous, commit=commit, changed_files=[f for f in changed if f])

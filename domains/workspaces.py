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
2. **Environments.** When the workspace declares its dependencies (requirements.txt, or
   `[project].dependencies` in pyproject.toml), `env_build` makes a venv under
   DOJO_HOME/envs/<domain id>/<build>/ (a repository that already has `.venv` keeps its own),
   installs them with pip, and records `pip freeze` as the lock. The trainer and its warm pool then
   run in that interpreter; the evaluator never does. The venv sees Dojo's own site-packages *after*
   its own (a .pth file), so numpy, pandas and scikit-learn are there when the requirements do not
   name them and the user's versions win when they do (docs/decisions.md). Each build goes into a
   fresh folder: a failed build is deleted and the domain keeps its previous environment. The
   owner's optional `setup.sh` runs last, in the sandbox (network on, the workspace and the new env
   writable, DOJO_HOME and the database hidden), only when asked for.
3. **Scan and status**: see the sections below.

Everything here is called by domains.services; nothing here touches the database.
"""

from __future__ import annotations

import os
import re
import secrets
import shlex
import shutil
import subprocess
import sys
import sysconfig
import threading
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
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


# --- Environments ----------------------------------------------------------------------------

ENV_TIMEOUT_SECONDS = 1800.0
LOG_TAIL_CHARS = 8000
# Proxies and pip's own settings pass through to pip; nothing else of the server's environment does.
_PIP_ENV_PREFIXES = ("PIP_",)
_PIP_ENV_NAMES = ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy",
                  "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE")


class EnvFailed(InvalidInput):
    """The environment build failed; `log_tail` holds the end of its log."""

    def __init__(self, message: str, log_tail: str = "") -> None:
        super().__init__(message + (f"\n--- last lines of the log ---\n{log_tail}" if log_tail else ""))
        self.short = message
        self.log_tail = log_tail


@dataclass
class EnvBuilt:
    python: str
    lock: str
    log: str
    own: bool  # True: a folder Dojo made (and may delete later); False: the repository's own .venv
    notes: list[str] = field(default_factory=list)


def env_root(domain_id: int) -> Path:
    return Path(settings.DOJO_HOME) / "envs" / f"domain-{domain_id}"


def env_requirements(workspace: Path) -> dict:
    """What the workspace declares: {"requirements_txt": bool, "pyproject": [deps], "venv": path|""}."""
    out: dict = {"requirements_txt": (workspace / "requirements.txt").is_file(), "pyproject": [], "venv": ""}
    for name in (".venv", "venv"):
        python = workspace / name / "bin" / "python"
        if python.exists():
            out["venv"] = str(python)
            break
    pyproject = workspace / "pyproject.toml"
    if pyproject.is_file():
        try:
            data = tomllib.loads(pyproject.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise InvalidInput(f"cannot read {pyproject}: {exc}") from None
        deps = (data.get("project") or {}).get("dependencies") or []
        out["pyproject"] = [d for d in deps if isinstance(d, str) and d.strip()]
        out["has_pyproject"] = True
    return out


def env_timeout() -> float:
    return float(getattr(settings, "DOJO_ENV_TIMEOUT_SECONDS", None) or ENV_TIMEOUT_SECONDS)


def env_requirements_check(workspace: Path, *, run_setup_script: bool = False) -> dict:
    """env_requirements(), or InvalidInput when there is nothing to build."""
    if not workspace.is_dir():
        raise InvalidInput(f"the workspace {workspace} does not exist")
    declared = env_requirements(workspace)
    has_script = (workspace / "setup.sh").is_file()
    if run_setup_script and not has_script:
        raise InvalidInput(f"there is no setup.sh in {workspace}")
    if not (declared["venv"] or declared["requirements_txt"] or declared.get("has_pyproject") or run_setup_script):
        raise InvalidInput(
            f"nothing to set up: {workspace} has no requirements.txt, pyproject.toml or .venv "
            "(the trainer uses Dojo's own interpreter)"
        )
    return declared


def _pip_env() -> dict[str, str]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/tmp"),
           "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1",
           "PYTHONDONTWRITEBYTECODE": "1"}
    for key, value in os.environ.items():
        if key.startswith(_PIP_ENV_PREFIXES) or key in _PIP_ENV_NAMES:
            env[key] = value
    return env


def _pip_args() -> list[str]:
    """Extra pip install arguments from settings (e.g. "--no-index --find-links /srv/wheels")."""
    return shlex.split(str(getattr(settings, "DOJO_PIP_ARGS", "") or os.environ.get("DOJO_PIP_ARGS", "")))


def _dojo_site_dirs() -> list[str]:
    paths = sysconfig.get_paths()
    return list(dict.fromkeys(str(Path(paths[k]).resolve()) for k in ("purelib", "platlib")))


class _Log:
    """The build's log file; each step's output is appended as it comes."""

    def __init__(self, path: Path, on_output: Callable[[str], None] | None) -> None:
        self.path = path
        self.on_output = on_output
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("")

    def write(self, text: str) -> None:
        with open(self.path, "a", encoding="utf-8", errors="replace") as fh:
            fh.write(text)
        if self.on_output:
            self.on_output(text)

    def tail(self, size: int = LOG_TAIL_CHARS) -> str:
        return log_tail(self.path, size)

    def run(self, argv: list[str], *, what: str, cwd: Path, deadline: float) -> str:
        """Run a step, its output into the log; return its stdout+stderr. EnvFailed on failure."""
        self.write(f"$ {shlex.join(argv)}\n")
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise EnvFailed(f"{what}: the environment build ran out of time", self.tail())
        proc = subprocess.Popen(argv, cwd=cwd, env=_pip_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, text=True, errors="replace", start_new_session=True)
        # The deadline is enforced from outside: a step that hangs without output is killed too.
        timer = threading.Timer(remaining, _kill_group, args=(proc.pid,))
        timer.start()
        chunks = []
        try:
            for line in proc.stdout:
                chunks.append(line)
                self.write(line)
            proc.wait()
        except BaseException:
            _kill_group(proc.pid)
            proc.wait()
            raise
        finally:
            timer.cancel()
        if time.monotonic() >= deadline:
            raise EnvFailed(f"{what}: did not finish in time; it was stopped", self.tail())
        if proc.returncode != 0:
            raise EnvFailed(f"{what} failed (exit code {proc.returncode})", self.tail())
        return "".join(chunks)


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, 9)
    except OSError:
        pass


def log_tail(path: Path, size: int = LOG_TAIL_CHARS) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - size))
            return fh.read().decode("utf-8", errors="replace")
    except OSError:
        return ""


def env_build(*, domain_id: int, workspace: Path, run_setup_script: bool = False,
              on_output: Callable[[str], None] | None = None) -> EnvBuilt:
    """Build (or adopt) the workspace's environment; see the module's story. EnvFailed with the
    log's tail on failure, having removed whatever this build created."""
    root = env_root(domain_id)
    log = _Log(root / "build.log", on_output)
    deadline = time.monotonic() + env_timeout()
    declared = env_requirements_check(workspace, run_setup_script=run_setup_script)
    setup_script = workspace / "setup.sh"
    pip = [sys.executable, "-m", "pip"]
    if declared["venv"]:
        python = declared["venv"]
        log.write(f"Using the repository's own environment: {python}\n")
        if run_setup_script and setup_script.is_file():
            _setup_script(workspace=workspace, env_dir=Path(python).parent.parent, log=log, deadline=deadline)
        lock = log.run([*pip, "--python", python, "freeze"], what="pip freeze", cwd=workspace, deadline=deadline)
        _check_python(python, log=log, cwd=workspace, deadline=deadline)
        return EnvBuilt(python=python, lock=lock, log=log.tail(), own=False)
    folder = root / f"{time.strftime('%Y%m%dT%H%M%S')}-{secrets.token_hex(3)}"
    try:
        log.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], what="python -m venv",
                cwd=workspace, deadline=deadline)
        python = str(folder / "bin" / "python")
        site = Path(subprocess.run(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True, text=True, check=True, timeout=60,
        ).stdout.strip())
        # Dojo's packages after the venv's own: the trainer's needs are there when the requirements
        # do not name them; a src/ layout is importable like the root.
        lines = _dojo_site_dirs()
        if (workspace / "src").is_dir():
            lines.append(str(workspace / "src"))
        (site / "zz_dojo_fallback.pth").write_text("\n".join(lines) + "\n")
        install = [*pip, "--python", python, "install", "--no-input", *_pip_args()]
        if declared["requirements_txt"]:
            install += ["-r", str(workspace / "requirements.txt")]
        install += declared["pyproject"]
        if declared["requirements_txt"] or declared["pyproject"]:
            log.run(install, what="pip install", cwd=workspace, deadline=deadline)
        else:
            log.write("no dependencies declared; nothing to install\n")
        if run_setup_script and setup_script.is_file():
            _setup_script(workspace=workspace, env_dir=folder, log=log, deadline=deadline)
        lock = log.run([*pip, "--python", python, "freeze"], what="pip freeze", cwd=workspace, deadline=deadline)
        _check_python(python, log=log, cwd=workspace, deadline=deadline)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return EnvBuilt(python=python, lock=lock, log=log.tail(), own=True)


def _check_python(python: str, *, log: _Log, cwd: Path, deadline: float) -> None:
    """The trainer needs numpy at least; say so now rather than at the first experiment."""
    log.run([python, "-c", "import sys, numpy; print('python', sys.version.split()[0], 'numpy', numpy.__version__)"],
            what="checking the interpreter (it must import numpy)", cwd=cwd, deadline=deadline)


def _setup_script(*, workspace: Path, env_dir: Path, log: _Log, deadline: float) -> None:
    """The owner's setup.sh, in the sandbox: network on (it may download), the workspace and the env
    writable, DOJO_HOME and the database hidden; run as the Dojo user (no user switch: the files it
    writes in the user's repository must stay theirs)."""
    from domains.sandbox import sandbox_env, sandbox_run
    from domains.verification import _hidden_paths

    log.write("$ bash setup.sh  (in the sandbox)\n")
    home = Path(settings.DOJO_HOME)
    env = sandbox_env(extra={"VIRTUAL_ENV": str(env_dir),
                             "PATH": f"{env_dir / 'bin'}:/usr/local/bin:/usr/bin:/bin"})
    result = sandbox_run(
        ["bash", "setup.sh"], cwd=workspace, timeout=max(1.0, deadline - time.monotonic()), env=env,
        writable=[workspace, env_dir], hidden=_hidden_paths(home), network=True, drop_user=False,
        output_cap=LOG_TAIL_CHARS * 4,
    )
    log.write(result.stdout_tail + result.stderr_tail)
    if not result.ok:
        why = "timed out" if result.timed_out else f"exit code {result.returncode}"
        raise EnvFailed(f"setup.sh failed ({why})", log.tail())

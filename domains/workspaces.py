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
3. **Scan.** `workspace_scan` walks the workspace (skipping .git, virtual environments,
   node_modules, caches and DOJO_HOME) for data files (csv, tsv, parquet, json, jsonl), reads a
   bounded sample of each for its shape and column types, guesses the target and the ID columns,
   and finds public functions that look like scorers (an ast scan: nothing is imported or run).
   It only suggests: `setup_text_suggested` writes the suggestion into SETUP.md's text, and the
   person saves it (the web editor, or `dojo_domain scan --apply`).

Everything here is called by domains.services; nothing here touches the database.
"""

from __future__ import annotations

import ast
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


# --- Scan ------------------------------------------------------------------------------------

DATA_EXTENSIONS = {".csv": "csv", ".tsv": "tsv", ".parquet": "parquet", ".json": "json", ".jsonl": "jsonl"}
SKIP_DIRS = {".git", ".hg", ".svn", ".venv", "venv", "env", ".env", "node_modules", "__pycache__", ".tox",
             ".nox", ".mypy_cache", ".pytest_cache", ".ruff_cache", "site-packages", ".ipynb_checkpoints",
             "mlruns", ".dojo", "build", "dist", ".eggs"}
MAX_DATA_FILES = 30
MAX_PY_FILES = 400
MAX_WALK_ENTRIES = 50_000
SAMPLE_ROWS = 1000
SCORER_RE = re.compile(r"(score|metric|evaluat|accuracy|loss|rmse|mae|mse|auc|f1|precision|recall|r2)", re.I)
TARGET_NAMES = ("target", "label", "labels", "y", "class", "outcome", "response", "price", "churn", "churned",
                "survived", "default", "fraud", "is_fraud", "sales", "revenue", "quality")
_ID_RE = re.compile(r"(^id$|_id$|^id_|^uuid$|^key$|^index$|^row_?id$|^customer_?id$|^user_?id$)", re.I)


def _walk(root: Path, skip: set[Path]):
    """(folder, file names) under root, skipping tool/venv/VCS folders and `skip`; bounded."""
    seen = 0
    for folder, dirs, files in os.walk(root):
        here = Path(folder)
        dirs[:] = sorted(
            d for d in dirs
            if d not in SKIP_DIRS and not d.endswith(".egg-info") and (here / d) not in skip
            and not (here / d / "pyvenv.cfg").exists()
        )
        seen += len(dirs) + len(files)
        yield here, sorted(files)
        if seen > MAX_WALK_ENTRIES:
            return


def _count_lines(path: Path, limit_bytes: int = 200 * 1024 * 1024) -> int | None:
    if path.stat().st_size > limit_bytes:
        return None
    count = 0
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            count += block.count(b"\n")
    return count


def _sample(path: Path, kind: str):
    """(DataFrame sample, total rows or None). Raises on unreadable files."""
    import pandas as pd

    if kind in ("csv", "tsv"):
        frame = pd.read_csv(path, sep="\t" if kind == "tsv" else ",", nrows=SAMPLE_ROWS, low_memory=False)
        lines = _count_lines(path)
        return frame, (max(0, lines - 1) if lines is not None else None)
    if kind == "jsonl":
        frame = pd.read_json(path, lines=True, nrows=SAMPLE_ROWS)
        return frame, _count_lines(path)
    if kind == "json":
        if path.stat().st_size > 50 * 1024 * 1024:
            raise ValueError("larger than 50 MB; not sampled")
        frame = pd.read_json(path)
        return frame.head(SAMPLE_ROWS), len(frame)
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ValueError("reading parquet needs pyarrow") from None
    parquet = pq.ParquetFile(path)
    frame = next(parquet.iter_batches(batch_size=SAMPLE_ROWS)).to_pandas()
    return frame, parquet.metadata.num_rows


def _guess_target(frame) -> str:
    names = {str(c).lower(): str(c) for c in frame.columns}
    for wanted in TARGET_NAMES:
        if wanted in names:
            return names[wanted]
    return ""


def _guess_ids(frame) -> list[str]:
    out = []
    n = len(frame)
    for col in frame.columns:
        series = frame[col]
        unique = n > 1 and series.nunique(dropna=False) == n
        if _ID_RE.search(str(col)) and (unique or n <= 1):
            out.append(str(col))
        elif unique and series.dtype == object and n >= 20 and str(col).lower().endswith("id"):
            out.append(str(col))
    return out


def _task_type_guess(series) -> str:
    values = series.dropna()
    if values.empty:
        return ""
    unique = values.nunique()
    if unique == 2:
        return "binary"
    numeric = str(values.dtype).startswith(("int", "uint", "float"))
    if not numeric or (str(values.dtype).startswith(("int", "uint")) and unique <= 20):
        return "multiclass"
    return "regression"


def _scan_data_file(path: Path, root: Path, kind: str) -> dict:
    info: dict = {"path": str(path.relative_to(root)), "format": kind, "bytes": path.stat().st_size}
    try:
        frame, rows = _sample(path, kind)
    except Exception as exc:  # noqa: BLE001 - any parse failure is reported on that file only
        info["error"] = f"{type(exc).__name__}: {str(exc)[:200]}"
        return info
    target = _guess_target(frame)
    info.update(
        rows=rows,
        columns_count=int(frame.shape[1]),
        shape=[rows, int(frame.shape[1])],
        sampled_rows=int(len(frame)),
        columns=[
            {"name": str(c), "dtype": str(frame[c].dtype), "unique": int(frame[c].nunique()),
             "missing": round(float(frame[c].isna().mean()), 4) if len(frame) else 0.0}
            for c in list(frame.columns)[:200]
        ],
        target=target,
        id_columns=[c for c in _guess_ids(frame) if c != target],
        task_type=_task_type_guess(frame[target]) if target else "",
    )
    return info


def _scorers(path: Path, root: Path) -> list[dict]:
    try:
        if path.stat().st_size > 1024 * 1024:
            return []
        tree = ast.parse(path.read_text(encoding="utf-8", errors="replace"), filename=str(path))
    except (OSError, SyntaxError, ValueError):
        return []
    found = []
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and not node.name.startswith("_") \
                and SCORER_RE.search(node.name):
            args = [a.arg for a in node.args.args + node.args.kwonlyargs]
            found.append({"path": str(path.relative_to(root)), "name": node.name, "line": node.lineno, "args": args})
    return found


def workspace_scan(workspace: Path) -> dict:
    """What the workspace holds: {"path", "data_files": [...], "scorers": [...], "python_files",
    "declares": {...}, "suggestions": [...]}; see the module's story. Reads only bounded samples."""
    root = Path(workspace).resolve()
    if not root.is_dir():
        raise InvalidInput(f"the workspace {root} does not exist")
    skip = {Path(settings.DOJO_HOME).resolve()}
    data, scorers, py_files = [], [], 0
    for folder, files in _walk(root, skip):
        for name in files:
            path = folder / name
            if path.is_symlink() or not path.is_file():
                continue
            kind = DATA_EXTENSIONS.get(path.suffix.lower())
            if kind and len(data) < MAX_DATA_FILES:
                data.append(_scan_data_file(path, root, kind))
            elif path.suffix == ".py" and py_files < MAX_PY_FILES:
                py_files += 1
                scorers += _scorers(path, root)
    suggestions = []
    for item in sorted(data, key=lambda d: (not d.get("target"), "error" in d, -(d.get("rows") or 0))):
        if "error" in item or not item.get("columns"):
            continue
        suggestions.append({
            "data": item["path"], "target": item.get("target", ""), "id_columns": item.get("id_columns", []),
            "task_type": item.get("task_type", ""),
        })
    try:
        declared = env_requirements(root)
    except InvalidInput:
        declared = {"requirements_txt": (root / "requirements.txt").is_file(), "venv": "", "has_pyproject": True}
    return {"path": str(root), "data_files": data, "scorers": scorers[:100], "python_files": py_files,
            "declares": {"requirements_txt": declared["requirements_txt"], "pyproject": bool(declared.get("has_pyproject")),
                         "venv": declared["venv"], "setup_sh": (root / "setup.sh").is_file()},
            "suggestions": suggestions[:10]}


_BULLET_RE = re.compile(r"^\s*[-*]\s*(data|loader|target|id columns)\s*:", re.I)


def setup_text_suggested(text: str, *, data: str, target: str = "", id_columns: list[str] | None = None) -> str:
    """SETUP.md's text with the `## Dataset` section's data / target / id columns bullets set to the
    suggestion (other lines kept; a `- loader:` line is replaced by the data file)."""
    lines = text.splitlines()
    wanted = [f"- data: {data}"] + ([f"- target: {target}"] if target else []) + (
        [f"- id columns: {', '.join(id_columns)}"] if id_columns else [])
    start = next((i for i, ln in enumerate(lines) if ln.strip().lower().startswith("## dataset")), None)
    if start is None:
        return "\n".join([*lines, "", "## Dataset", *wanted]).strip("\n") + "\n"
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    body = [ln for ln in lines[start + 1:end] if not _BULLET_RE.match(ln)]
    # The new bullets go right after the bullets at the top of the section (task type, …).
    at = 0
    while at < len(body) and not body[at].strip():
        at += 1
    while at < len(body) and body[at].lstrip().startswith(("-", "*")):
        at += 1
    body[at:at] = wanted
    return "\n".join([*lines[:start + 1], *body, *lines[end:]]).rstrip("\n") + "\n"

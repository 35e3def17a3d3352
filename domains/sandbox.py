"""Run an untrusted command in a sandbox: bubblewrap when available, rlimits + user switch otherwise.

Used by the experiment harness (the trainer) and by tool verification (load_data / evaluate), so
it lives in `domains`, the lowest app. It imports nothing from Django or the project.

bwrap mode (DESIGN §4): `--ro-bind / /` with every `hidden` path covered by an empty tmpfs (or
/dev/null for a file), a private /tmp, /run, /var/tmp and /dev/shm, a fresh /dev and /proc, no
network, a PID namespace that dies with the sandbox (a child that calls setsid() dies with it
too), and `--new-session`. `readable` paths are re-bound read-only on top of the hidden ones,
`writable` paths read-write. When the caller is root, the command drops to an unprivileged user
(DOJO_SANDBOX_USER, default `nobody`) with setpriv, no capabilities and no_new_privs.

Fallback mode (no bwrap, or DOJO_SANDBOX=fallback): rlimits, the same user switch when root, a
new session whose whole process group is killed at the end, and `hidden` paths made unreadable to
"other". A child that calls setsid() can escape this; `ISOLATION_HINT` says how to fix that.

In both modes the limits are rlimits set by `prlimit` before exec: address space (memory_mb),
number of processes, file size, no core files.
"""

from __future__ import annotations

import functools
import os
import pwd
import selectors
import shutil
import signal
import stat
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

ISOLATION_HINT = (
    "bubblewrap (bwrap) is not available, so the sandbox falls back to rlimits, a user switch "
    "and process-group kills: isolation is weaker (no hidden paths, no network cut, a setsid() "
    "child can outlive the experiment). Install it with `apt-get install bubblewrap`."
)

# Private, empty and world-writable (sticky) inside the sandbox; the host's contents are hidden.
_PRIVATE_DIRS = ("/tmp", "/var/tmp", "/run", "/dev/shm")
# Home directories are hidden in bwrap mode; what the command needs from them (an interpreter
# under ~/.pyenv, a workspace under /home) is re-bound read-only.
_HIDDEN_HOMES = ("/root", "/home")
_MB = 1024 * 1024
_MEMORY_MARKERS = ("MemoryError", "Cannot allocate memory", "std::bad_alloc", "Unable to allocate")

PathLike = str | os.PathLike


@dataclass
class SandboxResult:
    returncode: int | None
    stdout_tail: str
    stderr_tail: str
    timed_out: bool
    seconds: float
    killed_reason: str  # "" when the command ended on its own
    isolation: str  # "bwrap" | "fallback"
    peak_memory_mb: float | None = None
    stopped: bool = False  # should_stop() returned True and the command was killed

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.killed_reason


@dataclass
class SandboxCommand:
    """A fully built command line plus the Popen keyword arguments to start it."""

    argv: list[str]
    popen_kwargs: dict = field(default_factory=dict)
    isolation: str = "bwrap"


# --- Availability ----------------------------------------------------------------------------


@functools.cache
def bwrap_works() -> bool:
    """True when a bwrap binary exists and can create the namespaces we need on this machine."""
    binary = shutil.which("bwrap")
    if not binary:
        return False
    try:
        done = subprocess.run(
            [binary, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--unshare-pid",
             "--unshare-net", "--die-with-parent", "--", "true"],
            capture_output=True, timeout=20, check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0


def sandbox_isolation(requested: str | None = None) -> str:
    """The isolation a run will get: "bwrap" or "fallback".

    `requested` (or env DOJO_SANDBOX) may be "auto" (default), "bwrap" or "fallback"; asking for
    bwrap on a machine without it falls back rather than failing."""
    mode = (requested or os.environ.get("DOJO_SANDBOX") or "auto").lower()
    if mode == "fallback":
        return "fallback"
    return "bwrap" if bwrap_works() else "fallback"


def sandbox_user() -> tuple[int, int] | None:
    """(uid, gid) to drop to, or None when we are not root (already unprivileged)."""
    if os.geteuid() != 0:
        return None
    name = os.environ.get("DOJO_SANDBOX_USER", "nobody")
    entry = pwd.getpwnam(name)
    return entry.pw_uid, entry.pw_gid


def sandbox_env(*, threads: int = 1, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """A scrubbed environment: nothing from the server's environment except what is listed here."""
    threads = max(1, int(threads))
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": "/tmp",
        "TMPDIR": "/tmp",
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONUNBUFFERED": "1",
        "MPLBACKEND": "Agg",
        "MPLCONFIGDIR": "/tmp/matplotlib",
        # Thread pools sized from the configured CPU share, so parallel experiments don't
        # oversubscribe the machine.
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
        "OPENBLAS_NUM_THREADS": str(threads),
        "NUMEXPR_NUM_THREADS": str(threads),
        "VECLIB_MAXIMUM_THREADS": str(threads),
        "LOKY_MAX_CPU_COUNT": str(threads),
    }
    env.update(extra or {})
    return env


# --- Building the command --------------------------------------------------------------------


def _existing(paths: Iterable[PathLike]) -> list[Path]:
    out = []
    for p in paths:
        path = Path(p).absolute()
        if path.exists():
            out.append(path)
    return out


def _is_under(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def _add_mode(path: Path, bits: int) -> None:
    try:
        mode = path.stat().st_mode
        if mode & bits != bits:
            os.chmod(path, stat.S_IMODE(mode) | bits)
    except OSError:
        pass


def _grant_traverse(path: Path, stop_at: Iterable[Path] = ()) -> None:
    """Give "other" execute (traverse, not list) on each real ancestor, so the dropped user can
    reach `path`. Ancestors under a `stop_at` root are synthesized by bwrap and skipped."""
    stops = list(stop_at)
    for anc in reversed(path.parents):
        if any(_is_under(anc, s) and anc != s for s in stops):
            break
        _add_mode(anc, stat.S_IXOTH)


_granted: set[Path] = set()  # readable trees already opened to "other" in this process


def _grant_read_tree(path: Path) -> None:
    if path.is_dir():
        _add_mode(path, stat.S_IROTH | stat.S_IXOTH)
        for root, dirs, files in os.walk(path):
            for d in dirs:
                _add_mode(Path(root, d), stat.S_IROTH | stat.S_IXOTH)
            for f in files:
                _add_mode(Path(root, f), stat.S_IROTH)
    else:
        _add_mode(path, stat.S_IROTH)


def _give_to(path: Path, uid: int, gid: int) -> None:
    try:
        os.chown(path, uid, gid)
        if path.is_dir():
            for root, dirs, files in os.walk(path):
                for name in dirs + files:
                    os.lchown(os.path.join(root, name), uid, gid)
    except OSError:
        pass


def _program_dirs(program: str) -> list[Path]:
    """The install prefixes argv[0] needs readable: its own (a venv's) and its real target's."""
    found = shutil.which(program) or program
    path = Path(found).absolute()
    if not path.exists():
        return []
    return list({path.parent.parent, path.resolve().parent.parent})


def _rlimit_prefix(*, memory_mb: int | None, max_processes: int | None,
                   max_file_mb: int | None) -> list[str]:
    binary = shutil.which("prlimit")
    if not binary:
        return []
    args = [binary, "--core=0"]
    if memory_mb:
        args.append(f"--as={int(memory_mb) * _MB}")
    if max_processes:
        args.append(f"--nproc={int(max_processes)}")
    if max_file_mb:
        args.append(f"--fsize={int(max_file_mb) * _MB}")
    return [*args, "--"]


def sandbox_command(
    argv: list[str],
    *,
    cwd: PathLike,
    env: Mapping[str, str],
    readable: Iterable[PathLike] = (),
    writable: Iterable[PathLike] = (),
    hidden: Iterable[PathLike] = (),
    memory_mb: int | None = None,
    network: bool = False,
    max_processes: int | None = None,
    max_file_mb: int | None = None,
    isolation: str | None = None,
    drop_user: bool = True,
    die_with_parent: bool = True,
    info_fd: int | None = None,
    give_writable: bool = True,
) -> SandboxCommand:
    """Build the sandboxed command line (used by sandbox_run and by long-lived warm processes).
    With bwrap and `info_fd`, bwrap writes {"child-pid": …} there: the host pid of the sandbox's
    PID-namespace init, whose death kills everything in the sandbox. `give_writable=False` keeps
    the writable folders ours (the sandbox user writes only in sub-folders given to it)."""
    mode = sandbox_isolation(isolation)
    cwd_path = Path(cwd).absolute()
    readable_paths = _existing(readable)
    program_paths = _program_dirs(argv[0]) if argv else []
    writable_paths = _existing(writable)
    hidden_paths = _existing(hidden)
    drop = sandbox_user() if drop_user else None
    prefix = _rlimit_prefix(memory_mb=memory_mb, max_processes=max_processes, max_file_mb=max_file_mb)

    if drop:
        uid, gid = drop
        for w in writable_paths if give_writable else ():
            _give_to(w, uid, gid)
        for r in readable_paths:
            if r not in _granted:
                _grant_read_tree(r)
                _granted.add(r)
        _add_mode(cwd_path, stat.S_IROTH | stat.S_IXOTH)

    if mode == "fallback":
        if drop:
            bound = [*readable_paths, *writable_paths, cwd_path]
            for p in [*bound, *program_paths]:
                _grant_traverse(p)
            for h in hidden_paths:
                # Closed to "other"; traverse-only when a bound path lives under it.
                needed = h.is_dir() and any(_is_under(p, h) and p != h for p in bound)
                os.chmod(h, (stat.S_IMODE(h.stat().st_mode) & ~0o007) | (stat.S_IXOTH if needed else 0))
        kwargs: dict = {"cwd": str(cwd_path), "env": dict(env), "start_new_session": True}
        if drop:
            kwargs.update(user=drop[0], group=drop[1], extra_groups=[])
        return SandboxCommand(argv=[*prefix, *argv], popen_kwargs=kwargs, isolation="fallback")

    private = [Path(p) for p in _PRIVATE_DIRS]
    homes = [Path(p) for p in _HIDDEN_HOMES if Path(p).is_dir()]
    hidden_roots = [*private, *homes, *(h for h in hidden_paths if h.is_dir())]
    bw = [shutil.which("bwrap") or "bwrap", "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc",
          "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--new-session"]
    if die_with_parent:
        # Tied to the spawning *thread*; long-lived processes started from short-lived threads
        # pass die_with_parent=False and exit when their stdin closes instead.
        bw.append("--die-with-parent")
    if not network:
        bw.append("--unshare-net")
    if info_fd is not None:
        bw += ["--info-fd", str(info_fd)]
    for p in private:
        if p.exists():
            bw += ["--perms", "1777", "--tmpfs", str(p)]
    for p in homes:
        bw += ["--perms", "0755", "--tmpfs", str(p)]
    for h in hidden_paths:
        if any(_is_under(h, p) for p in [*private, *homes]):
            continue
        if h.is_dir():
            bw += ["--tmpfs", str(h)]
        else:
            bw += ["--ro-bind", "/dev/null", str(h)]

    binds: list[tuple[str, Path]] = []
    if cwd_path.exists() and not any(_is_under(cwd_path, w) for w in writable_paths):
        binds.append(("--ro-bind", cwd_path))
    binds += [("--ro-bind", r) for r in [*program_paths, *readable_paths]]
    binds += [("--bind", w) for w in writable_paths]
    made: set[Path] = set()
    for flag, path in binds:
        # Intermediate directories inside a hidden tmpfs are created by bwrap; make them
        # traversable so the dropped user can reach the bound path.
        for anc in reversed(path.parents):
            if anc in made:
                continue
            if any(_is_under(anc, h) and anc != h for h in hidden_roots):
                bw += ["--perms", "0755", "--dir", str(anc)]
                made.add(anc)
        if drop:
            _grant_traverse(path, stop_at=hidden_roots)
        bw += [flag, str(path), str(path)]
    # A hidden path inside a bound folder (the raw data file inside the workspace, say) would be
    # exposed again by that bind: cover it once more, after the binds.
    for h in hidden_paths:
        if any(_is_under(h, path) and h != path for _, path in binds):
            bw += ["--tmpfs", str(h)] if h.is_dir() else ["--ro-bind", "/dev/null", str(h)]
    bw += ["--chdir", str(cwd_path)]

    if drop:
        uid, gid = drop
        bw += ["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID", "--cap-add", "CAP_SETPCAP", "--",
               shutil.which("setpriv") or "setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups",
               "--inh-caps=-all", "--bounding-set=-all", "--"]
    elif os.geteuid() == 0:
        # Root keeps every capability inside bwrap unless told otherwise; trusted-but-user-written
        # code (the frozen evaluate) must not be able to unmount the tmpfs that hides DOJO_HOME.
        bw += ["--cap-drop", "ALL", "--"]
    else:
        bw.append("--")
    kwargs = {"cwd": "/", "env": dict(env), "start_new_session": True}
    if info_fd is not None:
        kwargs["pass_fds"] = (info_fd,)
    return SandboxCommand(argv=[*prefix, *bw, *argv], popen_kwargs=kwargs, isolation="bwrap")


# --- Running ---------------------------------------------------------------------------------


class _Tail:
    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.buf = bytearray()
        self.dropped = 0

    def add(self, chunk: bytes) -> None:
        self.buf += chunk
        if len(self.buf) > 2 * self.cap:
            cut = len(self.buf) - self.cap
            self.dropped += cut
            del self.buf[:cut]

    def text(self) -> str:
        data = bytes(self.buf[-self.cap:]) if self.cap else b""
        dropped = self.dropped + max(0, len(self.buf) - self.cap)
        out = data.decode("utf-8", errors="replace")
        return f"[… {dropped} bytes cut …]\n{out}" if dropped else out


def kill_group(pid: int) -> None:
    """SIGKILL a whole process group (the sandbox was started in its own session)."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _signal_name(num: int) -> str:
    try:
        return signal.Signals(num).name
    except ValueError:
        return str(num)


def sandbox_run(
    argv: list[str],
    *,
    cwd: PathLike,
    timeout: float,
    env: Mapping[str, str],
    readable: Iterable[PathLike] = (),
    writable: Iterable[PathLike] = (),
    hidden: Iterable[PathLike] = (),
    output_cap: int = 65536,
    memory_mb: int | None = None,
    network: bool = False,
    max_processes: int | None = 512,
    max_file_mb: int | None = None,
    should_stop: Callable[[], bool] | None = None,
    isolation: str | None = None,
    drop_user: bool = True,
) -> SandboxResult:
    """Run argv to completion in the sandbox; never raises for anything the command does.

    stdout/stderr are kept as tails of `output_cap` bytes each. On the wall-clock limit or when
    `should_stop()` turns True the sandbox's whole process group is killed (and with bwrap its
    PID namespace, so nothing it started survives). `drop_user=False` keeps the caller's user
    (for trusted code such as the evaluator, which must read files the trainer may not)."""
    cmd = sandbox_command(
        argv, cwd=cwd, env=env, readable=readable, writable=writable, hidden=hidden,
        memory_mb=memory_mb, network=network, max_processes=max_processes,
        max_file_mb=max_file_mb, isolation=isolation, drop_user=drop_user,
    )
    start = time.monotonic()
    try:
        proc = subprocess.Popen(
            cmd.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            close_fds=True, **cmd.popen_kwargs,
        )
    except OSError as exc:
        return SandboxResult(
            returncode=None, stdout_tail="", stderr_tail=str(exc), timed_out=False,
            seconds=time.monotonic() - start, killed_reason=f"could not start: {exc}",
            isolation=cmd.isolation,
        )
    tails = {proc.stdout.fileno(): _Tail(output_cap), proc.stderr.fileno(): _Tail(output_cap)}
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    sel.register(proc.stderr, selectors.EVENT_READ)
    deadline = start + timeout
    timed_out = stopped = False
    status: int | None = None
    rusage = None
    drain_until = 0.0
    try:
        while True:
            now = time.monotonic()
            if status is None:
                if now >= deadline and not timed_out:
                    timed_out = True
                    kill_group(proc.pid)
                elif should_stop is not None and not stopped and should_stop():
                    stopped = True
                    kill_group(proc.pid)
                pid, st, ru = os.wait4(proc.pid, os.WNOHANG)
                if pid:
                    status, rusage = st, ru
                    # Leftovers in the group (fallback mode) die with the main process; they
                    # may hold our pipes open, so drain only briefly after this.
                    kill_group(proc.pid)
                    drain_until = now + 0.5
            if status is not None and (not sel.get_map() or now > drain_until):
                break
            if sel.get_map():
                for key, _ in sel.select(timeout=0.02):
                    chunk = os.read(key.fd, 65536)
                    if chunk:
                        tails[key.fd].add(chunk)
                    else:
                        sel.unregister(key.fileobj)
            else:
                time.sleep(0.002)
    finally:
        sel.close()
        proc.stdout.close()
        proc.stderr.close()
        if status is None:
            kill_group(proc.pid)
            _, status, rusage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)  # keep Popen from waiting again
    seconds = time.monotonic() - start
    out_tail = tails[list(tails)[0]].text()
    err_tail = tails[list(tails)[1]].text()
    returncode = proc.returncode
    reason = ""
    if timed_out:
        reason = f"wall-clock limit ({timeout:g} s) exceeded; the sandbox's processes were killed"
    elif stopped:
        reason = "stopped"
    elif memory_mb and any(m in err_tail for m in _MEMORY_MARKERS):
        reason = f"memory limit ({memory_mb} MB) exceeded"
    elif returncode is not None and returncode < 0:
        sig = -returncode
        if sig == signal.SIGXFSZ:
            reason = f"file size limit ({max_file_mb} MB) exceeded"
        elif sig == signal.SIGKILL and memory_mb:
            reason = f"killed by SIGKILL (possibly the memory limit, {memory_mb} MB)"
        else:
            reason = f"killed by signal {_signal_name(sig)}"
    peak = rusage.ru_maxrss / 1024 if rusage is not None else None
    return SandboxResult(
        returncode=returncode, stdout_tail=out_tail, stderr_tail=err_tail, timed_out=timed_out,
        seconds=seconds, killed_reason=reason, isolation=cmd.isolation, peak_memory_mb=peak,
        stopped=stopped,
    )

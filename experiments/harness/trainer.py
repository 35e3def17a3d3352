"""The trainer: runs the agent's train() inside the sandbox. Untrusted code runs here.

It imports nothing from Django or the project (it runs in the workspace's interpreter) and sees
only the public snapshot (X_train, y_train, X_test): the labels it must not read are not in this
process, nor reachable from the sandbox.

    trainer.py serve --public DIR --work DIR [--idle SECONDS]   # the warm pool process
    trainer.py once  --public DIR --work DIR --job JSON          # the cold fallback, one job

`serve` imports the heavy libraries and loads the snapshot once, says {"ready": ...} on stdout,
then reads one JSON job per line on stdin and answers one JSON line per job. Each job runs in a
forked child (its own session, rlimits, stdout/stderr to files) so nothing it does touches the
warm parent; when it ends, every other process in the sandbox is killed (this process is a
child subreaper, so even a setsid() grandchild is found). A job line looks like
{"id", "code", "timeout", "memory_mb", "max_processes", "max_file_mb", "seed"}; the answer is
{"id", "status": "exited"|"timeout"|"stopped", "returncode", "signal", "seconds",
"peak_memory_mb", "meta", "payload_bytes"}, followed by `payload_bytes` raw bytes: y_pred in .npy
format. The child hands y_pred and meta (train seconds, peak memory) to this process through a
pipe; once they are in, everything in the sandbox is SIGKILLed and the answer goes out at once —
the scored predictions are already out of the sandbox's reach, so the few milliseconds the kernel
takes to tear the child down are spent after the answer, before the next job. error.json,
stdout.txt, stderr.txt and artifacts/ stay in <work>/<id>/. A {"stop": id} line kills the
running job. In `once` mode y_pred.npy and meta.json are written to the job folder instead.
"""

import ctypes
import io
import json
import os
import pickle
import resource
import select
import signal
import stat
import struct
import sys
import time
import traceback
from pathlib import Path

PR_SET_DUMPABLE = 4
PR_SET_CHILD_SUBREAPER = 36
PR_SET_THP_DISABLE = 41
MB = 1024 * 1024

# Imported once by the warm process so a fork starts with them loaded. Missing ones are skipped
# (a workspace interpreter may not have them).
PRELOAD = (
    "numpy", "pandas", "scipy", "sklearn", "sklearn.base", "sklearn.linear_model",
    "sklearn.ensemble", "sklearn.preprocessing", "sklearn.pipeline", "sklearn.model_selection",
    "sklearn.metrics", "sklearn.impute", "sklearn.compose", "sklearn.tree", "sklearn.neighbors",
    "sklearn.svm", "sklearn.dummy",
)
VERSION_OF = ("numpy", "pandas", "scikit-learn", "scipy", "lightgbm", "xgboost", "torch")


def _prctl(option: int, value: int) -> None:
    try:
        ctypes.CDLL(None, use_errno=True).prctl(option, value, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def _versions() -> dict:
    from importlib import metadata

    out = {"python": sys.version.split()[0]}
    for name in VERSION_OF:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def _preload(names) -> None:
    import importlib

    for name in names:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - a missing optional library only costs speed
            pass


def _load_public(public: Path) -> tuple:
    out = []
    for name in ("X_train", "y_train", "X_test"):
        with open(public / f"{name}.pkl", "rb") as fh:
            out.append(pickle.load(fh))
    return tuple(out)


def _warm_up(data: tuple, *, rows: int) -> None:
    """Run, on a few rows, the library paths nearly every train() takes (validation, fit, predict,
    the .npy hand-over), so what they do on first use happens here rather than inside train().

    Done once in the warm process: it pays for the lazy imports and set-up that scikit-learn,
    pandas and narwhals do on first use (≈60 ms that every forked child used to pay inside
    train()). Not repeated in the standby child: pre-faulting its copy-on-write pages there
    (≈2,000 faults) races the next job in a back-to-back loop and made experiments slower.
    Trusted code on data this process already holds; a failure only costs speed."""
    try:
        import numpy as np
        from sklearn.linear_model import LinearRegression
    except Exception:  # noqa: BLE001 - a workspace interpreter without them
        return
    X_train, y_train, X_test = data

    def head(obj, n):
        return obj.iloc[:n] if hasattr(obj, "iloc") else obj[:n]

    for fit in (
        lambda: LinearRegression().fit(head(X_train, rows), head(y_train, rows)).predict(head(X_test, rows)),
        lambda: LinearRegression().fit(np.asarray(head(X_train, rows), dtype=float),
                                       np.asarray(head(y_train, rows), dtype=float)),
    ):
        try:
            fit()
        except Exception:  # noqa: BLE001 - non-numeric columns, labels as text, …
            pass
    try:
        np.save(io.BytesIO(), np.zeros(rows), allow_pickle=False)
        json.dumps({"train_seconds": 0.0})
        resource.getrusage(resource.RUSAGE_SELF)
    except Exception:  # noqa: BLE001
        pass


def _warm_up_process(data: tuple) -> None:
    """The warm process's one-time warm-up: also on a plain numeric frame, in case the real
    columns are not numeric."""
    _warm_up(data, rows=64)
    try:
        import numpy as np
        import pandas as pd

        rng = np.random.default_rng(0)
        frame = pd.DataFrame(rng.normal(size=(32, 3)), columns=["a", "b", "c"])
        target = pd.Series(rng.normal(size=32))
        _warm_up((frame, target, frame), rows=32)
    except Exception:  # noqa: BLE001
        pass


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


# --- The audit trail: what train() did, for a reviewer ---------------------------------------
# An audit hook (sys.addaudithook) installed in the forked child just before the train code runs
# records the events a reviewer needs: files opened outside the public snapshot, the job folder,
# the Python installation and the private temp folders ("open"), bundled datasets imported or
# read ("dataset_loader"), subprocesses, sockets, ctypes and /proc. Each new event (deduplicated,
# at most AUDIT_MAX_EVENTS, then one "truncated") is written at once, as a JSON line, to a pipe
# (fd AUDIT_FD) whose read end only the warm parent holds, so a train() cannot take back what it
# already did. When train() returns, the child writes an end marker carrying a per-job nonce; a
# completed job whose marker is missing gets a "tampered" event (the pipe was closed or replaced).
# Observational only: a hostile train() that finds the nonce in memory, or works through C code,
# can hide from it (docs/decisions.md).
AUDIT_FD = 4
AUDIT_MAX_EVENTS = 200
AUDIT_DETAIL_MAX = 200
AUDIT_PIPE_MAX = 256 * 1024
AUDIT_KINDS = ("open", "dataset_loader", "subprocess", "socket", "ctypes", "proc", "truncated", "tampered")
# Mirrors domains.audit.DATASET_MODULES (this file imports nothing from the project; a test
# checks the two agree).
DATASET_MODULES = (
    "sklearn.datasets", "seaborn.load_dataset", "seaborn.get_dataset_names", "openml",
    "tensorflow_datasets", "torchvision.datasets", "torchtext.datasets", "keras.datasets",
    "tensorflow.keras.datasets", "datasets", "statsmodels.datasets", "pmlb", "vega_datasets", "pydataset",
    "ucimlrepo", "kaggle", "kagglehub", "plotly.data", "bokeh.sampledata", "pandas_datareader", "yellowbrick.datasets",
    "mlxtend.data", "imblearn.datasets", "lightgbm.datasets", "catboost.datasets", "shap.datasets",
)
BUNDLED_DATA_PARTS = ("/sklearn/datasets/data", "/sklearn/datasets/descr", "/plotly/package_data/datasets",
                      "/vega_datasets/_data", "/pydataset/resources")
# What libraries read about their own process; anything else under /proc is recorded.
_PROC_QUIET = ("/proc/self/stat", "/proc/self/statm", "/proc/self/status", "/proc/self/cgroup",
               "/proc/self/mountinfo", "/proc/self/maps", "/proc/self/limits", "/proc/meminfo", "/proc/cpuinfo",
               "/proc/stat")
_SUBPROCESS_EVENTS = frozenset({"subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.spawn",
                                "os.fork", "os.forkpty", "pty.spawn"})
_SOCKET_EVENTS = frozenset({"socket.connect", "socket.bind", "socket.getaddrinfo", "socket.gethostbyname",
                            "socket.gethostbyaddr", "socket.sendto", "socket.sendmsg"})
_CTYPES_EVENTS = frozenset({"ctypes.dlopen", "ctypes.dlsym", "ctypes.dlsym/handle", "ctypes.call_function",
                            "ctypes.cdata", "ctypes.cdata/buffer", "ctypes.string_at", "ctypes.wstring_at"})
_WATCHED = frozenset({"open", "import", "os.listdir", "os.scandir"}) | _SUBPROCESS_EVENTS | _SOCKET_EVENTS | _CTYPES_EVENTS

_audit_w: int | None = None  # in a forked child: the write end of its audit pipe
_audit_readers: dict[int, int] = {}  # in the warm parent: child pid → read end of its audit pipe
_audit_quiet_dirs: tuple[str, ...] = ()  # set by main(): the public snapshot folder
_audit_quiet: tuple[str, ...] | None = None  # computed once in the warm process (audit_prefixes)
_audit_finish = None  # in the child, once the hook is installed: stops recording, writes the end marker


def audit_prefixes() -> tuple[str, ...]:
    """Folders whose files are not worth an event: the public snapshot, the Python installation
    (every import reads it) and the sandbox's private temp folders. Computed once, in the warm
    process, so a child's hook costs nothing to set up."""
    import sysconfig

    dirs = {*_audit_quiet_dirs, sys.prefix, sys.base_prefix, sys.exec_prefix,
            "/tmp", "/var/tmp", "/dev", "/usr/share", "/usr/lib", "/sys"}
    dirs.update(v for k, v in sysconfig.get_paths().items() if k in ("stdlib", "platstdlib", "purelib", "platlib"))
    cwd = os.getcwd()
    dirs.update(p for p in sys.path if p and p != cwd and os.path.isabs(p) and not cwd.startswith(p.rstrip("/") + "/"))
    return tuple(sorted({d.rstrip("/") + "/" for d in dirs if d}))


def audit_hook_install(*, fd: int, nonce: str, job_dir: Path):
    """Install the audit hook in this (forked) child; return finish(), which stops recording and
    writes the end marker. Costs a dict lookup per audit event the interpreter raises."""
    quiet = _audit_quiet if _audit_quiet is not None else audit_prefixes()
    own = tuple(d.rstrip("/") + "/" for d in (str(job_dir), *_audit_quiet_dirs))
    cwd = os.getcwd() + "/"
    seen: set = set()
    state = {"on": True, "count": 0}
    write, fspath, dumps = os.write, os.fspath, json.dumps  # bound now: train() may patch the modules

    def emit(kind: str, detail: str) -> None:
        if (kind, detail) in seen or state["count"] > AUDIT_MAX_EVENTS:
            return
        seen.add((kind, detail))
        if state["count"] == AUDIT_MAX_EVENTS:
            kind, detail = "truncated", f"more than {AUDIT_MAX_EVENTS} distinct events; the rest are not recorded"
        state["count"] += 1
        try:
            write(fd, (dumps({"kind": kind, "detail": detail[:AUDIT_DETAIL_MAX]}) + "\n").encode())
        except OSError:
            pass

    def path_kind(path: str) -> str | None:
        if path.startswith("/proc"):
            return None if path.startswith(_PROC_QUIET) else "proc"
        if any(part in path for part in BUNDLED_DATA_PARTS):
            return "dataset_loader"
        if path.startswith(own):  # the job's folder, the public snapshot
            return None
        if path.startswith(cwd):  # the workspace (which may sit under a quiet folder such as /tmp)
            return None if path.endswith(".py") else "open"  # its own modules are imports
        return None if path.startswith(quiet) else "open"  # the installation, the snapshot, the job

    def hook(event: str, args: tuple) -> None:
        if event not in _WATCHED or not state["on"]:
            return
        try:
            if event == "open" or event == "os.listdir" or event == "os.scandir":
                path = args[0] if args else None
                if path is None or isinstance(path, int):
                    return
                path = fspath(path)
                if isinstance(path, bytes):
                    path = path.decode(errors="replace")
                if not path.startswith("/"):
                    path = cwd + path
                kind = path_kind(path)
                if kind is not None and (event == "open" or kind != "open"):
                    emit(kind, path if event == "open" else f"{event} {path}")
            elif event == "import":
                name = str(args[0])
                if any(name == m or name.startswith(m + ".") for m in DATASET_MODULES):
                    emit("dataset_loader", f"import {name}")
            elif event in _SUBPROCESS_EVENTS:
                emit("subprocess", f"{event} {args[1] if event == 'subprocess.Popen' else args!r}"[:AUDIT_DETAIL_MAX])
            elif event in _SOCKET_EVENTS:
                emit("socket", f"{event} {args[1:] if event in ('socket.connect', 'socket.bind', 'socket.sendto') else args!r}"[:AUDIT_DETAIL_MAX])
            else:
                emit("ctypes", event if event == "ctypes.call_function" else f"{event} {args[:2]!r}"[:AUDIT_DETAIL_MAX])
        except Exception:  # noqa: BLE001 - the hook must never break train()
            pass

    def finish() -> None:
        if state["on"]:
            state["on"] = False
            try:
                write(fd, (dumps({"end": nonce}) + "\n").encode())
            except OSError:
                pass

    sys.addaudithook(hook)
    return finish


def _audit_start(job: dict, job_dir: Path) -> None:
    global _audit_finish
    nonce = job.pop("audit_nonce", None)
    if _audit_w is not None and nonce:
        _audit_finish = audit_hook_install(fd=AUDIT_FD, nonce=str(nonce), job_dir=job_dir)


def _audit_end() -> None:
    if _audit_finish is not None:
        _audit_finish()


def audit_events_collect(fd: int | None, nonce: str, *, completed: bool) -> list[dict]:
    """The events the child wrote (parent side; call once the child has ended). `completed`: the
    child handed over its result, so the end marker must be there."""
    if fd is None:
        return []
    data = bytearray()
    try:
        os.set_blocking(fd, False)
        while len(data) < AUDIT_PIPE_MAX:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            data += chunk
    except OSError:  # BlockingIOError: a process the sweep has not reached yet holds the write end
        pass
    finally:
        os.close(fd)
    events, ended = [], False
    for line in bytes(data[:AUDIT_PIPE_MAX]).splitlines()[: AUDIT_MAX_EVENTS + 4]:
        try:
            item = json.loads(line)
        except ValueError:
            continue
        if not isinstance(item, dict):
            continue
        if item.get("end") == nonce:
            ended = True
        elif item.get("kind") in AUDIT_KINDS and isinstance(item.get("detail"), str):
            events.append({"kind": item["kind"], "detail": item["detail"][:AUDIT_DETAIL_MAX]})
    if completed and not ended:
        events.append({"kind": "tampered", "detail": "the audit pipe was closed, replaced or flooded before train() "
                       "returned: events may be missing"})
    return events[: AUDIT_MAX_EVENTS + 2]


# --- The child: runs one train() -------------------------------------------------------------


def _child(job: dict, job_dir: Path, data: tuple, result_fd: int) -> None:
    """Never returns: ends with os._exit."""
    code = 1
    try:
        os.setsid()
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        out = os.open(job_dir / "stdout.txt", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        err = os.open(job_dir / "stderr.txt", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(out, 1)
        os.dup2(err, 2)
        os.dup2(result_fd, 3)
        if _audit_w is not None:
            os.dup2(_audit_w, AUDIT_FD)
            os.set_blocking(AUDIT_FD, False)  # a full pipe drops events rather than hanging train()
        # The control pipes included: the child cannot talk to the harness.
        os.closerange(AUDIT_FD + 1 if _audit_w is not None else 4, 1024)
        sys.stdin = open(0, closefd=False)
        sys.stdout = open(1, "w", buffering=1, closefd=False)
        sys.stderr = open(2, "w", buffering=1, closefd=False)
        _limits(job)
        code = _train(job, job_dir, data, 3)
    except BaseException:  # noqa: BLE001 - the child must always end with os._exit
        try:
            traceback.print_exc()
        except BaseException:  # noqa: BLE001
            pass
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except BaseException:  # noqa: BLE001
            pass
        os._exit(code)


def _limits(job: dict) -> None:
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if job.get("memory_mb"):
        # The limit is on address space *added* by this experiment: the forked child already maps
        # the warm process's libraries and data, which do not count against the experiment.
        current = _vm_size()
        limit = current + int(job["memory_mb"]) * MB
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    if job.get("max_processes"):
        n = int(job["max_processes"])
        resource.setrlimit(resource.RLIMIT_NPROC, (n, n))
    if job.get("max_file_mb"):
        size = int(job["max_file_mb"]) * MB
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))


def _vm_size() -> int:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


def _workspace_importable(job_dir: Path) -> None:
    """Put the workspace (our working directory) first on sys.path, as `python train.py` run from
    the repository root would, so train() can import the user's own modules.

    Only this forked child imports them; the warm parent never does, so an edit to a module is
    seen by the next experiment. Bytecode is neither read nor written: a __pycache__ left in the
    workspace may be older than its source within the same second (pyc checks mtime in seconds)."""
    sys.dont_write_bytecode = True
    sys.pycache_prefix = str(job_dir / ".pycache")
    workspace = os.getcwd()
    if workspace not in sys.path:
        sys.path.insert(0, workspace)


def _train(job: dict, job_dir: Path, data: tuple, result_fd: int) -> int:
    import random

    seed = job.get("seed")
    if seed is not None:
        os.environ["DOJO_SEED"] = str(seed)
        random.seed(seed)
        try:
            import numpy as np

            np.random.seed(seed % (2**32))
        except ImportError:
            pass
    artifacts = job_dir / "artifacts"
    os.environ["DOJO_ARTIFACTS_DIR"] = str(artifacts)
    if not _is_sandbox_ns():
        # No private /tmp without a namespace: scratch and caches go in the job's own folder,
        # which is discarded with it.
        import tempfile

        for name, sub in (("HOME", "home"), ("TMPDIR", "tmp"), ("MPLCONFIGDIR", "home/.matplotlib"),
                          ("XDG_CACHE_HOME", "home/.cache")):
            folder = job_dir / "scratch" / sub
            folder.mkdir(parents=True, exist_ok=True)
            os.environ[name] = str(folder)
        tempfile.tempdir = None
    X_train, y_train, X_test = data
    _workspace_importable(job_dir)
    _audit_start(job, job_dir)
    started = time.perf_counter()
    try:
        source = (job_dir / "train.py").read_text()
        module = {"__name__": "train", "__file__": str(job_dir / "train.py"), "__builtins__": __builtins__}
        exec(compile(source, "train.py", "exec"), module)
        train = module.get("train")
        if not callable(train):
            return _fail(job_dir, "NoTrain", "the code defines no train(X_train, y_train, X_test, *, artifacts_dir) function")
        t0 = time.perf_counter()
        y_pred = train(X_train, y_train, X_test, artifacts_dir=artifacts)
        train_seconds = time.perf_counter() - t0
        _audit_end()
    except MemoryError as exc:
        traceback.print_exc()
        return _fail(job_dir, "MemoryError", f"memory limit ({job.get('memory_mb')} MB) exceeded: {exc}")
    except SyntaxError as exc:
        traceback.print_exc()
        return _fail(job_dir, "SyntaxError", f"train code does not compile: {exc.msg} (line {exc.lineno})")
    except BaseException as exc:  # noqa: BLE001 - SystemExit from train() is a failure too
        traceback.print_exc()
        where = _train_frame(exc)
        return _fail(job_dir, type(exc).__name__, f"{type(exc).__name__}: {exc}{where}")
    import numpy as np

    if y_pred is None:
        return _fail(job_dir, "NoPredictions", "train() returned None; it must return y_pred")
    try:
        array = np.asarray(y_pred)
        if array.dtype == object:
            array = array.astype(np.float64)
        if not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
            raise TypeError(f"dtype {array.dtype}")
    except (TypeError, ValueError) as exc:
        return _fail(job_dir, "BadPredictions", f"y_pred could not be read as an array of numbers ({exc})")
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    usage = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
    meta = json.dumps({"train_seconds": train_seconds, "load_seconds": t0 - started, "peak_memory_mb": usage / 1024}).encode()
    body = buffer.getbuffer()
    _write_all(result_fd, struct.pack("<QQ", len(meta), len(body)) + meta + bytes(body))
    return 0


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _train_frame(exc: BaseException) -> str:
    tb = exc.__traceback__
    line = None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == "train.py":
            line = tb.tb_lineno
        tb = tb.tb_next
    return f" (train.py line {line})" if line else ""


def _fail(job_dir: Path, kind: str, message: str) -> int:
    _audit_end()
    _write_json(job_dir / "error.json", {"type": kind, "message": message[:2000]})
    return 1


# --- The parent: fork, wait, sweep -----------------------------------------------------------


def _sweep(keep: set[int], in_namespace: bool) -> None:
    """Kill every process this job left behind: in our own PID namespace everything except init
    and us; without one, our (subreaped) descendants."""
    if in_namespace:
        _sweep_namespace(keep)
        return
    me = os.getpid()
    for _ in range(50):
        victims = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            pid = int(entry)
            if pid == me or pid in keep:
                continue
            if in_namespace:
                victims.append(pid)
                continue
            try:
                with open(f"/proc/{pid}/stat") as fh:
                    ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if ppid == me:
                victims.append(pid)
        for pid in victims:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        _reap()
        if not victims:
            return
        time.sleep(0.002)


def _sweep_namespace(keep: set[int]) -> None:
    """SIGKILL every process in our PID namespace but init, us and `keep`, until a pass finds no
    process it has not already killed. Nothing here waits for the killed ones to finish dying
    (tearing down a forked copy of this process takes ~10 ms of kernel time): a process sent
    SIGKILL never runs user code again (it cannot be blocked, caught or ignored), and one that
    forks after the signal is pending gets -EINTR from fork. A child created just before it is
    visible in /proc by the next pass, which kills it. The dead are reaped later (_reap)."""
    me = os.getpid()
    killed: set[int] = set()
    while True:
        fresh = [int(e) for e in os.listdir("/proc") if e.isdigit() and int(e) not in killed]
        fresh = [pid for pid in fresh if pid != me and pid not in keep]
        if not fresh:
            break
        for pid in fresh:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        killed.update(fresh)
    _reap()


def _reap() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


class LineReader:
    """Lines from a raw fd, so select() on the fd never misses a line already buffered."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buf = b""

    def fileno(self) -> int:
        return self.fd

    def has_line(self) -> bool:
        return b"\n" in self.buf

    def readline(self) -> str:
        """One line, or "" at EOF. Call only when has_line() or select says the fd is readable."""
        while b"\n" not in self.buf:
            chunk = os.read(self.fd, 1 << 20)
            if not chunk:
                rest, self.buf = self.buf, b""
                return rest.decode()
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return line.decode() + "\n"


class Result:
    """The child's hand-over: 16-byte header (meta length, npy length), meta JSON, npy bytes.

    Read in linear time whatever the child does: the header first, then one buffer of exactly
    the announced size, filled with readv (no growing copies). Sizes are checked against the
    job's caps before anything is allocated: meta ≤ max_meta_bytes, y_pred ≤ max_pred_bytes
    (X_test's rows × classes × 8 bytes plus a header, computed by the harness from the task)."""

    MAX_BYTES = 512 * MB  # the cap when the job names none (older harness)

    def __init__(self, fd: int, *, max_pred: int | None = None, max_meta: int | None = None) -> None:
        self.fd = fd
        self.max_pred = int(max_pred or self.MAX_BYTES)
        self.max_meta = int(max_meta or 65536)
        self.head = bytearray(16)
        self.buf: bytearray | None = None
        self.got = 0
        self.eof = False
        self.overflow = ""

    def read(self) -> None:
        """One read of what is there (call when select says the fd is readable)."""
        try:
            if self.buf is None:
                n = os.readv(self.fd, [memoryview(self.head)[self.got:]])
            else:
                n = os.readv(self.fd, [memoryview(self.buf)[self.got:]]) if self.got < len(self.buf) else 0
                if self.got >= len(self.buf):
                    return  # complete; anything more is ignored
        except BlockingIOError:
            return
        if not n:
            self.eof = True
            return
        self.got += n
        if self.buf is None and self.got == 16:
            meta_len, npy_len = struct.unpack("<QQ", self.head)
            if meta_len > self.max_meta:
                self.overflow = f"hand-over meta larger than {self.max_meta} bytes ({meta_len} announced)"
            elif npy_len > self.max_pred:
                self.overflow = (f"hand-over larger than {self.max_pred} bytes ({npy_len} announced): "
                                 "more than X_test's rows × classes of 8-byte numbers")
            if self.overflow:
                self.eof = True
                return
            self.buf = bytearray(meta_len + npy_len)
            self.meta_len = meta_len
            self.got = 0

    def drain(self) -> None:
        """After the child ended: take what it left in the pipe, without waiting for a writer that
        may never write (a grandchild holding the pipe open)."""
        os.set_blocking(self.fd, False)
        while not self.eof and not self.overflow and not self.complete():
            before = self.got, self.buf is None
            self.read()
            if (self.got, self.buf is None) == before:
                return

    def complete(self) -> bool:
        return self.buf is not None and self.got >= len(self.buf)

    def parts(self) -> tuple[dict, bytes]:
        try:
            meta = json.loads(bytes(self.buf[:self.meta_len]))
        except ValueError:
            meta = {}
        return (meta if isinstance(meta, dict) else {}), bytes(self.buf[self.meta_len:])


def _kill_everything(pid: int, in_namespace: bool) -> None:
    """SIGKILL the job's process group and, in our PID namespace, every other process but init
    and us; no waiting (the reaping happens after the answer is out)."""
    for target in (lambda: os.killpg(pid, signal.SIGKILL), lambda: os.kill(pid, signal.SIGKILL)):
        try:
            target()
        except OSError:
            pass
    if in_namespace:
        me = os.getpid()
        for entry in os.listdir("/proc"):
            if entry.isdigit() and int(entry) not in (1, me):
                try:
                    os.kill(int(entry), signal.SIGKILL)
                except OSError:
                    pass


def run_job(job: dict, work: Path, data: tuple, control: LineReader | None = None) -> tuple[dict, bytes, int]:
    """Run one job to its answer; return (answer, y_pred .npy bytes or b"", child pid). Call
    finish_job(pid) afterwards to reap the child and sweep the sandbox."""
    job_dir = work / str(job["id"])
    job_dir.mkdir(parents=True, exist_ok=True)
    (job_dir / "artifacts").mkdir(exist_ok=True)
    (job_dir / "train.py").write_text(job["code"])
    in_namespace = _is_sandbox_ns()
    started = time.monotonic()
    job["audit_nonce"] = nonce = os.urandom(12).hex()
    pid, pidfd, result_fd = _hand_over(job, work, data)
    audit_fd = _audit_readers.pop(pid, None)
    result = Result(result_fd, max_pred=job.get("max_pred_bytes"), max_meta=job.get("max_meta_bytes"))
    deadline = started + float(job.get("timeout") or 600)
    status = "exited"
    exited = False
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                status = "timeout"
                break
            watch = [pidfd] + ([] if result.eof else [result_fd]) + ([control] if control is not None else [])
            if control is not None and control.has_line():
                ready = [control]
            else:
                ready, _, _ = select.select(watch, [], [], remaining)
            if result_fd in ready:
                result.read()
                if result.complete() or result.overflow:
                    break
            if pidfd in ready:
                exited = True
                result.drain()  # whatever the child wrote before it ended
                break
            if control is not None and control in ready:
                line = control.readline()
                if not line:  # the harness went away: stop everything
                    status = "stopped"
                    break
                try:
                    msg = json.loads(line)
                except ValueError:
                    continue
                if msg.get("stop") == job["id"]:
                    status = "stopped"
                    break
    finally:
        os.close(pidfd)
        os.close(result_fd)
    answer = {"id": job["id"], "status": status, "seconds": time.monotonic() - started, "returncode": None,
              "signal": None, "meta": {}, "payload_bytes": 0}
    payload = b""
    if result.overflow:
        answer["error"] = result.overflow
    if status == "exited" and result.complete() and not result.overflow:
        answer["meta"], payload = result.parts()
        answer["returncode"] = 0
        answer["peak_memory_mb"] = answer["meta"].get("peak_memory_mb")
        _kill_everything(pid, in_namespace)
    else:
        if not exited:
            _kill_everything(pid, in_namespace)
        _, wstatus, usage = os.wait4(pid, 0)
        answer["returncode"] = os.WEXITSTATUS(wstatus) if os.WIFEXITED(wstatus) else None
        answer["signal"] = os.WTERMSIG(wstatus) if os.WIFSIGNALED(wstatus) else None
        answer["peak_memory_mb"] = usage.ru_maxrss / 1024
        pid = 0
    answer["audit_trail"] = audit_events_collect(audit_fd, nonce, completed=bool(payload))
    answer["payload_bytes"] = len(payload)
    return answer, payload, pid


def finish_job(pid: int) -> None:
    """Kill whatever the job left behind. In our own PID namespace the job's child (already sent
    SIGKILL) is reaped whenever it has finished dying; without one we wait for it, since the
    sweep then finds the job's processes through their parent."""
    in_namespace = _is_sandbox_ns()
    if pid and not in_namespace:
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass
    _sweep(keep={1} if in_namespace else set(), in_namespace=in_namespace)


# A child forked ahead of time and waiting for its job, so the fork (several ms for a process
# holding scikit-learn and the data) is paid between experiments rather than during one.
_standby: tuple[int, int, int] | None = None  # (pid, write end of its job pipe, read end of its result pipe)


def standby_fork(work: Path, data: tuple) -> None:
    global _standby
    global _audit_w
    read_fd, write_fd = os.pipe()
    result_r, result_w = os.pipe()
    audit_r, audit_w = os.pipe()
    sys.stdout.flush()
    pid = os.fork()
    if pid == 0:
        os.close(write_fd)
        os.close(result_r)
        os.close(audit_r)
        _audit_w = audit_w
        chunks = []
        while True:
            chunk = os.read(read_fd, 1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
        if not chunks:
            os._exit(0)  # the warm process went away without a job for us
        os.close(read_fd)
        job = json.loads(b"".join(chunks))
        _child(job, work / str(job["id"]), data, result_w)
    os.close(read_fd)
    os.close(result_w)
    os.close(audit_w)
    _audit_readers[pid] = audit_r
    _standby = (pid, write_fd, result_r)


def _hand_over(job: dict, work: Path, data: tuple) -> tuple[int, int, int]:
    """Start the job in the standby child (or a fresh fork); return (pid, pidfd, result fd)."""
    global _standby
    if _standby is not None:
        pid, write_fd, result_r = _standby
        _standby = None
        try:
            pidfd = os.pidfd_open(pid)
            _write_all(write_fd, json.dumps(job).encode())
            os.close(write_fd)
            return pid, pidfd, result_r
        except OSError:  # the standby is gone: fall through to a fresh fork
            for fd in (write_fd, result_r, _audit_readers.pop(pid, None)):
                try:
                    if fd is not None:
                        os.close(fd)
                except OSError:
                    pass
    global _audit_w
    result_r, result_w = os.pipe()
    audit_r, audit_w = os.pipe()
    sys.stdout.flush()
    pid = os.fork()
    if pid == 0:
        os.close(result_r)
        os.close(audit_r)
        _audit_w = audit_w
        _child(job, work / str(job["id"]), data, result_w)
    os.close(result_w)
    os.close(audit_w)
    _audit_readers[pid] = audit_r
    return pid, os.pidfd_open(pid), result_r


# The sandbox's private scratch folders (bwrap mounts each as an empty tmpfs for the slot's
# lifetime); HOME, TMPDIR and MPLCONFIGDIR all live in /tmp.
SCRATCH = ("/tmp", "/var/tmp", "/dev/shm", "/run")


def _fresh_scratch() -> bool:
    """Empty the scratch folders after a job (its processes are all dead by now), so nothing one
    experiment wrote there is seen by the next. Only in our own namespace: without one these are
    the machine's folders. True when they are empty afterwards."""
    if not _is_sandbox_ns():
        return True
    clean = True
    for root in SCRATCH:
        try:
            dev = os.lstat(root).st_dev
            names = os.listdir(root)
        except OSError:
            continue
        for name in names:
            _remove(os.path.join(root, name), dev, 0)
        try:
            clean = clean and all(os.lstat(os.path.join(root, n)).st_dev != dev or _is_bwrap_dir(root, n)
                                  for n in os.listdir(root))
        except OSError:
            pass
    return clean


def _is_bwrap_dir(root: str, name: str) -> bool:
    """A folder bwrap made (as root) to hold a bind mount below it, e.g. /tmp/pytest-of-root."""
    try:
        return os.lstat(os.path.join(root, name)).st_uid != os.getuid()
    except OSError:
        return True


def _remove(path: str, dev: int, depth: int) -> None:
    """Remove `path` unless it is on another file system than the scratch tmpfs: a folder bound
    into the sandbox (the job's work folder when DOJO_HOME is under /tmp) is never touched."""
    try:
        st = os.lstat(path)
    except OSError:
        return
    if st.st_dev != dev:
        return
    if stat.S_ISDIR(st.st_mode) and depth < 200:
        try:
            os.chmod(path, 0o700)  # train() may have locked its own folders
        except OSError:
            pass
        try:
            names = os.listdir(path)
        except OSError:
            names = []
        for name in names:
            _remove(os.path.join(path, name), dev, depth + 1)
        try:
            os.rmdir(path)
        except OSError:
            pass
    else:
        try:
            os.unlink(path)
        except OSError:
            pass


def _is_sandbox_ns() -> bool:
    # bwrap runs its own init as PID 1 of the sandbox's namespace; on the host PID 1 is the
    # machine's init, whose processes we must never touch.
    return os.environ.get("DOJO_PID_NAMESPACE") == "1"


def _setup() -> None:
    # With transparent huge pages a child's first write to a shared page copies 2 MB, not 4 KB:
    # forks of the warm process would pay for it on every experiment.
    _prctl(PR_SET_THP_DISABLE, 1)
    _prctl(PR_SET_DUMPABLE, 0)  # a child of the same user cannot ptrace or read our memory
    _prctl(PR_SET_CHILD_SUBREAPER, 1)  # orphans of a job come back to us and get swept
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)


TRAINER_NICENESS = 5


def _arg(name: str, default: str | None = None) -> str | None:
    if name in sys.argv:
        return sys.argv[sys.argv.index(name) + 1]
    return default


def main() -> int:
    global _audit_quiet_dirs, _audit_quiet
    mode = sys.argv[1]
    public = Path(_arg("--public"))
    _audit_quiet_dirs = (str(public),)
    _audit_quiet = audit_prefixes()
    work = Path(_arg("--work"))
    # Untrusted training yields the CPU to the trusted side (the harness reading the answer, the
    # evaluator scoring, the server) when the machine is short of it, and gets every idle cycle
    # otherwise. Inherited by the forked children; the sandbox user cannot raise it back.
    os.nice(TRAINER_NICENESS)
    _setup()
    if mode == "once":
        _preload(("numpy",))
        raw = _arg("--job")
        job = json.loads(Path(raw[1:]).read_text() if raw.startswith("@") else raw)
        data = _load_public(public)
        answer, payload, pid = run_job(job, work, data)
        finish_job(pid)
        if payload:  # written only now: nothing the job started is alive to change it
            job_dir = work / str(job["id"])
            (job_dir / "y_pred.npy").write_bytes(payload)
            _write_json(job_dir / "meta.json", answer["meta"])
        answer["payload_bytes"] = 0
        answer["versions"] = _versions()
        print(json.dumps(answer), flush=True)
        return 0
    idle = float(_arg("--idle", "600"))
    _preload(os.environ.get("DOJO_PRELOAD", ",".join(PRELOAD)).split(","))
    data = _load_public(public)
    _warm_up_process(data)
    import gc

    gc.collect()
    gc.freeze()  # keep the warm heap out of the children's collections (fewer copied pages)
    standby_fork(work, data)
    print(json.dumps({"ready": True, "pid": os.getpid(), "versions": _versions()}), flush=True)
    control = LineReader(0)
    while True:
        ready = [control] if control.has_line() else select.select([control], [], [], idle)[0]
        if not ready:
            return 0  # idle for too long: the pool slot goes away
        line = control.readline()
        if not line:
            return 0
        try:
            job = json.loads(line)
        except ValueError:
            continue
        if "id" not in job:
            continue
        pid, payload = 0, b""
        try:
            answer, payload, pid = run_job(job, work, data, control=control)
        except Exception as exc:  # noqa: BLE001 - report, keep serving
            traceback.print_exc()  # to the slot's log
            answer = {"id": job.get("id"), "status": "harness-error", "error": f"{type(exc).__name__}: {exc}",
                      "payload_bytes": 0}
        out = sys.stdout.buffer
        out.write(json.dumps(answer).encode() + b"\n")
        out.write(payload)
        out.flush()
        finish_job(pid)
        clean = _fresh_scratch()
        standby_fork(work, data)
        # The harness takes this slot again only after this line: every process of the job is
        # dead and the scratch folders are empty again (nothing carries over to the next one).
        out.write(json.dumps({"clean": clean}).encode() + b"\n")
        out.flush()


if __name__ == "__main__":
    sys.exit(main())

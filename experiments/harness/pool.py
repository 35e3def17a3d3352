"""Warm processes for the harness: per frozen task, trainer slots (sandboxed, holding no labels)
and one trusted evaluator (holding y_test and the frozen evaluate).

A trainer slot is one sandbox with one warm trainer.py process that runs one experiment at a
time (so its after-job sweep of the sandbox can kill everything safely). Slots are bounded per
machine by lock files under the machine's cache folder (DOJO_CACHE_DIR, `max_slots`), exit by themselves after `idle_seconds`
without work, and exit when this process goes away (their stdin closes). A slot that cannot be
had, or a pool that died, means a cold spawn for this experiment; the slot is restarted for the
next one.

This module takes every path and setting as arguments; experiments.services builds them.
"""

from __future__ import annotations

import atexit
import fcntl
import itertools
import json
import os
import select
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from domains.sandbox import (
    SandboxResult,
    sandbox_command,
    sandbox_isolation,
    sandbox_run,
    sandbox_user,
)

HARNESS_DIR = Path(__file__).resolve().parent
TRAINER = HARNESS_DIR / "trainer.py"
EVALUATOR = HARNESS_DIR / "evaluator.py"


@dataclass(frozen=True)
class Spec:
    """Everything needed to start a warm process; `key` says when two specs share one."""

    key: tuple
    kind: str  # "trainer" | "evaluator"
    argv: tuple[str, ...]
    cwd: Path
    env: tuple[tuple[str, str], ...]
    home: Path  # DOJO_CACHE_DIR (per machine): work dirs, logs and the machine-wide slot locks live under it
    readable: tuple[Path, ...] = ()
    hidden: tuple[Path, ...] = ()
    isolation: str | None = None
    drop_user: bool = True
    max_slots: int = 4
    start_timeout: float = 180.0


_ids = itertools.count(1)


LINE_MAX_BYTES = 1 << 20  # an answer line: meta (≤ 64 KB) and a few fields; more is a lie
STOP_GRACE_SECONDS = 1.0  # a stop the trainer does not answer within this kills the slot
CLEAN_WAIT_SECONDS = 2.0  # how long a slot may take to report its last job swept and wiped


class WarmProcess:
    """One warm process in its own sandbox, spoken to over its stdin/stdout.

    Every wait here has a deadline the sandbox cannot stretch: lines and payloads are read into
    preallocated buffers (linear time) with caps, and a process that does not answer in time is
    killed from outside (`kill`: its PID namespace, so nothing it started survives). `failure`
    says why the last request got no answer: "died", "unresponsive", "oversize: …", "stopped"."""

    def __init__(self, spec: Spec, slot_lock=None) -> None:
        self.spec = spec
        self.slot_lock = slot_lock
        self.busy = False
        self.lock = threading.Lock()
        self.last_used = time.monotonic()
        self.ready: dict | None = None
        self.error = ""
        self.failure = ""
        self.buf = bytearray()
        self.ns_pidfd: int | None = None
        self.killed = False
        n = next(_ids)
        base = spec.home / "harness"
        self.work = base / f"{spec.kind[0]}-{os.getpid()}-{n}"
        self.work.mkdir(parents=True, exist_ok=True)
        self.pending_clean = False  # a trainer owes a {"clean": …} line after each job
        self.clean_ok = True
        # The slot's folder stays ours: the sandbox user writes only in the job folder made for
        # each experiment (job_folder), so train() cannot chmod or fill the slot itself. (bwrap
        # only: the fallback sandbox keeps the older arrangement, a slot folder it owns.)
        self.owns_work = spec.kind == "trainer" and sandbox_isolation(spec.isolation) == "bwrap"
        if self.owns_work:
            os.chmod(self.work, 0o755)
        (base / "logs").mkdir(exist_ok=True)
        self.log_path = base / "logs" / f"{self.work.name}.log"
        argv = [a.replace("{work}", str(self.work)) for a in spec.argv]
        info_r, info_w = os.pipe()
        try:
            cmd = sandbox_command(
                argv, cwd=spec.cwd, env=dict(spec.env), readable=[*spec.readable, HARNESS_DIR],
                writable=[self.work], hidden=spec.hidden, isolation=spec.isolation,
                drop_user=spec.drop_user, die_with_parent=False, max_processes=None, info_fd=info_w,
                give_writable=not self.owns_work,
            )
            self.isolation = cmd.isolation
            with open(self.log_path, "ab") as log:
                self.proc = subprocess.Popen(
                    cmd.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
                    close_fds=True, **cmd.popen_kwargs,
                )
        finally:
            os.close(info_w)
        self.info_fd = info_r
        self.fd = self.proc.stdout.fileno()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def _namespace(self) -> None:
        """Learn the sandbox's PID-namespace init from bwrap's --info-fd (written before the
        command starts) and hold a pidfd on it: killing it kills everything in the sandbox."""
        if self.info_fd is None:
            return
        try:
            data = b""
            if select.select([self.info_fd], [], [], 0.5)[0]:
                os.set_blocking(self.info_fd, False)
                try:
                    while chunk := os.read(self.info_fd, 4096):
                        data += chunk
                except BlockingIOError:
                    pass
            pid = json.loads(data or b"{}").get("child-pid")
            if isinstance(pid, int) and pid > 1:
                self.ns_pidfd = os.pidfd_open(pid)
        except (OSError, ValueError, AttributeError):
            pass
        finally:
            os.close(self.info_fd)
            self.info_fd = None

    def _fill(self, timeout: float) -> bool | None:
        """Wait up to `timeout` for bytes; True when some came, False on EOF, None on timeout."""
        ready, _, _ = select.select([self.fd], [], [], max(0.0, timeout))
        if not ready:
            return None
        chunk = os.read(self.fd, 1 << 20)
        if not chunk:
            return False
        self.buf += chunk  # bytearray: amortized linear; bounded by LINE_MAX_BYTES below
        return True

    def job_folder(self, job_id: str) -> Path:
        """A fresh folder for one job in this slot, made by us and given to the sandbox user."""
        folder = self.work / job_id
        if not self.owns_work:
            return folder  # the trainer makes it (fallback sandbox)
        folder.mkdir(mode=0o700)
        (folder / "artifacts").mkdir(mode=0o755)
        drop = sandbox_user() if self.spec.drop_user else None
        if drop:
            for path in (folder, folder / "artifacts"):
                os.chown(path, *drop)
        return folder

    def await_clean(self, timeout: float) -> bool:
        """True when the trainer said its last job left nothing behind ({"clean": true}), within
        `timeout`. False (the slot must be discarded) when it said otherwise, or nothing came: a
        warm parent stopped after its answer would otherwise hang the next experiment."""
        if self.pending_clean:
            msg = self._readline(timeout, want_clean=True)
            if msg is None or "clean" not in msg:
                return False
        return self.clean_ok

    def _readline(self, timeout: float, should_stop: Callable[[], bool] | None = None,
                  on_stop: Callable[[], None] | None = None, want_clean: bool = False) -> dict | None:
        deadline = time.monotonic() + timeout
        stop_deadline = None
        scanned = 0
        while True:
            end = self.buf.find(b"\n", scanned)
            if end >= 0:
                line = bytes(self.buf[:end])
                del self.buf[:end + 1]
                scanned = 0
                try:
                    msg = json.loads(line)
                except ValueError:
                    continue
                if isinstance(msg, dict) and "clean" in msg and "id" not in msg:
                    self.pending_clean = False
                    self.clean_ok = msg.get("clean") is True
                    if want_clean:
                        return msg
                    continue
                if isinstance(msg, dict):
                    return msg
                continue
            scanned = len(self.buf)
            if len(self.buf) > LINE_MAX_BYTES:
                self.failure = f"oversize: hand-over larger than {LINE_MAX_BYTES} bytes (an answer line without an end)"
                return None
            now = time.monotonic()
            if stop_deadline is not None and now >= stop_deadline:
                self.failure = "stopped"
                return None
            if now >= deadline:
                self.failure = "unresponsive"
                return None
            if should_stop is not None and stop_deadline is None and should_stop():
                stop_deadline = now + STOP_GRACE_SECONDS
                if on_stop:
                    on_stop()
            wait = deadline - now if stop_deadline is None else min(deadline, stop_deadline) - now
            if should_stop is not None and stop_deadline is None:
                wait = min(wait, 0.05)
            got = self._fill(wait)
            if got is False:
                self.failure = "died"
                return None

    def wait_ready(self) -> bool:
        if self.ready is None and not self.error:
            msg = self._readline(self.spec.start_timeout)
            if msg and msg.get("ready"):
                self.ready = msg
                self._namespace()
            else:
                self.error = (msg or {}).get("error") or self.log_tail() or "the warm process did not start"
        return self.ready is not None

    def send(self, message: dict, payload: bytes = b"") -> bool:
        """One JSON line, then `payload` raw bytes (the receiver knows their length from the line).
        A process that stopped reading (a full pipe) is not waited for beyond the pipe's buffer:
        the write is non-blocking-checked with select and a short deadline."""
        data = (json.dumps(message) + "\n").encode() + payload
        view = memoryview(data)
        deadline = time.monotonic() + 5.0 + len(data) / 50e6
        try:
            fd = self.proc.stdin.fileno()
            while view:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not select.select([], [fd], [], remaining)[1]:
                    self.failure = "unresponsive"
                    return False
                view = view[os.write(fd, view[: 1 << 16]):]
            return True
        except (BrokenPipeError, OSError, ValueError):
            self.failure = "died"
            return False

    def request(self, message: dict, *, timeout: float, payload: bytes = b"", should_stop=None,
                on_stop=None, while_waiting: Callable[[], None] | None = None,
                max_payload: int = 1 << 30) -> dict | None:
        """Send, then (optionally) run `while_waiting` — work that fits while the other side is
        busy — then wait for the answer line and its payload (at most `max_payload` bytes).
        None when no valid answer came in time: `failure` says why, and the caller must kill()."""
        self.failure = ""
        deadline = time.monotonic() + timeout
        if not self.send(message, payload):
            return None
        if while_waiting is not None:
            while_waiting()
        answer = self._readline(max(0.0, deadline - time.monotonic()), should_stop, on_stop)
        if answer is None:
            return None
        size = answer.get("payload_bytes") or 0
        if not isinstance(size, int) or size < 0:
            self.failure = "died"
            return None
        if size > max_payload:
            self.failure = f"oversize: hand-over larger than {max_payload} bytes ({size} announced)"
            return None
        if size:
            data = self._read_exact(size, deadline)
            if data is None:
                return None
            answer["_payload"] = data
        self.last_used = time.monotonic()
        if self.spec.kind == "trainer":
            self.pending_clean = True
        return answer

    def _read_exact(self, size: int, deadline: float) -> bytes | None:
        """`size` bytes into one preallocated buffer (readv, no growing copies)."""
        out = bytearray(size)
        have = min(size, len(self.buf))
        out[:have] = self.buf[:have]
        del self.buf[:have]
        view = memoryview(out)
        try:
            while have < size:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not select.select([self.fd], [], [], remaining)[0]:
                    self.failure = "unresponsive"
                    return None
                n = os.readv(self.fd, [view[have:]])
                if not n:
                    self.failure = "died"
                    return None
                have += n
        finally:
            view.release()
        return bytes(out)

    def kill(self) -> None:
        """End this process and everything in its sandbox now, whatever state they are in (a
        SIGSTOPped or blocked process included: SIGKILL needs no cooperation). Idempotent."""
        if self.killed:
            return
        self.killed = True
        victims = [] if self.ns_pidfd is not None else _descendants(self.proc.pid)
        if self.ns_pidfd is not None:
            try:
                signal.pidfd_send_signal(self.ns_pidfd, signal.SIGKILL)
            except OSError:
                pass
            os.close(self.ns_pidfd)
            self.ns_pidfd = None
        for pid in victims:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except OSError:
            pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        self._release()

    def _release(self) -> None:
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                stream.close()
            except OSError:
                pass
        if self.info_fd is not None:
            os.close(self.info_fd)
            self.info_fd = None
        if self.ns_pidfd is not None:
            os.close(self.ns_pidfd)
            self.ns_pidfd = None
        if self.slot_lock is not None:
            self.slot_lock.close()
            self.slot_lock = None
        shutil.rmtree(self.work, ignore_errors=True)

    def log_tail(self, size: int = 4000) -> str:
        # The log is ours (created here, in a folder the sandbox cannot see); only its size is
        # the sandbox's doing, so read just the end.
        try:
            with open(self.log_path, "rb") as fh:
                fh.seek(max(0, os.fstat(fh.fileno()).st_size - size))
                data = fh.read(size)
        except OSError:
            return ""
        return data.decode("utf-8", errors="replace").strip()

    def stop(self) -> None:
        """End gently (stdin closes, it exits), else kill()."""
        if self.killed:
            return
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            self.kill()
            return
        if self.ns_pidfd is not None:  # the namespace ends with its command; make sure of it
            try:
                signal.pidfd_send_signal(self.ns_pidfd, signal.SIGKILL)
            except OSError:
                pass
        self.killed = True
        self._release()


def _descendants(root: int) -> list[int]:
    """Every process below `root` (by parent pid), for the fallback sandbox (no namespace)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                ppid = int(fh.read().rsplit(b")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


_lock = threading.Lock()
_trainers: dict[tuple, list[WarmProcess]] = {}
_evaluators: dict[tuple, WarmProcess] = {}
_died: set[tuple] = set()


def _claim_slot(home: Path, max_slots: int):
    """A machine-wide slot (one lock file each under the cache folder), or None when all are taken."""
    folder = home / "harness" / "slots"
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(max_slots):
        fh = open(folder / f"{i}.lock", "a+")  # noqa: SIM115 - held for the slot's lifetime
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fh
        except OSError:
            fh.close()
    return None


def _prune() -> None:
    """Forget trainer slots that exited (idle timeout, crash); called with _lock held."""
    for key, slots in list(_trainers.items()):
        for wp in list(slots):
            if not wp.busy and not wp.alive():
                slots.remove(wp)
                if wp.ready is not None and wp.proc.returncode not in (0, None):
                    _died.add(key)
                wp.stop()
        if not slots:
            del _trainers[key]


def _evict_idle(except_key: tuple) -> bool:
    idle = [wp for key, slots in _trainers.items() if key != except_key for wp in slots if not wp.busy]
    if not idle:
        return False
    victim = min(idle, key=lambda wp: wp.last_used)
    _trainers[victim.spec.key].remove(victim)
    victim.stop()
    return True


def trainer_checkout(spec: Spec) -> tuple[WarmProcess | None, str]:
    """A ready warm trainer for this spec, marked busy; or (None, why) when a cold spawn must run.
    Give it back with trainer_release()."""
    if spec.max_slots <= 0:
        return None, "the warm pool is disabled (DOJO_POOL_MAX=0)"
    while True:
        with _lock:
            _prune()
            found = next((wp for wp in _trainers.get(spec.key, [])
                          if not wp.busy and wp.alive() and wp.ready is not None), None)
            if found is not None:
                found.busy = True
        if found is None:
            break
        if found.await_clean(CLEAN_WAIT_SECONDS):
            return found, ""
        trainer_discard(found)  # its last job left something behind, or it stopped answering
    with _lock:
        slot = _claim_slot(spec.home, spec.max_slots)
        if slot is None and _evict_idle(spec.key):
            slot = _claim_slot(spec.home, spec.max_slots)
        if slot is None:
            return None, f"all {spec.max_slots} warm trainer slots are busy"
        wp = WarmProcess(spec, slot)
        _trainers.setdefault(spec.key, []).append(wp)
        if spec.key in _died:
            # The pool died: this experiment spawns cold while the restarted slot warms up.
            _died.discard(spec.key)
            return None, "the warm pool had died; restarted it"
        wp.busy = True
    if wp.wait_ready():
        return wp, ""
    trainer_discard(wp)
    return None, f"the warm trainer did not start: {wp.error[-500:]}"


def trainer_release(wp: WarmProcess) -> None:
    with _lock:
        wp.busy = False
        wp.last_used = time.monotonic()


def trainer_discard(wp: WarmProcess) -> None:
    """Kill a slot and everything in its sandbox (an experiment in it ended abnormally, or its
    process did not answer): never reused; the next checkout starts a fresh one."""
    with _lock:
        slots = _trainers.get(wp.spec.key, [])
        if wp in slots:
            slots.remove(wp)
    wp.kill()


def trainer_cold(spec: Spec, job: dict, *, should_stop=None) -> tuple[dict | None, SandboxResult, Path]:
    """Run one job in a fresh sandbox (`trainer.py once`). Returns (answer, sandbox result, work dir)."""
    work = spec.home / "harness" / f"c-{os.getpid()}-{next(_ids)}"
    work.mkdir(parents=True, exist_ok=True)
    job_file = work / "job.json"
    job_file.write_text(json.dumps(job))
    argv = [a.replace("{work}", str(work)) for a in spec.argv]
    argv = [*argv[: argv.index("serve")], "once", *argv[argv.index("serve") + 1:], "--job", "@" + str(job_file)]
    result = sandbox_run(
        argv, cwd=spec.cwd, timeout=float(job.get("timeout") or 600) + spec.start_timeout,
        env=dict(spec.env), readable=[*spec.readable, HARNESS_DIR], writable=[work], hidden=spec.hidden,
        isolation=spec.isolation, should_stop=should_stop, max_processes=None,
    )
    answer = None
    for line in reversed(result.stdout_tail.splitlines()):
        try:
            msg = json.loads(line)
        except ValueError:
            continue
        if isinstance(msg, dict) and msg.get("id") == job["id"]:
            answer = msg
            break
    return answer, result, work


def evaluator_start(spec: Spec) -> None:
    """Start the evaluator if it is not running, without waiting (it warms up during training)."""
    with _lock:
        wp = _evaluators.get(spec.key)
        if wp is None or not wp.alive():
            if wp is not None:
                del _evaluators[spec.key]
                wp.stop()
            _evaluators[spec.key] = WarmProcess(spec)


def evaluator_get(spec: Spec) -> WarmProcess:
    """The warm evaluator for this spec, started (and waited for) when missing or dead."""
    with _lock:
        wp = _evaluators.get(spec.key)
        if wp is not None and not wp.alive():
            del _evaluators[spec.key]
            wp.stop()
            wp = None
        if wp is None:
            wp = WarmProcess(spec)
            _evaluators[spec.key] = wp
    with wp.lock:
        ok = wp.wait_ready()
    if not ok:
        with _lock:
            if _evaluators.get(spec.key) is wp:
                del _evaluators[spec.key]
        wp.stop()
    return wp


def evaluator_forget(wp: WarmProcess) -> None:
    with _lock:
        if _evaluators.get(wp.spec.key) is wp:
            del _evaluators[wp.spec.key]
    wp.kill()


def pool_stop_all() -> None:
    """Stop every warm process this process started (at exit, and between tests)."""
    with _lock:
        procs = [wp for slots in _trainers.values() for wp in slots] + list(_evaluators.values())
        _trainers.clear()
        _evaluators.clear()
        _died.clear()
    for wp in procs:
        wp.stop()


def pool_status() -> list[dict]:
    with _lock:
        procs = [wp for slots in _trainers.values() for wp in slots] + list(_evaluators.values())
        return [
            {"kind": wp.spec.kind, "key": wp.spec.key, "busy": wp.busy, "alive": wp.alive(),
             "isolation": wp.isolation, "idle_seconds": time.monotonic() - wp.last_used}
            for wp in procs
        ]


def _forget_after_fork() -> None:
    """In a forked child (e.g. a django-q2 worker) the parent's warm processes are not ours: drop
    our copies of their pipes, so they still see EOF when the parent goes away."""
    global _lock
    _lock = threading.Lock()
    for wp in [wp for slots in _trainers.values() for wp in slots] + list(_evaluators.values()):
        for stream in (wp.proc.stdin, wp.proc.stdout):
            try:
                stream.close()
            except OSError:
                pass
        if wp.slot_lock is not None:
            wp.slot_lock.close()
        for fd in (wp.ns_pidfd, wp.info_fd):
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
    _trainers.clear()
    _evaluators.clear()
    _died.clear()


atexit.register(pool_stop_all)
os.register_at_fork(after_in_child=_forget_after_fork)

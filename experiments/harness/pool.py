"""Warm processes for the harness: per frozen task, trainer slots (sandboxed, holding no labels)
and one trusted evaluator (holding y_test and the frozen evaluate).

A trainer slot is one sandbox with one warm trainer.py process that runs one experiment at a
time (so its after-job sweep of the sandbox can kill everything safely). Slots are bounded per
machine by lock files under DOJO_HOME (`max_slots`), exit by themselves after `idle_seconds`
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
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from domains.sandbox import SandboxResult, sandbox_command, sandbox_run

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
    home: Path  # DOJO_HOME: work dirs, logs and the machine-wide slot locks live under it
    readable: tuple[Path, ...] = ()
    hidden: tuple[Path, ...] = ()
    isolation: str | None = None
    drop_user: bool = True
    max_slots: int = 4
    start_timeout: float = 180.0


_ids = itertools.count(1)


class WarmProcess:
    def __init__(self, spec: Spec, slot_lock=None) -> None:
        self.spec = spec
        self.slot_lock = slot_lock
        self.busy = False
        self.lock = threading.Lock()
        self.last_used = time.monotonic()
        self.ready: dict | None = None
        self.error = ""
        self.buf = b""
        n = next(_ids)
        base = spec.home / "harness"
        self.work = base / f"{spec.kind[0]}-{os.getpid()}-{n}"
        self.work.mkdir(parents=True, exist_ok=True)
        (base / "logs").mkdir(exist_ok=True)
        self.log_path = base / "logs" / f"{self.work.name}.log"
        argv = [a.replace("{work}", str(self.work)) for a in spec.argv]
        cmd = sandbox_command(
            argv, cwd=spec.cwd, env=dict(spec.env), readable=[*spec.readable, HARNESS_DIR],
            writable=[self.work], hidden=spec.hidden, isolation=spec.isolation,
            drop_user=spec.drop_user, die_with_parent=False, max_processes=None,
        )
        self.isolation = cmd.isolation
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                cmd.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
                close_fds=True, **cmd.popen_kwargs,
            )
        self.fd = self.proc.stdout.fileno()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def _readline(self, timeout: float, should_stop: Callable[[], bool] | None = None,
                  on_stop: Callable[[], None] | None = None) -> dict | None:
        deadline = time.monotonic() + timeout
        stop_sent = False
        while True:
            if b"\n" in self.buf:
                line, self.buf = self.buf.split(b"\n", 1)
                try:
                    return json.loads(line)
                except ValueError:
                    continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            if should_stop is not None and not stop_sent and should_stop():
                stop_sent = True
                if on_stop:
                    on_stop()
            wait = min(remaining, 0.05) if should_stop is not None else remaining
            ready, _, _ = select.select([self.fd], [], [], wait)
            if ready:
                chunk = os.read(self.fd, 1 << 20)
                if not chunk:
                    return None
                self.buf += chunk

    def wait_ready(self) -> bool:
        if self.ready is None and not self.error:
            msg = self._readline(self.spec.start_timeout)
            if msg and msg.get("ready"):
                self.ready = msg
            else:
                self.error = (msg or {}).get("error") or self.log_tail() or "the warm process did not start"
        return self.ready is not None

    def send(self, message: dict, payload: bytes = b"") -> bool:
        """One JSON line, then `payload` raw bytes (the receiver knows their length from the line)."""
        try:
            line = (json.dumps(message) + "\n").encode()
            if len(payload) < 1 << 20:
                self.proc.stdin.write(line + payload)  # one write for the usual small y_pred
            else:
                self.proc.stdin.write(line)
                self.proc.stdin.write(payload)
            self.proc.stdin.flush()
            return True
        except (BrokenPipeError, OSError, ValueError):
            return False

    def request(self, message: dict, *, timeout: float, payload: bytes = b"", should_stop=None,
                on_stop=None, while_waiting: Callable[[], None] | None = None) -> dict | None:
        """Send, then (optionally) run `while_waiting` — work that fits while the other side is
        busy — then wait for the answer line and its payload."""
        if not self.send(message, payload):
            return None
        if while_waiting is not None:
            while_waiting()
        deadline = time.monotonic() + timeout
        answer = self._readline(timeout, should_stop, on_stop)
        size = (answer or {}).get("payload_bytes") or 0
        if answer is not None and size:
            payload = self._read_exact(int(size), deadline)
            if payload is None:
                return None
            answer["_payload"] = payload
        self.last_used = time.monotonic()
        return answer

    def _read_exact(self, size: int, deadline: float) -> bytes | None:
        while len(self.buf) < size:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            ready, _, _ = select.select([self.fd], [], [], remaining)
            if ready:
                chunk = os.read(self.fd, max(1 << 20, size - len(self.buf)))
                if not chunk:
                    return None
                self.buf += chunk
        data, self.buf = self.buf[:size], self.buf[size:]
        return data

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
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(self.proc.pid, 9)
            except OSError:
                pass
            self.proc.wait()
        self.proc.stdout.close()
        if self.slot_lock is not None:
            self.slot_lock.close()
            self.slot_lock = None
        shutil.rmtree(self.work, ignore_errors=True)


_lock = threading.Lock()
_trainers: dict[tuple, list[WarmProcess]] = {}
_evaluators: dict[tuple, WarmProcess] = {}
_died: set[tuple] = set()


def _claim_slot(home: Path, max_slots: int):
    """A machine-wide slot (one lock file each under DOJO_HOME), or None when all are taken."""
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
    with _lock:
        _prune()
        for wp in _trainers.get(spec.key, []):
            if not wp.busy and wp.alive() and wp.ready is not None:
                wp.busy = True
                return wp, ""
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
    with _lock:
        slots = _trainers.get(wp.spec.key, [])
        if wp in slots:
            slots.remove(wp)
    wp.stop()


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
    wp.stop()


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
    _trainers.clear()
    _evaluators.clear()
    _died.clear()


atexit.register(pool_stop_all)
os.register_at_fork(after_in_child=_forget_after_fork)

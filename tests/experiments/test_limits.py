import os
import time
from pathlib import Path

from experiments.services import experiment_limits, experiment_run
from tests.experiments.test_integrity import HONEST_TAIL, _processes_with


def run(domain, code):
    return experiment_run(domain=domain, train_code=code, hypothesis="limits")


def test_it_takes_limits_from_settings_and_task_overrides(make_domain, settings):
    settings.DOJO_TRAIN_TIMEOUT_SECONDS = 321
    domain = make_domain(name="limited", config={"limits": {"memory_mb": 1234, "cpu_share": 0.5, "bogus": 1}})
    limits = experiment_limits(task=domain.task)
    assert limits.timeout_seconds == 321
    assert limits.memory_mb == 1234
    assert limits.threads == max(1, int((os.cpu_count() or 1) * 0.5))


def test_it_kills_the_whole_tree_at_the_wall_clock_limit(make_domain):
    domain = make_domain(name="slow", config={"limits": {"timeout_seconds": 2}})
    marker = f"dojo-timeout-{time.time_ns()}"
    started = time.monotonic()
    exp = run(domain, f"""
import os, subprocess, sys, time

def train(X_train, y_train, X_test, *, artifacts_dir):
    for _ in range(3):
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)", {marker!r}])
    if os.fork() == 0:
        os.setsid()
        os.execv(sys.executable, [sys.executable, "-c", "import time; time.sleep(3600)", {marker!r}])
    time.sleep(3600)
""")
    assert time.monotonic() - started < 20
    assert exp.state == "failed"
    assert "wall-clock limit (2 s)" in exp.error
    time.sleep(0.2)
    assert _processes_with(marker) == []


def test_it_fails_a_50_gb_allocation_with_the_memory_limit(make_domain):
    domain = make_domain(name="hungry", config={"limits": {"memory_mb": 2048}})
    exp = run(domain, """
import numpy as np

def train(X_train, y_train, X_test, *, artifacts_dir):
    block = np.ones(50 * 1024**3 // 8)
    return block[: len(X_test)]
""")
    assert exp.state == "failed"
    assert "memory limit" in exp.error
    assert "2048 MB" in exp.error


def test_it_caps_the_number_of_processes(make_domain):
    domain = make_domain(name="forky", config={"limits": {"max_processes": 3}})
    exp = run(domain, """
import subprocess

def train(X_train, y_train, X_test, *, artifacts_dir):
    children = [subprocess.Popen(["sleep", "30"]) for _ in range(200)]
    return [0.0] * len(X_test)
""")
    assert exp.state == "failed"
    assert "Resource temporarily unavailable" in exp.error or "BlockingIOError" in exp.error


def test_it_caps_file_size(make_domain):
    domain = make_domain(name="writer", config={"limits": {"max_file_mb": 1}})
    exp = run(domain, """
def train(X_train, y_train, X_test, *, artifacts_dir):
    with open(artifacts_dir / "big.bin", "wb") as fh:
        fh.write(b"x" * (3 * 1024 * 1024))
    return [0.0] * len(X_test)
""")
    assert exp.state == "failed"
    assert "file size limit (1 MB)" in exp.error


def test_it_keeps_only_capped_tails_of_stdout_and_stderr(diabetes):
    exp = run(diabetes, f"""
import sys

def train(X_train, y_train, X_test, *, artifacts_dir):
    print("START-OF-OUTPUT")
    for i in range(4000):
        print("line", i, "x" * 60)
        print("err", i, "y" * 60, file=sys.stderr)
    print("END-OF-OUTPUT")
{HONEST_TAIL}""")
    assert exp.state == "completed", exp.error
    for tail in (exp.stdout_tail, exp.stderr_tail):
        assert len(tail.encode()) <= 65536 + 100
        assert "bytes cut" in tail
    assert "END-OF-OUTPUT" in exp.stdout_tail and "START-OF-OUTPUT" not in exp.stdout_tail


def test_it_caps_artifacts_and_refuses_links(make_domain, settings):
    domain = make_domain(name="artsy", config={"limits": {"artifacts_max_file_mb": 1, "artifacts_max_total_mb": 2}})
    exp = run(domain, f"""
import os

def train(X_train, y_train, X_test, *, artifacts_dir):
    (artifacts_dir / "small.txt").write_text("ok")
    (artifacts_dir / "too_big.bin").write_bytes(b"x" * (1024 * 1024 + 10))
    for name in ("a.bin", "b.bin", "c.bin"):
        (artifacts_dir / name).write_bytes(b"y" * (900 * 1024))
    os.symlink("/etc/passwd", artifacts_dir / "passwd")
    os.symlink("..", artifacts_dir / "up")
{HONEST_TAIL}""")
    assert exp.state == "completed", exp.error
    kept = sorted(exp.artifacts.values_list("path", flat=True))
    assert "train/small.txt" in kept
    assert "train/too_big.bin" not in kept and "train/passwd" not in kept and "train/up" not in kept
    assert sum(a.size for a in exp.artifacts.all()) <= 2 * 1024 * 1024
    assert len([p for p in kept if p.endswith(("a.bin", "b.bin", "c.bin"))]) == 2
    text = " ".join(exp.warnings)
    assert "per-file cap" in text and "total cap" in text and "refused" in text
    passwd = Path("/etc/passwd").read_bytes()
    stored = [f for f in (Path(settings.DOJO_HOME) / "shared").rglob("*") if f.is_file()]
    assert stored and all(f.read_bytes() != passwd for f in stored)


def test_it_sets_thread_counts_from_the_cpu_share(make_domain):
    domain = make_domain(name="threads", config={"limits": {"cpu_share": 0.5}})
    exp = run(domain, f"""
import os

def train(X_train, y_train, X_test, *, artifacts_dir):
    print({{k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}})
{HONEST_TAIL}""")
    expected = str(max(1, int((os.cpu_count() or 1) * 0.5)))
    assert exp.state == "completed", exp.error
    for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        assert f"'{key}': '{expected}'" in exp.stdout_tail
    assert exp.environment["threads"] == int(expected)

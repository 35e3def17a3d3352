"""domains/sandbox.py, the low-level sandbox under the harness and tool verification."""

import os
import sys
import time

import pytest

from domains.sandbox import ISOLATION_HINT, bwrap_works, sandbox_env, sandbox_isolation, sandbox_run
from tests.experiments.test_integrity import _processes_with

needs_bwrap = pytest.mark.skipif(not bwrap_works(), reason="bubblewrap is not installed or cannot create namespaces here")


@pytest.fixture
def box(tmp_path):
    for name in ("secret", "public", "out", "ws"):
        (tmp_path / name).mkdir()
    (tmp_path / "secret" / "labels.txt").write_text("the labels")
    (tmp_path / "public" / "data.txt").write_text("the data")
    return tmp_path


def run(box, code, isolation="bwrap", **kwargs):
    kwargs.setdefault("timeout", 20)
    return sandbox_run(
        [sys.executable, "-c", code], cwd=box / "ws", env=sandbox_env(), readable=[box / "public"],
        writable=[box / "out"], hidden=[box / "secret"], isolation=isolation, **kwargs,
    )


@needs_bwrap
def test_it_hides_paths_binds_what_is_needed_and_drops_root(box):
    result = run(box, f"""
import os
print(open({str(box / 'public' / 'data.txt')!r}).read())
open({str(box / 'out' / 'w.txt')!r}, "w").write("written")
try:
    open({str(box / 'secret' / 'labels.txt')!r}).read(); print("LEAK")
except OSError as exc:
    print("hidden", exc.errno)
print("uid", os.getuid())
""")
    assert result.ok, result.stderr_tail
    assert result.isolation == "bwrap"
    assert "the data" in result.stdout_tail and "LEAK" not in result.stdout_tail
    assert (box / "out" / "w.txt").read_text() == "written"
    if os.geteuid() == 0:
        assert "uid 0" not in result.stdout_tail


@needs_bwrap
def test_it_kills_the_pid_namespace_at_the_timeout(box):
    marker = f"sbx-{time.time_ns()}"
    result = run(box, f"""
import os, sys, time
if os.fork() == 0:
    os.setsid()
    os.execv(sys.executable, [sys.executable, "-c", "import time; time.sleep(3600)", {marker!r}])
time.sleep(3600)
""", timeout=1)
    assert result.timed_out and "wall-clock limit (1 s)" in result.killed_reason
    assert result.seconds < 5
    time.sleep(0.2)
    assert _processes_with(marker) == []


@pytest.mark.parametrize("isolation", ["bwrap", "fallback"])
def test_it_reports_the_memory_limit(box, isolation):
    if isolation == "bwrap" and not bwrap_works():
        pytest.skip("bubblewrap is not available")
    result = run(box, "import numpy as np\nnp.ones(50 * 1024**3 // 8)", isolation=isolation, memory_mb=1024)
    assert result.returncode != 0
    assert "memory limit (1024 MB)" in result.killed_reason


def test_it_scrubs_the_environment_and_caps_output(box, monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-should-not-leak")
    result = run(box, "import os, sys\nprint(dict(os.environ))\nsys.stdout.write('z' * 200000)", isolation="fallback",
                 output_cap=1000)
    assert "sk-ant-should-not-leak" not in result.stdout_tail
    assert len(result.stdout_tail) < 1100 and "bytes cut" in result.stdout_tail
    assert result.isolation == "fallback"


def test_it_stops_on_request_and_kills_the_group_in_fallback(box):
    started = time.monotonic()
    result = run(box, "import time\ntime.sleep(60)", isolation="fallback", should_stop=lambda: time.monotonic() - started > 0.5)
    assert result.stopped and result.killed_reason == "stopped"
    assert result.seconds < 5


def test_it_names_the_fallback_and_how_to_fix_it(monkeypatch):
    monkeypatch.setenv("DOJO_SANDBOX", "fallback")
    assert sandbox_isolation() == "fallback"
    assert "apt-get install bubblewrap" in ISOLATION_HINT

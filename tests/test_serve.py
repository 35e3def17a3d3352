import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from django.conf import settings

from tests.dburl import subprocess_database_url

pytestmark = pytest.mark.django_db(transaction=True)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _process_groups() -> dict[int, int]:
    """pid -> process group id of every process on the machine."""
    groups = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        groups[int(stat.parent.name)] = int(fields[2])
    return groups


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(stat.parent.name))
        except (OSError, IndexError):
            continue
    return out


def test_it_serves_the_web_and_the_worker_and_stops_both_on_ctrl_c():
    port = _free_port()
    env = os.environ | {
        "DATABASE_URL": subprocess_database_url(),
        "DOJO_HOME": str(settings.DOJO_HOME),
    }
    serve = subprocess.Popen(
        [sys.executable, str(settings.BASE_DIR / "manage.py"), "dojo_serve", f"127.0.0.1:{port}", "--noreload"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    children: list[int] = []
    try:
        deadline = time.monotonic() + 60
        status = None
        while time.monotonic() < deadline and status is None:
            try:
                status = urllib.request.urlopen(f"http://127.0.0.1:{port}/login/", timeout=2).status
            except OSError:
                time.sleep(0.3)
        assert status == 200
        children = _children(serve.pid)
        assert len(children) == 2  # runserver and qcluster
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and sum(1 for g in _process_groups().values() if g in children) < 4:
            time.sleep(0.3)  # qcluster forks its sentinel, monitor, pusher and workers
        assert sum(1 for g in _process_groups().values() if g in children) >= 4

        serve.send_signal(signal.SIGINT)  # what Ctrl-C delivers to the foreground process
        assert serve.wait(timeout=30) == 0
    finally:
        if serve.poll() is None:
            serve.kill()
            for group in children:  # never leave a server behind when the test fails
                try:
                    os.killpg(group, signal.SIGKILL)
                except ProcessLookupError:
                    pass
    left = [pid for pid, group in _process_groups().items() if group in children]
    assert left == []

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
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


def _descendants(pid: int) -> set[int]:
    found, todo = set(), [pid]
    while todo:
        for child in _children(todo.pop()):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


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
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_DEBUG"} | {  # DEBUG off, the default
        "DATABASE_URL": subprocess_database_url(),
        "DOJO_HOME": str(settings.DOJO_HOME),
    }
    serve = subprocess.Popen(
        [sys.executable, str(settings.BASE_DIR / "manage.py"), "dojo_serve", f"127.0.0.1:{port}", "--noreload"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    processes: set[int] = set()
    try:
        deadline = time.monotonic() + 60
        status = None
        while time.monotonic() < deadline and status is None:
            try:
                status = urllib.request.urlopen(f"http://127.0.0.1:{port}/login/", timeout=2).status
            except OSError:
                time.sleep(0.3)
        assert status == 200
        # DEBUG is off, and the pages still get their styles (runserver --insecure) and a plain 404.
        css = urllib.request.urlopen(f"http://127.0.0.1:{port}/static/dojo/dojo.css", timeout=5)
        assert css.status == 200 and b".card" in css.read()
        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/no-such-page/", timeout=5)
        assert missing.value.code == 404
        body = missing.value.read().decode()
        assert "Not found" in body and "URLconf" not in body
        children = _children(serve.pid)
        assert len(children) == 2  # runserver and qcluster
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len(_descendants(serve.pid)) < 6:
            time.sleep(0.3)  # qcluster starts the cluster, which forks its sentinel, monitor, pusher, workers
        processes = _descendants(serve.pid)
        assert len(processes) >= 6

        serve.send_signal(signal.SIGINT)  # what Ctrl-C delivers to the foreground process
        assert serve.wait(timeout=30) == 0
    finally:
        if serve.poll() is None:
            serve.kill()
            for pid in processes:  # never leave a server behind when the test fails
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
    left = [pid for pid in processes if Path(f"/proc/{pid}").exists()]
    assert left == []

"""Test helper: a real experiment worker (`DOJO_Q_ROLE=experiments manage.py qcluster`) on this test's database."""

import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.dburl import subprocess_database_url


def experiment_workers_start(dojo_home, settings, workers: int = 2, broker: dict | None = None) -> subprocess.Popen:
    """A real experiments-role qcluster, sharing this test's database (and queue: the `broker` fixture)."""
    env = os.environ | (broker or {}) | {
        "DATABASE_URL": subprocess_database_url(), "SECRET_KEY": settings.SECRET_KEY,
        "DOJO_HOME": str(dojo_home), "DOJO_Q_ROLE": "experiments", "DOJO_DISPATCH": "queue",
        "DOJO_EXPERIMENT_WORKERS": str(workers),
    }
    # Its log goes to a file beside the test's DOJO_HOME, for worker_log() when a test fails.
    log = open(Path(dojo_home).parent / f"qcluster-{len(list(Path(dojo_home).parent.glob('qcluster-*.log')))}.log", "ab")  # noqa: SIM115
    with log:
        return subprocess.Popen(
            [sys.executable, str(settings.BASE_DIR / "manage.py"), "qcluster"], env=env, start_new_session=True,
            stdout=log, stderr=subprocess.STDOUT,
        )


def worker_log(dojo_home, tail: int = 6000) -> str:
    """The end of every experiment worker log this test wrote (for failure messages)."""
    return "\n".join(
        f"--- {path.name}\n" + path.read_text(errors="replace")[-tail:]
        for path in sorted(Path(dojo_home).parent.glob("qcluster-*.log"))
    )


def process_group_stop(cluster: subprocess.Popen) -> None:
    try:
        os.killpg(cluster.pid, signal.SIGTERM)
        cluster.wait(timeout=20)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        pass
    finally:
        if cluster.poll() is None:
            os.killpg(cluster.pid, signal.SIGKILL)
            cluster.wait()

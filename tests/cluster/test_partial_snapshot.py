"""A freeze killed with -9 leaves a half-written snapshot; the next freeze or worker start removes it."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.conf import settings

from agentrun.apps import _reap_on_worker_start
from domains.services import task_freeze, task_tools_save, task_verify
from tests.dburl import subprocess_database_url
from tests.domains.taskkit import EVALUATE_REGRESSION, LOAD_REGRESSION, make_domain, task_of

# Slow only once the flag file exists, so verification (before it) stays fast.
SLOW_LOAD = LOAD_REGRESSION.replace(
    "def load_data():\n",
    "def load_data():\n    import os, time\n    if os.path.exists('slow.flag'):\n        time.sleep(120)\n",
)


def _partials() -> list[Path]:
    return list((Path(settings.DOJO_HOME) / "snapshots").glob("*/*.partial"))


def _killed_freeze(workspace: Path):
    domain = make_domain(workspace, name="killed")
    task = task_of(domain)
    task_tools_save(task=task, codes={"load_data": SLOW_LOAD, "evaluate": EVALUATE_REGRESSION}, origin="human")
    assert task_verify(task=task).ok
    (workspace / "slow.flag").write_text("1")
    env = os.environ | {"DATABASE_URL": subprocess_database_url(), "DOJO_HOME": str(settings.DOJO_HOME),
                        "SECRET_KEY": settings.SECRET_KEY}
    freezer = subprocess.Popen(
        [sys.executable, str(settings.BASE_DIR / "manage.py"), "dojo_task", "freeze", "--domain", "killed"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    deadline = time.monotonic() + 60
    while not _partials() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _partials(), "the freeze never started writing its snapshot"
    os.killpg(freezer.pid, signal.SIGKILL)
    freezer.wait(timeout=10)
    assert _partials(), "kill -9 leaves the partial behind (what this test is about)"
    (workspace / "slow.flag").unlink()
    return task


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_it_removes_a_killed_freezes_partial_snapshot_at_the_next_freeze(workspace):
    task = _killed_freeze(workspace)
    task.refresh_from_db()
    task_freeze(task=task)
    assert _partials() == []
    task.refresh_from_db()
    assert task.is_frozen and Path(task.snapshot_path).is_dir()


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_it_removes_a_killed_freezes_partial_snapshot_when_a_worker_starts(workspace):
    _killed_freeze(workspace)
    _reap_on_worker_start(sender=None)
    assert _partials() == []


@pytest.mark.django_db
def test_it_keeps_a_partial_whose_writer_is_alive(dojo_home):
    import socket

    from domains.snapshot import snapshots_partial_clean

    alive = dojo_home / "snapshots" / "domain-1" / f"abc.{socket.gethostname()}.{os.getpid()}.partial"
    alive.mkdir(parents=True)
    other_host_recent = dojo_home / "snapshots" / "domain-1" / "abc.elsewhere.1.partial"
    other_host_recent.mkdir()
    assert snapshots_partial_clean() == []
    assert alive.is_dir() and other_host_recent.is_dir()

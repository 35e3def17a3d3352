"""A run survives a PostgreSQL restart of a few seconds: the worker's connections are checked and replaced,
and the statements that failed outside a transaction are retried (dojo_site/db/postgresql). The test starts
its own PostgreSQL instance (initdb + pg_ctl), runs `dojo_demo` against it and restarts it mid-run."""

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from django.conf import settings

BINDIRS = sorted(Path("/usr/lib/postgresql").glob("*/bin"))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PrivatePostgres:
    def __init__(self) -> None:
        self.bindir = BINDIRS[-1]
        self.root = Path(tempfile.mkdtemp(prefix="dojo-pg-", dir="/tmp"))
        self.data = self.root / "data"
        self.port = _free_port()
        self.user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self.user:
            shutil.chown(self.root, "postgres")
        self._as_owner(str(self.bindir / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres")

    def _as_owner(self, *cmd: str) -> None:
        subprocess.run([*self.user, *cmd], check=True, capture_output=True, timeout=120)

    def start(self) -> None:
        self._as_owner(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l", str(self.root / "log"), "-w",
                       "-o", f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1", "start")

    def stop(self, mode: str = "fast") -> None:
        self._as_owner(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")

    def url(self, db: str) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{db}"

    def query(self, sql: str):
        import psycopg

        with psycopg.connect(self.url("dojo"), connect_timeout=5) as conn:
            return conn.execute(sql).fetchall()


@pytest.fixture
def private_postgres():
    if not BINDIRS or (os.geteuid() == 0 and not shutil.which("runuser")):
        pytest.skip("PostgreSQL server binaries (Debian's postgresql) are not installed")
    pytest.importorskip("psycopg", reason="the postgres extra is not installed")
    pg = PrivatePostgres()
    pg.start()
    subprocess.run([str(pg.bindir / "createdb"), "-h", "127.0.0.1", "-p", str(pg.port), "-U", "postgres", "dojo"],
                   check=True, timeout=60)
    yield pg
    try:
        pg.stop("immediate")
    except subprocess.CalledProcessError:
        pass
    shutil.rmtree(pg.root, ignore_errors=True)


@pytest.mark.slow
def test_a_run_survives_a_postgresql_restart(private_postgres, tmp_path):
    pg = private_postgres
    env = os.environ | {"DATABASE_URL": pg.url("dojo"), "SECRET_KEY": "k" * 50, "DOJO_HOME": str(tmp_path / "home"),
                        "DOJO_HEARTBEAT_TIMEOUT_SECONDS": "120"}
    manage = [sys.executable, str(settings.BASE_DIR / "manage.py")]
    subprocess.run([*manage, "migrate", "--noinput", "-v", "0"], env=env, check=True, timeout=300)
    demo = subprocess.Popen([*manage, "dojo_demo", "--experiments", "40"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and demo.poll() is None:
            done = pg.query("SELECT count(*) FROM experiments_experiment WHERE state = 'completed'")[0][0] \
                if pg.query("SELECT count(*) FROM agentrun_agentrun WHERE status = 'running'")[0][0] else 0
            if done >= 3:
                break
            time.sleep(0.5)
        assert demo.poll() is None, "the demo ended before the restart: " + demo.stdout.read()[-2000:]
        pg.stop("fast")  # closes every connection of the running demo
        time.sleep(5)
        pg.start()
        output, _ = demo.communicate(timeout=600)
    finally:
        if demo.poll() is None:
            demo.kill()
    assert demo.returncode == 0, output[-3000:]
    (status, error), = pg.query("SELECT status, error FROM agentrun_agentrun ORDER BY id DESC LIMIT 1")
    assert status == "completed", (status, error, output[-3000:])
    assert pg.query("SELECT count(*) FROM experiments_experiment WHERE state = 'running'")[0][0] == 0

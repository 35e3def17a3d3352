"""Both queue brokers carry a run to a real worker: the database (orm, the default) and Redis
(DOJO_BROKER=redis, this machine's Redis on 127.0.0.1:6379); the lost-run reaper works on both."""

import os
import subprocess
import sys
from datetime import timedelta

import pytest
from django.conf import settings
from django.utils import timezone
from django_q.brokers import get_broker

from agentrun.models import AgentRun
from agentrun.services import run_reap, run_start
from tests.agentrun.helpers import wait_for
from tests.dburl import subprocess_database_url


def _manage(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(settings.BASE_DIR / "manage.py"), *args],
        env=os.environ | env, capture_output=True, text=True, timeout=120,
    )


def test_it_configures_the_redis_broker_from_the_environment(tmp_path):
    code = "from django.conf import settings; q = settings.Q_CLUSTER; print(q.get('redis'), q.get('orm'), q['name'])"
    done = _manage("shell", "-c", code, DOJO_BROKER="redis", REDIS_URL="redis://10.0.0.9:6380/2",
                   DOJO_QUEUE_NAME="lab2", DOJO_HOME=str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1].split() == ["redis://10.0.0.9:6380/2", "None", "lab2"]


def test_it_refuses_an_unknown_broker_in_one_line(tmp_path):
    done = _manage("check", DOJO_BROKER="rabbit", DOJO_HOME=str(tmp_path))
    assert done.returncode != 0
    assert "DOJO_BROKER must be orm or redis" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.slow
def test_a_real_worker_executes_a_run_through_each_broker(frozen_domain, dojo_home, broker):
    env = os.environ | broker | {
        "DATABASE_URL": subprocess_database_url(), "SECRET_KEY": settings.SECRET_KEY, "DOJO_HOME": str(dojo_home),
    }
    worker = subprocess.Popen([sys.executable, str(settings.BASE_DIR / "manage.py"), "qcluster"], env=env,
                              start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        run = run_start(domain=frozen_domain, max_experiments=2)
        wait_for(lambda: AgentRun.objects.get(pk=run.pk).is_terminal, timeout=120, what="the worker to finish the run")
    finally:
        os.killpg(worker.pid, 15)
        worker.wait(timeout=30)
    run.refresh_from_db()
    assert run.status == "completed", run.error
    assert run.experiments.filter(state="completed").count() == 2


def test_the_reaper_requeues_a_run_a_dead_cluster_popped_from_redis(frozen_domain, broker):
    if broker["DOJO_BROKER"] != "redis":
        pytest.skip("the ORM broker's case is in test_queue_reaper.py")
    run = run_start(domain=frozen_domain, max_experiments=1)
    queue = get_broker()
    assert queue.queue_size() == 1
    assert run_reap() == []  # waiting in the queue: left alone
    assert queue.dequeue()  # a cluster took it ... and died
    AgentRun.objects.filter(pk=run.pk).update(created_at=timezone.now() - timedelta(minutes=2))
    assert run_reap() == [run.pk]
    run.refresh_from_db()
    assert run.status == "queued" and run.result["requeued"] == 1
    assert queue.queue_size() == 1

"""A Dojo cluster on this one box: a web node and N worker "machines" (issue 13 item 7).

    .venv/bin/python bench/cluster.py                       # N = 1 and 2, 4 runs x 100 experiments, kill test
    .venv/bin/python bench/cluster.py --quick               # N = 1, 1 run x 3 experiments, inline, no netns, no kill
    .venv/bin/python bench/cluster.py --workers 1,2 --runs 4 --experiments 100 --repeat 1 \
        [--dispatch auto|inline|queue|inline,queue] [--no-netns] [--no-pin] [--no-kill]

What it builds, all of it its own and removed at the end (also on Ctrl-C or SIGTERM): a PostgreSQL
database `dojo_cluster_bench_<pid>` (127.0.0.1:5432), a Redis queue `dojo-cluster-bench-<pid>`
(127.0.0.1:6379, DOJO_BROKER=redis), one SECRET_KEY, and a temporary folder holding `web/` (the web
node's DOJO_HOME, where tasks are frozen), `storage/` (DOJO_SHARED_STORAGE_DIR of every machine),
`workspaces/` and `worker-<i>/` (each worker's own DOJO_HOME and DOJO_CACHE_DIR).
- The web node: `manage.py runserver` on 127.0.0.1, DOJO_INLINE_TASKS=0; runs are queued through its
  API (`POST /api/runs`, a bearer token).
- Worker i: `manage.py qcluster` (with DOJO_DISPATCH=queue also a `DOJO_Q_ROLE=experiments` one),
  pinned to CPU i mod ncpu (a one-core "machine": DOJO_CPU_SHARE=0.5 gives one experiment slot).
  As root it gets its own mount namespace in which the web node's DOJO_HOME is an empty tmpfs (the
  other machine's disk is not there: the snapshot has to come from the shared storage) and, when
  `ip netns add` works and socat is installed, its own network namespace `dojo-cb<pid>-<i>` joined by
  a veth pair 10.<a>.<i>.1/30 (host) <-> .2 (worker): PostgreSQL and Redis are reached at the
  host-side veth address, where a socat relay forwards to 127.0.0.1. The shared PostgreSQL listens on
  localhost only and adding a listen address needs a restart that would cut off everyone else using
  it; the relay changes neither service. Whatever is not possible is printed as a note.

Each phase sets up a fresh diabetes domain (`dojo_init --data-path sklearn:load_diabetes`, `dojo_task
setup`), so no phase builds on another's knowledge, queues `--runs` built-in researcher runs of at most
`--experiments` experiments (the researcher also stops on a plateau) and waits for them. Printed:
- experiments per minute for each N and dispatch mode (completed experiments / (last run finished -
  first run queued)), the median over `--repeat`, and which worker executed each run;
- dispatch: a probe (one run, one experiment at a time, one idle worker) gives per experiment the time
  from its record to the process that runs it taking it, and from its end to the run having the
  result; with DOJO_DISPATCH=inline there is no queue between them, with queue there is. Also a no-op
  django-q2 task's round trip on an idle worker, and enqueue -> started of runs that found a free slot;
- database writes: PostgreSQL's own counters for the bench database (pg_stat_database: commits,
  rows inserted/updated) over each phase, per experiment and per second, and what this PostgreSQL
  takes directly (single-row INSERT commits per second on 1 and 4 connections);
- the kill test (per dispatch mode): N = 2, the runs queued, every process of the busiest worker
  "machine" killed with SIGKILL once a fifth of the experiments are done; then the runs' and
  experiments' end states and row counts (nothing left pending or running). Workers use
  DOJO_HEARTBEAT_TIMEOUT_SECONDS=20 (default 120) so the reaper acts within a minute or two;
- the load average at the start and the end: on a shared 2-core box, read every figure with it.
"""

import argparse
import contextlib
import json
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
sys.path.insert(0, str(ROOT))
from dojo_site.procs import process_tree  # noqa: E402

PG_ADMIN = "postgres://postgres@127.0.0.1:5432/postgres"
HEARTBEAT_SECONDS = 20


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def say(message: str) -> None:
    print(f"[{datetime.now(UTC):%H:%M:%S}] {message}", flush=True)


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


@dataclass
class Worker:
    index: int
    home: Path
    processes: list[subprocess.Popen] = field(default_factory=list)  # its qcluster(s)
    netns: str = ""
    relays: list[subprocess.Popen] = field(default_factory=list)
    log: Path | None = None


class Cluster:
    """Everything the bench starts, so that `close` can remove all of it."""

    def __init__(self, *, base: Path, use_netns: bool, pin: bool, q_workers: int, cpu_share: float):
        self.base = base
        self.tag = f"{os.getpid()}"
        self.db_name = f"dojo_cluster_bench_{self.tag}"
        self.queue_name = f"dojo-cluster-bench-{self.tag}"
        self.shared = base / "web"  # the web node's DOJO_HOME, where tasks are frozen
        self.storage = base / "storage"  # DOJO_SHARED_STORAGE_DIR of every machine
        self.hide_web_home = False  # workers get a private mount namespace with self.shared hidden
        self.workspaces = base / "workspaces"
        self.secret = secrets.token_urlsafe(50)
        self.use_netns = use_netns
        self.pin = pin
        self.q_workers = q_workers
        self.cpu_share = cpu_share
        self.dispatch = "inline"  # or "queue" (DOJO_DISPATCH, helper h3): each phase sets it
        self.run_parallel = 0
        self.web: subprocess.Popen | None = None
        self.web_port = 0
        self.workers: list[Worker] = []
        self.db_created = False
        self.netns_made: list[str] = []
        self.subnet = 200 + os.getpid() % 50  # 10.<subnet>.<i>.0/30; the pid keeps two benches apart

    # --- environment -------------------------------------------------------------------------

    def env(self, *, home: Path, host: str = "127.0.0.1") -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DOJO_", "DJANGO_"))}
        env.update(
            DATABASE_URL=f"postgres://postgres@{host}:5432/{self.db_name}",
            SECRET_KEY=self.secret,
            DOJO_BROKER="redis",
            REDIS_URL=f"redis://{host}:6379/0",
            DOJO_QUEUE_NAME=self.queue_name,
            DOJO_HOME=str(home),
            # The snapshot-storage settings (helper h1); harmless where this Dojo does not know them.
            DOJO_SHARED_STORAGE_DIR=str(self.storage),
            DOJO_CACHE_DIR=str(home / "cache"),
            DOJO_HEARTBEAT_TIMEOUT_SECONDS=str(HEARTBEAT_SECONDS),
            DOJO_POOL_IDLE_SECONDS="60",
            DOJO_LOG_LEVEL="WARNING",
            DOJO_DISPATCH=self.dispatch,
            PYTHONPATH=str(ROOT),
            PYTHONUNBUFFERED="1",
        )
        return env

    def manage(self, *args: str, home: Path | None = None, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run(
            [PYTHON, str(ROOT / "manage.py"), *args], env=self.env(home=home or self.shared), cwd=ROOT,
            capture_output=True, text=True,
        )
        if check and result.returncode:
            raise RuntimeError(f"manage.py {' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
        return result

    # --- database and Django in this process ---------------------------------------------------

    def database_create(self) -> None:
        import psycopg

        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.db_name}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{self.db_name}"')
        self.db_created = True

    def django_setup(self) -> None:
        os.environ.update(self.env(home=self.shared))
        os.environ["DJANGO_SETTINGS_MODULE"] = "dojo_site.settings"
        sys.path.insert(0, str(ROOT))
        import django

        django.setup()

    # --- network namespaces --------------------------------------------------------------------

    def netns_possible(self) -> str:
        """'' when workers can get their own network namespace here, else why not."""
        if os.geteuid() != 0:
            return "not root"
        if not shutil.which("ip"):
            return "no `ip` (iproute2)"
        if not shutil.which("socat"):
            return "no socat for the relay to PostgreSQL/Redis"
        probe = f"dojo-cb{self.tag}-probe"
        made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
        if made.returncode:
            return f"`ip netns add` failed: {made.stderr.strip()}"
        subprocess.run(["ip", "netns", "del", probe], capture_output=True)
        return ""

    def hiding_possible(self) -> str:
        """'' when a worker can be given a mount namespace without the web node's DOJO_HOME, else why not."""
        if os.geteuid() != 0 or not shutil.which("unshare"):
            return "not root or no unshare"
        self.shared.mkdir(parents=True, exist_ok=True)
        (self.shared / "probe").touch()
        probe = subprocess.run(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c",
             'mount -t tmpfs none "$0" && test ! -e "$0/probe"', str(self.shared)],
            capture_output=True, text=True,
        )
        (self.shared / "probe").unlink(missing_ok=True)
        return "" if probe.returncode == 0 else f"unshare --mount failed: {probe.stderr.strip()[:200]}"

    def netns_make(self, worker: Worker) -> str:
        """The worker's namespace and veth pair; returns the host-side address it reaches services at."""
        i = worker.index
        name = f"dojo-cb{self.tag}-{i}"
        host_if, peer_if = f"cbh{self.tag}{i}"[-15:], f"cbp{self.tag}{i}"[-15:]
        host_ip, peer_ip = f"10.{self.subnet}.{i}.1", f"10.{self.subnet}.{i}.2"
        for command in (
            ["ip", "netns", "add", name],
            ["ip", "link", "add", host_if, "type", "veth", "peer", "name", peer_if],
            ["ip", "link", "set", peer_if, "netns", name],
            ["ip", "addr", "add", f"{host_ip}/30", "dev", host_if],
            ["ip", "link", "set", host_if, "up"],
            ["ip", "netns", "exec", name, "ip", "addr", "add", f"{peer_ip}/30", "dev", peer_if],
            ["ip", "netns", "exec", name, "ip", "link", "set", peer_if, "up"],
            ["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"],
        ):
            subprocess.run(command, check=True, capture_output=True)
            if command[:3] == ["ip", "netns", "add"]:
                self.netns_made.append(name)
        worker.netns = name
        for port in (5432, 6379):
            worker.relays.append(subprocess.Popen(
                ["socat", f"TCP-LISTEN:{port},bind={host_ip},fork,reuseaddr", f"TCP:127.0.0.1:{port}"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            ))
        time.sleep(0.3)
        return host_ip

    # --- processes -----------------------------------------------------------------------------

    def web_start(self) -> None:
        import socket

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.web_port = probe.getsockname()[1]
        env = self.env(home=self.shared)
        env["DOJO_INLINE_TASKS"] = "0"  # a web node never runs untrusted code
        log = open(self.base / "web.log", "w")  # noqa: SIM115 - closed with the process
        self.web = subprocess.Popen(
            [PYTHON, str(ROOT / "manage.py"), "runserver", f"127.0.0.1:{self.web_port}", "--noreload"],
            env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.web_port}/api/config", timeout=2)  # noqa: S310
                return
            except urllib.error.HTTPError:
                return  # it answers (401 without a token)
            except OSError:
                time.sleep(0.3)
        raise RuntimeError(f"the web node did not answer within 60 s; see {self.base / 'web.log'}")

    def workers_start(self, count: int) -> list[Worker]:
        """Start `count` worker machines: a `qcluster` each (and, with DOJO_DISPATCH=queue, a second
        one serving the experiments queue), and wait until every cluster has registered."""
        started = []
        for i in range(count):
            worker = Worker(index=len(self.workers) + 1, home=self.base / f"worker-{len(self.workers) + 1}")
            worker.home.mkdir(parents=True, exist_ok=True)
            self.workers.append(worker)
            host = self.netns_make(worker) if self.use_netns else "127.0.0.1"
            env = self.env(home=worker.home, host=host)
            env["DOJO_Q_WORKERS"] = str(self.q_workers)
            env["DOJO_CPU_SHARE"] = str(self.cpu_share)
            if self.run_parallel:
                env["DOJO_RUN_PARALLEL"] = str(self.run_parallel)
            roles = ["runs", "experiments"] if self.dispatch == "queue" else ["runs"]
            worker.log = self.base / f"worker-{worker.index}.log"
            log = open(worker.log, "a")  # noqa: SIM115 - the children hold it
            for role in roles:
                argv = [PYTHON, str(ROOT / "manage.py"), "qcluster"]
                if self.pin:
                    argv = ["taskset", "-c", str(i % (os.cpu_count() or 1)), *argv]
                if self.hide_web_home:
                    # Another machine's disk is not there: an empty tmpfs over the web node's DOJO_HOME.
                    argv = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                            'mount -t tmpfs -o size=1m,mode=0700 none "$0" && exec "$@"', str(self.shared), *argv]
                if worker.netns:
                    argv = ["ip", "netns", "exec", worker.netns, *argv]
                worker.processes.append(subprocess.Popen(
                    argv, env={**env, "DOJO_Q_ROLE": role}, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                    start_new_session=True,
                ))
            started.append(worker)
        import redis

        live = sum(len(w.processes) for w in self.workers if any(p.poll() is None for p in w.processes))
        deadline = time.monotonic() + 120
        client = redis.Redis.from_url("redis://127.0.0.1:6379/0")
        while time.monotonic() < deadline:
            # Every live cluster, of either role, keeps a stats key (3 s expiry) under the queue's prefix.
            if len(list(client.scan_iter(match=f"django_q:{self.queue_name}:*cluster:*"))) >= live:
                return started
            for worker in started:
                for process in worker.processes:
                    if process.poll() is not None:
                        raise RuntimeError(f"worker {worker.index} exited ({process.returncode}); see {worker.log}")
            time.sleep(0.5)
        raise RuntimeError(f"workers did not register with the queue within 120 s; see {self.base}/worker-*.log")

    def worker_pids(self, worker: Worker) -> set[int]:
        """Every process of the worker's "machine": its namespace's, or its process tree's."""
        pids = set()
        if worker.netns:
            listed = subprocess.run(["ip", "netns", "pids", worker.netns], capture_output=True, text=True)
            pids |= {int(p) for p in listed.stdout.split()}
        for process in worker.processes:
            if process.poll() is None:  # a reaped pid may belong to someone else by now
                pids |= process_tree(process.pid)
        return pids

    def worker_kill(self, worker: Worker) -> int:
        pids = self.worker_pids(worker)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for process in worker.processes:
            process.wait()
        return len(pids)

    def worker_stop(self, worker: Worker) -> None:
        """As systemd would: SIGTERM to the group, SIGKILL to what is left after 20 s."""
        for process in worker.processes:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGTERM)
        for process in worker.processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=20)
        self.worker_kill(worker)
        worker.processes = []
        for relay in worker.relays:
            relay.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                relay.wait(timeout=5)
            if relay.poll() is None:
                relay.kill()
        worker.relays = []
        if worker.netns:
            subprocess.run(["ip", "netns", "del", worker.netns], capture_output=True)
            if worker.netns in self.netns_made:
                self.netns_made.remove(worker.netns)
            worker.netns = ""

    def workers_stop(self) -> None:
        for worker in self.workers:
            self.worker_stop(worker)
        self.workers = []
        self.workers_stats_clear()

    def workers_stats_clear(self) -> None:
        """Forget dead clusters' stats in Redis, so the next phase waits for its own workers."""
        import redis

        client = redis.Redis.from_url("redis://127.0.0.1:6379/0")
        for key in client.scan_iter(match=f"django_q:{self.queue_name}:cluster*"):
            client.delete(key)

    # --- the end -------------------------------------------------------------------------------

    def close(self) -> None:
        for worker in self.workers:
            with contextlib.suppress(Exception):
                self.worker_stop(worker)
        if self.web and self.web.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.web.pid, signal.SIGTERM)
            try:
                self.web.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.web.pid, signal.SIGKILL)
        # Warm sandbox pools outlive their cluster until idle; they name our folder on their command line.
        for pid in processes_naming(str(self.base)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for name in list(self.netns_made):
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
        with contextlib.suppress(Exception):
            import redis

            client = redis.Redis.from_url("redis://127.0.0.1:6379/0")
            for key in client.scan_iter(match=f"django_q:{self.queue_name}:*"):
                client.delete(key)
        with contextlib.suppress(Exception):
            from django.db import connections

            connections.close_all()
        if self.db_created:
            import psycopg

            with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{self.db_name}" WITH (FORCE)')
        shutil.rmtree(self.base, ignore_errors=True)


def processes_naming(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if text.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


# --- the bench -------------------------------------------------------------------------------


def domain_setup(cluster: Cluster, name: str) -> int:
    from domains.models import Domain

    workspace = cluster.workspaces / name
    workspace.mkdir(parents=True)
    cluster.manage("dojo_init", "--name", name, "--task-type", "regression", "--workspace", str(workspace),
                   "--data-path", "sklearn:load_diabetes", "--non-interactive")
    cluster.manage("dojo_task", "setup", "--domain", name)
    return Domain.objects.get(name=name).pk


def snapshot_note(cluster: Cluster, result: dict) -> str:
    """How the workers got the frozen snapshot, from what they left in their cache folders."""
    fetched = result["snapshot_fetched"]
    if cluster.hide_web_home:
        where = ("each worker runs in its own mount namespace where the web node's DOJO_HOME (where the task was "
                 "frozen) is an empty tmpfs, so the snapshot can only come from the shared storage "
                 f"(DOJO_SHARED_STORAGE_DIR={cluster.storage})")
    else:
        where = ("workers see the web node's DOJO_HOME (same file system): a snapshot is used in place when its "
                 "recorded folder exists")
    return (f"{where}; each worker has its own DOJO_HOME and DOJO_CACHE_DIR; workers that fetched the snapshot "
            f"into their cache: {fetched}")


def api(cluster: Cluster, token: str, method: str, path: str, body: dict | None = None) -> dict:
    request = urllib.request.Request(
        f"http://127.0.0.1:{cluster.web_port}{path}", method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 - our own web node
        return json.loads(response.read())


def pg_counters(cluster: Cluster) -> dict[str, float]:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_stat_clear_snapshot()")
        cursor.execute(
            "SELECT xact_commit, tup_inserted, tup_updated, tup_deleted FROM pg_stat_database WHERE datname = %s",
            [cluster.db_name],
        )
        row = cursor.fetchone()
    return {"commits": row[0], "inserted": row[1], "updated": row[2], "deleted": row[3], "at": time.monotonic()}


def runs_wait(run_ids: list[int], *, timeout: float) -> bool:
    from agentrun.models import AgentRun

    deadline = time.monotonic() + timeout
    ended = {AgentRun.Status.COMPLETED, AgentRun.Status.FAILED, AgentRun.Status.STOPPED}
    while time.monotonic() < deadline:
        if all(s in ended for s in AgentRun.objects.filter(pk__in=run_ids).values_list("status", flat=True)):
            return True
        time.sleep(1)
    return False


def runs_settle(run_ids: list[int], *, quiet: float, cap: float = 1800) -> bool:
    """Wait until every run has ended, or none has been running for `quiet` seconds (what is left
    is then `queued` with nobody to take it); True when all ended."""
    from agentrun.models import AgentRun

    ended = {AgentRun.Status.COMPLETED, AgentRun.Status.FAILED, AgentRun.Status.STOPPED}
    deadline, idle_since = time.monotonic() + cap, None
    while time.monotonic() < deadline:
        statuses = list(AgentRun.objects.filter(pk__in=run_ids).values_list("status", flat=True))
        if all(s in ended for s in statuses):
            return True
        if AgentRun.Status.RUNNING in statuses:
            idle_since = None
        elif idle_since is None:
            idle_since = time.monotonic()
        elif time.monotonic() - idle_since >= quiet:
            return False
        time.sleep(1)
    return False


def runs_queue(cluster: Cluster, token: str, domain_id: int, *, runs: int, experiments: int) -> list[int]:
    return [
        api(cluster, token, "POST", "/api/runs", {"domain_id": domain_id, "backend": "builtin",
                                                    "max_experiments": experiments, "seed": seed})["id"]
        for seed in range(runs)
    ]


def experiment_latencies(run_ids: list[int]) -> dict[str, list[float]]:
    """Per experiment of these runs, in ms: recorded -> taken by the process that runs it
    (started_at - created_at) and finished -> the run has seen the result (its experiment event)."""
    from agentrun.models import AgentEvent
    from experiments.models import Experiment

    seen = {}
    for data, at in AgentEvent.objects.filter(run_id__in=run_ids, type="experiment").values_list("data", "created_at"):
        if isinstance(data, dict) and data.get("experiment_id"):
            seen[data["experiment_id"]] = at
    to_worker, back = [], []
    for pk, created, started, finished in Experiment.objects.filter(run_id__in=run_ids).values_list(
        "pk", "created_at", "started_at", "finished_at"
    ):
        if started:
            to_worker.append((started - created).total_seconds() * 1000)
        if finished and pk in seen:
            back.append((seen[pk] - finished).total_seconds() * 1000)
    return {"to_worker": to_worker, "back": back}


def phase_throughput(cluster: Cluster, token: str, *, workers: int, runs: int, experiments: int, label: str) -> dict:
    from agentrun.models import AgentRun
    from experiments.models import Experiment

    domain_id = domain_setup(cluster, label)
    # With queue dispatch a run may keep every experiment slot of the cluster busy.
    cluster.run_parallel = workers * max(1, int((os.cpu_count() or 1) * cluster.cpu_share)) if cluster.dispatch == "queue" else 0
    cluster.workers_start(workers)
    before = pg_counters(cluster)
    queued_at = time.time()
    run_ids = runs_queue(cluster, token, domain_id, runs=runs, experiments=experiments)
    finished = runs_wait(run_ids, timeout=max(600, runs * experiments * 6))
    time.sleep(1.5)  # PostgreSQL publishes a backend's counters within a second of its last commit
    after = pg_counters(cluster)
    machines = {w.index: cluster.worker_pids(w) for w in cluster.workers}
    fetched = {w.index: any((w.home / "cache" / "snapshots").glob("*")) for w in cluster.workers}
    cluster.workers_stop()
    runs_rows = list(AgentRun.objects.filter(pk__in=run_ids))
    runs_per_worker = {
        index: sum(r.worker_pid in pids for r in runs_rows) for index, pids in sorted(machines.items())
    }
    done = Experiment.objects.filter(run_id__in=run_ids, state=Experiment.State.COMPLETED).count()
    total = Experiment.objects.filter(run_id__in=run_ids).count()
    last = max((r.finished_at for r in runs_rows if r.finished_at), default=None)
    seconds = (last.timestamp() - queued_at) if last else float("nan")
    slots = workers * cluster.q_workers
    by_start = sorted(runs_rows, key=lambda r: r.created_at)
    round_trips = [(r.started_at - r.created_at).total_seconds() for r in by_start[:slots] if r.started_at]
    return {
        "label": label, "domain_id": domain_id, "workers": workers, "dispatch": cluster.dispatch, "finished": finished,
        "statuses": sorted(r.status for r in runs_rows), "experiments_completed": done, "experiments": total,
        "seconds": seconds, "per_minute": done / seconds * 60 if seconds == seconds and seconds > 0 else 0.0,
        "run_round_trips": round_trips, "runs_per_worker": runs_per_worker,
        "snapshot_fetched": fetched,
        "commits": after["commits"] - before["commits"], "inserted": after["inserted"] - before["inserted"],
        "updated": after["updated"] - before["updated"], "db_seconds": after["at"] - before["at"],
    }


def phase_dispatch(cluster: Cluster, token: str, *, experiments: int) -> dict:
    """One run, one experiment at a time, one idle worker machine: how long an experiment waits to be
    taken and how long its result takes to reach the run, with nothing else queued."""
    domain_id = domain_setup(cluster, f"dispatch-{cluster.dispatch}")
    cluster.run_parallel = 1 if cluster.dispatch == "queue" else 0
    cluster.workers_start(1)
    try:
        run_ids = runs_queue(cluster, token, domain_id, runs=1, experiments=experiments)
        runs_wait(run_ids, timeout=max(300, experiments * 10))
    finally:
        cluster.workers_stop()
    return {"dispatch": cluster.dispatch, **experiment_latencies(run_ids)}


def phase_queue_round_trip(cluster: Cluster, *, samples: int = 20) -> dict[str, list[float]]:
    """A no-op task (math.floor) through the queue to one idle worker, in ms: enqueue -> done on the
    worker (django-q2 stamps `started` at enqueue, `stopped` when the function returned), and enqueue ->
    its result visible in the database to the enqueuer (polled every 5 ms)."""
    from django_q.models import Task
    from django_q.tasks import async_task

    cluster.dispatch, cluster.run_parallel = "inline", 0
    cluster.workers_start(1)
    done_on_worker, result_seen = [], []
    try:
        for i in range(samples + 2):
            sent = time.perf_counter()
            task_id = async_task("math.floor", 1.5, task_name=f"bench-noop-{i}")
            deadline = time.monotonic() + 30
            task = None
            while time.monotonic() < deadline:
                task = Task.objects.filter(id=task_id).first()
                if task:
                    break
                time.sleep(0.005)
            if task and i >= 2:  # two warm-up round trips
                result_seen.append((time.perf_counter() - sent) * 1000)
                done_on_worker.append((task.stopped - task.started).total_seconds() * 1000)
    finally:
        cluster.workers_stop()
    return {"done_on_worker": done_on_worker, "result_seen": result_seen}


def phase_db_capacity(cluster: Cluster, *, rows: int = 2000) -> dict[str, float]:
    """Single-row INSERT commits per second into a scratch table (what one write of Dojo's costs)."""
    import threading

    import psycopg

    url = f"postgres://postgres@127.0.0.1:5432/{cluster.db_name}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS bench_writes (id bigserial primary key, run int, data jsonb)")
    result = {}
    for connections in (1, 4):
        def writer(count: int) -> None:
            with psycopg.connect(url, autocommit=True) as conn:
                for _ in range(count):
                    conn.execute("INSERT INTO bench_writes (run, data) VALUES (1, %s)", ['{"type": "experiment", "x": 1}'])

        threads = [threading.Thread(target=writer, args=(rows // connections,)) for _ in range(connections)]
        start = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        result[f"commits_per_s_{connections}"] = rows / (time.perf_counter() - start)
    return result


def experiment_states(run_ids: list[int]) -> dict[str, int]:
    from django.db.models import Count

    from experiments.models import Experiment

    rows = Experiment.objects.filter(run_id__in=run_ids).values_list("state").annotate(n=Count("id"))
    return dict(sorted(rows))


def phase_kill(cluster: Cluster, token: str, *, runs: int, experiments: int, wait: float) -> dict:
    """N = 2; once a fifth of the experiments are done, every process of one worker machine that is
    executing something gets SIGKILL (a machine that loses power). Then wait for the runs to end."""
    from agentrun.models import AgentEvent, AgentRun
    from experiments.models import Experiment

    domain_id = domain_setup(cluster, f"kill-{cluster.dispatch}")
    cluster.run_parallel = 2 * max(1, int((os.cpu_count() or 1) * cluster.cpu_share)) if cluster.dispatch == "queue" else 0
    workers = cluster.workers_start(2)
    run_ids = runs_queue(cluster, token, domain_id, runs=runs, experiments=experiments)
    target = max(1, runs * experiments // 5)
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        if Experiment.objects.filter(run_id__in=run_ids, state=Experiment.State.COMPLETED).count() >= target:
            break
        time.sleep(0.5)
    # The victim: the worker executing the most of it (runs, or with queue dispatch experiments).
    busy = list(AgentRun.objects.filter(pk__in=run_ids, status=AgentRun.Status.RUNNING).values_list("worker_pid", flat=True))
    if hasattr(Experiment, "worker_pid"):
        busy += list(Experiment.objects.filter(run_id__in=run_ids, state=Experiment.State.RUNNING)
                     .values_list("worker_pid", flat=True))
    victim = max(workers, key=lambda w: sum(pid in cluster.worker_pids(w) for pid in busy))
    victim_pids = cluster.worker_pids(victim)
    victim_runs = sorted(AgentRun.objects.filter(pk__in=run_ids, status=AgentRun.Status.RUNNING,
                                                 worker_pid__in=victim_pids).values_list("pk", flat=True))
    victim_experiments = 0
    if hasattr(Experiment, "worker_pid"):
        victim_experiments = Experiment.objects.filter(run_id__in=run_ids, state=Experiment.State.RUNNING,
                                                       worker_pid__in=victim_pids).count()
    at_kill = experiment_states(run_ids)
    killed_at = time.monotonic()
    killed = cluster.worker_kill(victim)
    say(f"killed worker {victim.index} ({killed} processes, SIGKILL): it executed runs {victim_runs} and "
        f"{victim_experiments} running experiments; experiments then: {at_kill}")
    finished = runs_settle(run_ids, quiet=wait)
    ended_after = time.monotonic() - killed_at
    runs_rows = list(AgentRun.objects.filter(pk__in=run_ids).order_by("pk"))
    left = Experiment.objects.filter(run_id__in=run_ids, state__in=[Experiment.State.PENDING, Experiment.State.RUNNING])
    retried = Experiment.objects.filter(run_id__in=run_ids, attempts__gt=1).count() if hasattr(Experiment, "attempts") else None
    result = {
        "dispatch": cluster.dispatch, "victim": victim.index, "victim_runs": victim_runs,
        "victim_experiments": victim_experiments, "processes_killed": killed, "at_kill": at_kill,
        "all_ended": finished, "seconds_to_end": ended_after,
        "runs": [(r.pk, r.status, experiment_states([r.pk]), (r.error or "")[:100]) for r in runs_rows],
        "experiment_states": experiment_states(run_ids),
        "worker_lost_experiments": Experiment.objects.filter(run_id__in=run_ids, error__icontains="worker").count(),
        "retried": retried,
        "left_pending_or_running": left.count(),
        "events": AgentEvent.objects.filter(run_id__in=run_ids).count(),
        "experiment_events": AgentEvent.objects.filter(run_id__in=run_ids, type="experiment").count(),
        "experiments": Experiment.objects.filter(run_id__in=run_ids).count(),
    }
    cluster.workers_stop()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", default="1,2", help="Worker counts to measure, comma-separated (default 1,2).")
    parser.add_argument("--runs", type=int, default=4, help="Runs queued per phase (default 4).")
    parser.add_argument("--experiments", type=int, default=100, help="Experiments per run (default 100).")
    parser.add_argument("--repeat", type=int, default=1, help="Repeat each worker count (median reported).")
    parser.add_argument("--dispatch", default="auto",
                        help="inline, queue or inline,queue; auto: both when this Dojo has DOJO_DISPATCH.")
    parser.add_argument("--q-workers", type=int, default=2, help="Runs one worker machine executes at once.")
    parser.add_argument("--cpu-share", type=float, default=0.5, help="DOJO_CPU_SHARE of each worker.")
    parser.add_argument("--no-netns", action="store_true", help="Workers in this box's network namespace.")
    parser.add_argument("--no-pin", action="store_true", help="Do not pin worker i to CPU i mod ncpu.")
    parser.add_argument("--no-kill", action="store_true", help="Skip the kill -9 test.")
    parser.add_argument("--kill-wait", type=float, default=150,
                        help="After the kill, how long runs left queued may sit with no run running before the "
                             "bench gives up on them (the reaper requeues a lost run within about 2 min).")
    parser.add_argument("--quick", action="store_true",
                        help="N = 1, 1 run x 3 experiments, inline dispatch, no netns, no kill.")
    args = parser.parse_args()
    if args.quick:
        args.workers, args.runs, args.experiments, args.repeat = "1", 1, 3, 1
        args.no_netns = args.no_kill = True
        if args.dispatch == "auto":
            args.dispatch = "inline"
    try:
        counts = [int(n) for n in args.workers.split(",") if n.strip()]
    except ValueError:
        counts = []
    if not counts or min(counts) < 1 or args.runs < 1 or args.experiments < 1 or args.repeat < 1:
        print("--workers (e.g. 1,2), --runs, --experiments and --repeat must be positive", file=sys.stderr)
        return 2
    if args.dispatch not in ("auto", "inline", "queue", "inline,queue"):
        print("--dispatch must be auto, inline, queue or inline,queue", file=sys.stderr)
        return 2

    load_start = loadavg()
    started = datetime.now(UTC)
    say(f"load average at start: {load_start}")

    def on_term(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    base = Path(tempfile.mkdtemp(prefix="dojo-cluster-"))
    cluster = Cluster(base=base, use_netns=not args.no_netns, pin=not args.no_pin,
                      q_workers=args.q_workers, cpu_share=args.cpu_share)
    notes = []
    try:
        why = cluster.hiding_possible()
        cluster.hide_web_home = not why
        if why:
            notes.append(f"workers see the web node's DOJO_HOME: {why}")
        if cluster.use_netns:
            why = cluster.netns_possible()
            if why:
                cluster.use_netns = False
                notes.append(f"workers share this box's network namespace: {why}")
        say(f"database {cluster.db_name}, queue {cluster.queue_name}, folder {base}")
        cluster.database_create()
        cluster.manage("migrate", "--noinput")
        cluster.django_setup()
        from django.conf import settings
        from django.contrib.auth import get_user_model

        from domains.services import token_create

        has_queue_dispatch = hasattr(settings, "DOJO_DISPATCH")
        if args.dispatch == "auto":
            modes = ["inline", "queue"] if has_queue_dispatch else ["inline"]
        else:
            modes = args.dispatch.split(",")
        if "queue" in modes and not has_queue_dispatch:
            print("this Dojo has no DOJO_DISPATCH setting: --dispatch queue is not possible", file=sys.stderr)
            return 2
        if not has_queue_dispatch:
            notes.append("one run's experiments run on the worker that took the run (DOJO_DISPATCH=queue is not in "
                         "this Dojo): the only queue dispatch measured is per run")
        if cluster.use_netns:
            notes.append("each worker in its own network namespace; PostgreSQL and Redis reached at the host-side "
                         "veth address through a socat relay to 127.0.0.1 (no change to either service)")
        if cluster.pin:
            notes.append(f"worker i pinned to CPU i mod {os.cpu_count()} (taskset), DOJO_CPU_SHARE={args.cpu_share}, "
                         f"DOJO_Q_WORKERS={args.q_workers}; web node, PostgreSQL and Redis unpinned")
        for note in notes:
            say("note: " + note)

        user = get_user_model().objects.create_superuser("bench", password=secrets.token_urlsafe(12))
        _, token = token_create(user=user, name="cluster bench")
        cluster.web_start()
        say(f"web node on 127.0.0.1:{cluster.web_port}")

        results, probes, kills = [], [], []
        for mode in modes:
            cluster.dispatch = mode
            for n in counts:
                for r in range(args.repeat):
                    label = f"{mode}-n{n}-r{r + 1}"
                    say(f"phase {label}: {n} worker(s), {args.runs} runs x {args.experiments} experiments, "
                        f"dispatch {mode}")
                    result = phase_throughput(cluster, token, workers=n, runs=args.runs,
                                              experiments=args.experiments, label=label)
                    results.append(result)
                    if len(results) == 1:
                        notes.append(snapshot_note(cluster, result))
                        say("note: " + notes[-1])
                    say(f"  {result['experiments_completed']}/{result['experiments']} experiments completed in "
                        f"{result['seconds']:.1f} s = {result['per_minute']:.1f}/min; runs {result['statuses']}; "
                        f"runs executed per worker {result['runs_per_worker']}; load {loadavg()}")
            if not args.quick:
                probe_size = min(20, args.experiments)
                say(f"dispatch probe ({mode}): 1 worker, 1 run x {probe_size} experiments, one at a time")
                probes.append(phase_dispatch(cluster, token, experiments=probe_size))
            if not args.no_kill:
                say(f"kill test ({mode}): 2 workers, {args.runs} runs x {args.experiments} experiments, "
                    "one worker killed -9")
                kills.append(phase_kill(cluster, token, runs=args.runs, experiments=args.experiments,
                                        wait=args.kill_wait))
        say("queue round trip: 20 no-op tasks on one idle worker")
        trips = phase_queue_round_trip(cluster)
        capacity = phase_db_capacity(cluster, rows=200 if args.quick else 2000)
        report(results, probes, trips, capacity, kills, notes, load_start, started)
        return 0
    except KeyboardInterrupt:
        say("interrupted: cleaning up")
        return 130
    except Exception:
        for log in sorted(base.glob("*.log")):  # the folder goes with the clean-up: show what went wrong
            print(f"--- last lines of {log.name}:", file=sys.stderr)
            print("\n".join(log.read_text(errors="replace").splitlines()[-15:]), file=sys.stderr)
        raise
    finally:
        cluster.close()
        say(f"cleaned up (processes, namespaces, database {cluster.db_name}, queue keys, {base}); "
            f"load average at end: {loadavg()}")


def _ms(values: list[float]) -> str:
    return f"{median(values):.0f} ms" if values else "-"


def report(results, probes, trips, capacity, kills, notes, load_start, started) -> None:
    print()
    print(f"## bench/cluster.py — {started:%Y-%m-%d %H:%M} UTC, {os.cpu_count()} CPUs, load at start {load_start}, "
          f"at end {loadavg()}")
    print(f"command: {' '.join(sys.argv)}")
    for note in notes:
        print(f"- {note}")
    print()
    print("| dispatch | workers | experiments/min (median) | each repeat | experiments completed | runs | "
          "run enqueue→started (free slot), median | runs executed per worker |")
    print("|---|---|---|---|---|---|---|---|")
    for mode, n in sorted({(r["dispatch"], r["workers"]) for r in results}):
        mine = [r for r in results if r["workers"] == n and r["dispatch"] == mode]
        rates = [r["per_minute"] for r in mine]
        statuses = sorted({s for r in mine for s in r["statuses"]})
        print(f"| {mode} | {n} | {median(rates):.1f} | {', '.join(f'{x:.1f}' for x in rates)} | "
              f"{sum(r['experiments_completed'] for r in mine)}/{sum(r['experiments'] for r in mine)} | "
              f"{', '.join(statuses)} | {_ms([t * 1000 for r in mine for t in r['run_round_trips']])} | "
              f"{'; '.join(str(r.get('runs_per_worker', '')) for r in mine)} |")
    print()
    if probes:
        print("| dispatch (1 run, 1 experiment at a time, idle worker) | recorded → taken by its process, median | "
          "finished → the run has the result, median | experiments |")
        print("|---|---|---|---|")
    for probe in probes:
        # Inline, the experiment is recorded already running (its started_at is taken just before the row).
        taken = "0 (recorded running)" if probe["dispatch"] == "inline" else _ms(probe["to_worker"])
        print(f"| {probe['dispatch']} | {taken} | {_ms(probe['back'])} | {len(probe['to_worker'])} |")
    print()
    if trips["result_seen"]:
        print(f"queue round trip of a no-op task on an idle worker (Redis): enqueue → done on the worker median "
              f"{median(trips['done_on_worker']):.1f} ms; enqueue → result read back from the database median "
              f"{median(trips['result_seen']):.1f} ms (min {min(trips['result_seen']):.1f}, max "
              f"{max(trips['result_seen']):.1f}, {len(trips['result_seen'])} samples)")
    for mode in sorted({r["dispatch"] for r in results}):
        mine = [r for r in results if r["dispatch"] == mode]
        done = sum(r["experiments_completed"] for r in mine)
        commits = sum(r["commits"] for r in mine)
        rows = sum(r["inserted"] + r["updated"] for r in mine)
        seconds = sum(r["db_seconds"] for r in mine)
        if done:
            # xact_commit counts every transaction, read-only ones too (each autocommit SELECT is one).
            print(f"database ({mode}): {rows / done:.1f} rows inserted+updated and {commits / done:.1f} transactions "
                  f"(reads included) per completed experiment; {rows / seconds:.0f} rows written/s, "
                  f"{commits / seconds:.0f} transactions/s on average over {seconds:.0f} s")
    print(f"this PostgreSQL takes {capacity['commits_per_s_1']:.0f} single-row INSERT commits/s on 1 connection, "
          f"{capacity['commits_per_s_4']:.0f}/s on 4")
    for kill in kills:
        print()
        print(f"kill -9 test ({kill['dispatch']}): worker {kill['victim']} ({kill['processes_killed']} processes) killed "
              f"while it executed runs {kill['victim_runs']} and {kill['victim_experiments']} running experiments; "
              f"experiments then {kill['at_kill']}; all runs ended: {kill['all_ended']} "
              f"({kill['seconds_to_end']:.0f} s after the kill)")
        for pk, status, states, error in kill["runs"]:
            print(f"- run {pk}: {status} {states}{' — ' + error if error else ''}")
        retried = "" if kill["retried"] is None else f"; retried on another worker: {kill['retried']}"
        print(f"- experiments: {kill['experiments']} rows {kill['experiment_states']}; failed naming the worker: "
              f"{kill['worker_lost_experiments']}{retried}; left pending or running: "
              f"{kill['left_pending_or_running']}; experiment events {kill['experiment_events']} "
              f"(of {kill['events']} events)")


if __name__ == "__main__":
    sys.exit(main())

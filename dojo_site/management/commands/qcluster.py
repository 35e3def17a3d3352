"""django-q2's `qcluster`, made safe to stop with SIGTERM to its whole process group.

systemd (and `kill -TERM -PGID`) signals every process of the group. django-q2's Sentinel and workers
die from SIGTERM at once, and the cluster's main process then deadlocks in its own stop (it waits on
an Event whose other side was killed): 3 stops out of 3 hung. So this command runs the real cluster
as a child in its own session and only relays: on SIGTERM/SIGINT/SIGHUP it asks the cluster's running
agent runs to stop (they end `stopped` within about 2 s), sends one SIGTERM to the cluster's main
process (its orderly stop), kills what is left after DOJO_WORKER_STOP_SECONDS, records as `stopped`
the runs that were killed before they could record it themselves, and puts the experiments it was
running back in the queue (an experiment worker, DOJO_Q_ROLE=experiments).
This app is listed before django_q in INSTALLED_APPS so that this command is the one `qcluster` runs.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from django.conf import settings
from django_q.management.commands import qcluster

from dojo_site.procs import process_tree

INNER = "DOJO_QCLUSTER_INNER"


class Command(qcluster.Command):
    help = (
        "Start the background worker (django-q2's cluster). SIGTERM, SIGINT or SIGHUP stops it within "
        "DOJO_WORKER_STOP_SECONDS: running agent runs end `stopped`, then the cluster stops."
    )

    def handle(self, *args, **options):
        if os.environ.get(INNER):
            return super().handle(*args, **options)
        if "qcluster" in sys.argv:
            # The same command line again (a wrapper script may set things up before manage.py runs).
            argv = [sys.executable, *sys.argv]
        else:  # called with call_command
            argv = [sys.executable, str(Path(settings.BASE_DIR) / "manage.py"), "qcluster"]
            if options.get("run_once"):
                argv.append("--run-once")
            if options.get("cluster_name"):
                argv += ["--name", options["cluster_name"]]
        cluster = subprocess.Popen(argv, env={**os.environ, INNER: "1"}, start_new_session=True)
        received: list[int] = []
        previous = {
            signum: signal.signal(signum, lambda signum, frame: received.append(signum))
            for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
        }
        try:
            while cluster.poll() is None and not received:
                time.sleep(0.2)
            if received:
                self._stop(cluster)
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        if cluster.returncode:
            sys.exit(cluster.returncode if cluster.returncode > 0 else 1)

    def _stop(self, cluster: subprocess.Popen) -> None:
        from agentrun.services import runs_end_after_shutdown, runs_stop_for_shutdown
        from experiments.services import experiments_requeue_after_shutdown

        deadline = time.monotonic() + settings.DOJO_WORKER_STOP_SECONDS
        stopping: list[int] = []
        workers = process_tree(cluster.pid)
        try:
            stopping = runs_stop_for_shutdown(worker_pids=workers)
            if stopping:
                self.stdout.write(f"asked runs {', '.join(map(str, stopping))} to stop")
        except Exception as exc:  # noqa: BLE001 - a database problem must not keep the worker alive
            self.stderr.write(f"could not ask the running runs to stop: {exc}")
        _signal(cluster.pid, signal.SIGTERM)
        try:
            cluster.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.stderr.write("the cluster did not stop in time: killed")
        # Whatever is left of the cluster's session (a worker stuck in a task) goes now.
        try:
            os.killpg(cluster.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        cluster.wait()
        try:
            # Experiments it was running (DOJO_Q_ROLE=experiments) go back to the queue for another
            # worker; a shutdown is not a worker death, so it is not counted against their one retry.
            requeued = experiments_requeue_after_shutdown(worker_pids=workers)
            if requeued:
                self.stdout.write(f"requeued experiments {', '.join(map(str, requeued))}")
        except Exception as exc:  # noqa: BLE001 - the reaper will requeue them instead
            self.stderr.write(f"could not requeue the running experiments: {exc}")
        if stopping:  # killed before they could record their stop: record it for them
            try:
                runs_end_after_shutdown(run_ids=stopping)
            except Exception as exc:  # noqa: BLE001 - the reaper will end them instead
                self.stderr.write(f"could not record the stop of runs {stopping}: {exc}")


def _signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass

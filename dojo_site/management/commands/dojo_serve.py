import os
import signal
import subprocess
import sys
import time

from django.conf import settings
from django.core.management.base import BaseCommand

# How long each child gets to shut down after the forwarded signal before it is killed.
STOP_GRACE_SECONDS = 10.0


class Command(BaseCommand):
    help = (
        "Run the web server (runserver) and the background worker (qcluster) together. "
        "Ctrl-C or SIGTERM stops both."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("addrport", nargs="?", default="127.0.0.1:8000", help="Address for runserver.")
        parser.add_argument("--noreload", action="store_true", help="Disable runserver's auto-reloader.")
        parser.add_argument("--no-worker", action="store_true", help="Web server only (no qcluster).")

    def handle(self, *args, **options) -> None:
        manage = [sys.executable, str(settings.BASE_DIR / "manage.py")]
        # --insecure: runserver serves static files from the app folders even with DEBUG off (the
        # default), so the pages keep their styles without a collectstatic step (docs/decisions.md).
        web = manage + ["runserver", options["addrport"], "--insecure"]
        commands = {"web": web + (["--noreload"] if options["noreload"] else [])}
        if not options["no_worker"]:
            commands["worker"] = manage + ["qcluster"]
        # Each child gets its own process group: a terminal Ctrl-C reaches only us, and we forward
        # exactly one SIGINT to each whole group (runserver's reloader child and qcluster's workers too).
        children = {name: subprocess.Popen(cmd, process_group=0) for name, cmd in commands.items()}
        self.stdout.write(f"Dojo at http://{options['addrport']}/ ({', '.join(children)}); Ctrl-C stops.")

        stopping = {"signal": None}

        def on_signal(signum, frame) -> None:
            stopping["signal"] = signum

        previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            exited = None
            while stopping["signal"] is None and exited is None:
                exited = next((n for n, p in children.items() if p.poll() is not None), None)
                time.sleep(0.2)
            if exited:
                self.stderr.write(f"{exited} exited with code {children[exited].returncode}; stopping the rest.")
            self._stop(children)
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
        if exited and children[exited].returncode:
            sys.exit(children[exited].returncode)

    def _stop(self, children: dict[str, subprocess.Popen]) -> None:
        for proc in children.values():
            _signal_group(proc, signal.SIGINT)
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        for proc in children.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(proc, signal.SIGKILL)
                proc.wait()


def _signal_group(proc: subprocess.Popen, signum: int) -> None:
    try:
        os.killpg(proc.pid, signum)
    except ProcessLookupError:
        pass

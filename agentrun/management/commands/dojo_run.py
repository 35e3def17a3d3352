import json
import signal
import threading
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from rich.markup import escape

from agentrun.backends import BACKENDS
from agentrun.models import AgentEvent, AgentRun
from agentrun.services import run_create, run_execute, run_start
from dojo_site.cli import add_domain_argument, add_json_argument, command_error, console_for
from dojo_site.errors import DojoError
from domains.services import domain_resolve

# Exit codes: 0 completed or stopped, 2 failed, 3 task not ready (dojo_site.cli.EXIT_NOT_READY).
EXIT_FAILED = 2

STYLES = {
    "text": "",
    "tool_call": "dim",
    "tool_result": "dim",
    "experiment": "cyan",
    "knowledge": "magenta",
    "error": "red",
    "result": "bold",
    "finalized": "dim",
}


class Command(BaseCommand):
    help = (
        "Run an agent on a domain in this terminal and stream what it does. "
        "Ctrl-C stops it gracefully (knowledge is still written); a second Ctrl-C skips the clean-up."
    )

    def add_arguments(self, parser) -> None:
        add_domain_argument(parser)
        add_json_argument(parser)
        parser.add_argument("--backend", choices=list(BACKENDS), default=settings.DOJO_DEFAULT_BACKEND)
        parser.add_argument("--max-turns", type=int, default=None, help="Stop after N model turns.")
        parser.add_argument("--max-experiments", type=int, default=None, help="Run at most N experiments.")
        parser.add_argument("--budget-usd", type=float, default=None, help="Stop once the run has cost X USD.")
        parser.add_argument("--max-minutes", type=float, default=None, help="Wall-clock limit for the run.")
        parser.add_argument("--prompt", default=None, help="Use this text instead of PROGRAM.md for this run.")
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument(
            "--background", action="store_true",
            help="Queue the run for the worker (`manage.py qcluster`) and print its URL instead of running it here.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            domain = domain_resolve(name=options["domain"])
            create = run_start if options["background"] else run_create
            run = create(
                domain=domain,
                backend=options["backend"],
                max_turns=options["max_turns"],
                max_experiments=options["max_experiments"],
                budget_usd=options["budget_usd"],
                max_minutes=options["max_minutes"],
                prompt=options["prompt"],
                seed=options["seed"],
            )
        except DojoError as exc:
            raise command_error(exc) from None

        console = console_for(self)
        as_json = options["json"]
        if options["background"]:
            url = settings.DOJO_BASE_URL.rstrip("/") + run.get_absolute_url()
            if as_json:
                self.stdout.write(json.dumps({**run_json(run), "url": url}))
            else:
                console.print(f"Run {run.pk} on {escape(domain.name)} queued for the worker: {url}")
                console.print("[dim]The worker is `manage.py qcluster` (make serve starts one); "
                              f"stop it with `manage.py dojo_stop {run.pk}`.[/dim]")
            return
        if not as_json:
            console.print(
                f"[bold]Run {run.pk}[/bold] on [bold]{escape(domain.name)}[/bold] with the {run.backend} backend "
                f"— Ctrl-C to stop, twice to skip the clean-up."
            )

        def on_event(event: AgentEvent) -> None:
            if as_json:
                self.stdout.write(json.dumps({"seq": event.seq, "type": event.type, "data": event.data}))
                return
            if event.type == "tool_result" and event.data.get("ok") and event.data.get("name") == "run_experiment":
                return  # the experiment line that follows says it better
            line = escape(event.summary())
            cost = event.data.get("cost_usd") if event.type == "experiment" else None
            suffix = f"  [dim](${cost:.4f})[/dim]" if isinstance(cost, int | float) and cost else ""
            style = STYLES.get(event.type, "")
            if event.type == "tool_result" and not event.data.get("ok"):
                style = "yellow"
            tag = f"[{style}]" if style else ""
            end = "[/]" if style else ""
            console.print(f"[dim]{event.seq:>4}[/dim] {tag}{line}{end}{suffix}")

        stop_signal = threading.Event()

        def on_sigint(signum: int, frame: Any) -> None:
            if not stop_signal.is_set():
                stop_signal.set()
                if not as_json:
                    console.print("[yellow]Stopping… (Ctrl-C again to skip the clean-up)[/yellow]")
                return
            raise KeyboardInterrupt

        previous = signal.signal(signal.SIGINT, on_sigint)
        try:
            run = run_execute(run_id=run.pk, on_event=on_event, stop_signal=stop_signal)
        finally:
            signal.signal(signal.SIGINT, previous)

        if as_json:
            self.stdout.write(json.dumps(run_json(run)))
        if run.status == AgentRun.Status.FAILED:
            raise CommandError(f"run {run.pk} failed: {run.error}", returncode=EXIT_FAILED)


def run_json(run: AgentRun) -> dict[str, Any]:
    return {
        "id": run.pk,
        "domain": run.domain.name,
        "backend": run.backend,
        "model": run.model,
        "status": run.status,
        "error": run.error,
        "cost_usd": run.cost_usd,
        "turns": run.turns,
        "max_turns": run.max_turns,
        "max_experiments": run.max_experiments,
        "budget_usd": run.budget_usd,
        "max_minutes": run.max_minutes,
        "stop_requested": run.stop_requested,
        "result": run.result,
        "created_at": run.created_at.isoformat() if run.created_at else None,
        "started_at": run.started_at.isoformat() if run.started_at else None,
        "finished_at": run.finished_at.isoformat() if run.finished_at else None,
    }

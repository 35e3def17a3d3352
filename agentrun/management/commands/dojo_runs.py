from typing import Any

from django.core.management.base import CommandError
from django.db.models import Count, Q
from rich.markup import escape
from rich.table import Table

from agentrun.management.commands.dojo_run import run_json
from agentrun.models import AgentRun
from dojo_site.cli import (
    ActionCommand,
    add_actions,
    add_domain_argument,
    add_json_argument,
    console_for,
    limit_checked,
    print_json,
)
from domains.services import domain_resolve


class Command(ActionCommand):
    help = "List agent runs and show one: ls [--all] [--status S] | show RUN [--events]."

    def add_arguments(self, parser) -> None:
        add_domain_argument(parser)
        add_json_argument(parser)
        action = add_actions(parser)
        ls = action("ls", help="List the domain's runs, newest first (--all: every domain).")
        ls.add_argument("--all", action="store_true", help="Runs of every domain.")
        ls.add_argument("--status", choices=AgentRun.Status.values, default=None)
        ls.add_argument("--limit", type=int, default=20)
        show = action("show", help="Show one run (default: the domain's latest).")
        show.add_argument("run", nargs="?", type=int)
        show.add_argument("--events", action="store_true", help="List its events too.")

    def _ls(self, options: dict[str, Any]) -> None:
        runs = AgentRun.objects.select_related("domain").annotate(
            n_experiments=Count("experiments"),
            n_completed=Count("experiments", filter=Q(experiments__state="completed")),
        )
        if not options["all"]:
            runs = runs.filter(domain=domain_resolve(name=options["domain"]))
        if options["status"]:
            runs = runs.filter(status=options["status"])
        runs = list(runs.order_by("-created_at", "-pk")[: limit_checked(options["limit"])])
        if options["json"]:
            print_json(self, [run_json(r) | {"experiments": r.n_experiments} for r in runs])
            return
        if not runs:
            self.stdout.write("No runs yet. Start one with `manage.py dojo_run`.")
            return
        table = Table("id", "domain", "backend", "status", "experiments", "best", "cost", "turns", "started", "reason")
        for r in runs:
            best = r.result.get("best_value")
            table.add_row(
                str(r.pk),
                escape(r.domain.name),
                r.backend,
                r.status,
                f"{r.n_completed}/{r.n_experiments}",
                f"{best:.6g}" if isinstance(best, int | float) else "-",
                f"${r.cost_usd:.4f}",
                str(r.turns),
                f"{r.started_at:%Y-%m-%d %H:%M}" if r.started_at else "-",
                escape(str(r.result.get("reason") or r.error or ""))[:60],
            )
        console_for(self).print(table)

    def _show(self, options: dict[str, Any]) -> None:
        if options["run"] is not None:
            run = AgentRun.objects.select_related("domain").filter(pk=options["run"]).first()
            if run is None:
                raise CommandError(f"no run {options['run']}; `manage.py dojo_runs ls` lists them")
        else:
            domain = domain_resolve(name=options["domain"])
            run = AgentRun.objects.filter(domain=domain).select_related("domain").first()
            if run is None:
                raise CommandError(f"domain {domain.name!r} has no runs yet")
        events = list(run.events.order_by("seq")) if options["events"] else []
        if options["json"]:
            data = run_json(run) | {"experiments": run.experiments.count()}
            if options["events"]:
                data["events"] = [{"seq": e.seq, "type": e.type, "data": e.data, "created_at": e.created_at.isoformat()} for e in events]
            print_json(self, data)
            return
        console = console_for(self)
        data = run_json(run)
        for key in ("id", "domain", "backend", "model", "status", "error", "cost_usd", "turns", "max_turns",
                    "max_experiments", "budget_usd", "max_minutes", "started_at", "finished_at"):
            if data[key] not in (None, ""):
                console.print(f"[bold]{key}[/bold]: {escape(str(data[key]))}")
        for key, value in run.result.items():
            console.print(f"[bold]{key}[/bold]: {escape(str(value))}")
        for e in events:
            console.print(f"[dim]{e.seq:>4} {e.created_at:%H:%M:%S} {e.type:<11}[/dim] {escape(e.summary())}")

from typing import Any

from django.core.management.base import BaseCommand, CommandError

from agentrun.models import AgentRun
from agentrun.services import run_stop_request
from dojo_site.cli import add_domain_argument, add_json_argument, command_error, print_json
from dojo_site.errors import DojoError
from domains.services import domain_resolve


class Command(BaseCommand):
    help = (
        "Stop a run — one running in another terminal or in a background worker alike. "
        "Without RUN, stops the domain's latest active run."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("run", nargs="?", type=int, help="Run id (default: the domain's latest active run).")
        add_domain_argument(parser)
        add_json_argument(parser)

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            if options["run"] is not None:
                run = AgentRun.objects.filter(pk=options["run"]).first()
                if run is None:
                    raise CommandError(f"no run {options['run']}; `manage.py dojo_runs ls` lists them")
            else:
                domain = domain_resolve(name=options["domain"])
                run = AgentRun.objects.filter(
                    domain=domain, status__in=[AgentRun.Status.QUEUED, AgentRun.Status.RUNNING]
                ).first()
                if run is None:
                    raise CommandError(f"no queued or running run on domain {domain.name!r}")
            run = run_stop_request(run=run)
        except DojoError as exc:
            raise command_error(exc) from None
        if options["json"]:
            print_json(self, {"id": run.pk, "status": run.status, "stop_requested": run.stop_requested})
        elif run.status == AgentRun.Status.STOPPED:
            self.stdout.write(f"Run {run.pk} stopped before it started.")
        else:
            self.stdout.write(f"Stop requested for run {run.pk}: it ends at its next step (a running experiment is killed).")

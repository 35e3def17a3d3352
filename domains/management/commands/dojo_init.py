import sys

from django.core.management.base import BaseCommand, CommandError

from dojo_site.cli import add_json_argument, command_error, console_for, print_json
from dojo_site.errors import DojoError
from domains.contracts import TASK_TYPES
from domains.services import domain_create


class Command(BaseCommand):
    help = (
        "Create a domain and its (unfrozen) task, scaffold PROGRAM.md and SETUP.md in the workspace "
        "(existing files are kept) and make it the current domain."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("--name", "--domain", dest="name", help="Unique domain name.")
        parser.add_argument("--task-type", help=f"One of: {', '.join(TASK_TYPES)}.")
        parser.add_argument("--workspace", default=None, help="Your data/repository folder (default: .).")
        parser.add_argument(
            "--git-url", default="",
            help="Clone this repository (https://, ssh://, git@host:path or a local path) into "
            "DOJO_HOME/workspaces/NAME and use it as the workspace, instead of --workspace.",
        )
        parser.add_argument("--git-ref", default="", help="Branch, tag or commit to check out (default: the remote's default branch).")
        parser.add_argument("--data-path", default="", help="Data file, relative to the workspace, or sklearn:load_NAME.")
        parser.add_argument("--target-column", default="", help="Column to predict.")
        parser.add_argument("--id-columns", default="", help="Comma-separated id columns, never used as features.")
        parser.add_argument("--metric", default="", help="Primary metric (default: the task type's).")
        parser.add_argument("--description", default="", help="What this research is about (the goal).")
        parser.add_argument("--non-interactive", action="store_true", help="Never prompt; fail on missing values.")
        add_json_argument(parser)

    def handle(self, *args, **options) -> None:
        name, task_type = options["name"], options["task_type"]
        if not options["non_interactive"] and sys.stdin.isatty():
            name = name or input("Domain name: ").strip()
            task_type = task_type or (
                input(f"Task type ({'/'.join(TASK_TYPES)}) [regression]: ").strip() or "regression"
            )
        if not name:
            raise CommandError("--name is required")
        if not task_type:
            raise CommandError(f"--task-type is required (one of: {', '.join(TASK_TYPES)})")
        try:
            domain = domain_create(
                name=name,
                task_type=task_type,
                workspace=options["workspace"] or ("" if options["git_url"] else "."),
                git_url=options["git_url"],
                git_ref=options["git_ref"],
                description=options["description"],
                data_path=options["data_path"],
                target_column=options["target_column"],
                metric=options["metric"],
                id_columns=options["id_columns"],
            )
        except DojoError as exc:
            raise command_error(exc) from None

        if options["json"]:
            print_json(self, domain.summary())
            return
        task = domain.task
        console = console_for(self)
        console.print(f"[bold green]Created domain {domain.name}[/] ({task.task_type}, "
                      f"primary metric {task.primary_metric}, {task.direction}); it is now the current domain.")
        console.print(f"  workspace  {domain.workspace_path}")
        if domain.git_url:
            console.print(f"  git        {domain.git_url} @ {domain.git_ref or '(default branch)'} = {domain.git_commit[:12]}")
        console.print(f"  program    {domain.program_path}")
        console.print(f"  setup      {domain.setup_path}")
        console.print("Next: describe the data and scoring in SETUP.md, then generate, verify and freeze "
                      "the task (`manage.py dojo_task setup`).")

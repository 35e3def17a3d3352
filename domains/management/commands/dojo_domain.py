from django.core.management.base import CommandError
from rich.table import Table

from dojo_site.cli import (
    ActionCommand,
    add_actions,
    add_domain_argument,
    add_json_argument,
    console_for,
    print_json,
)
from domains.models import Domain
from domains.services import (
    domain_current,
    domain_env_build,
    domain_git_sync,
    domain_resolve,
    domain_scan_apply,
    domain_update,
    domain_use,
    domain_workspace_scan,
    domain_workspace_status,
)


class Command(ActionCommand):
    help = ("List domains, show one, choose the current domain and change its settings: "
            "ls | use NAME | current | show [NAME] | set | setup | scan | status | sync.")

    def add_arguments(self, parser) -> None:
        add_domain_argument(parser)
        add_json_argument(parser)
        action = add_actions(parser)
        action("ls", help="List every domain.")
        use = action("use", help="Make NAME the current domain.")
        use.add_argument("target", metavar="NAME")
        action("current", help="Print the current domain.")
        show = action("show", help="Show a domain (default: --domain or the current one).")
        show.add_argument("target", metavar="NAME", nargs="?")
        setup = action("setup", help="Build the workspace's environment (requirements.txt / pyproject.toml) now.")
        setup.add_argument("--run-setup-script", action="store_true",
                           help="Also run the workspace's setup.sh (in the sandbox, with network).")
        setup.add_argument("--force", action="store_true",
                           help="Build even if a queued build is recorded as running (e.g. no worker picked it up).")
        scan = action("scan", help="Scan the workspace: data files, shapes, column types, likely target/ID columns, scorers.")
        scan.add_argument("--apply", type=int, metavar="N", default=None,
                          help="Write suggestion N (1 = the first) into SETUP.md.")
        action("status", help="Workspace status: exists, writable, git commit, environment, interpreter.")
        settings = action(
            "set", help="Change the domain's owner, trainer interpreter (checked in the sandbox) or env vars; "
            "each change is kept in its history.",
        )
        settings.add_argument("--python", metavar="PATH", help="Trainer interpreter; '' for Dojo's own.")
        settings.add_argument("--env", metavar="NAME=VALUE", action="append", default=None,
                              help="Set an env var for the trainer (repeat; replaces the whole set).")
        settings.add_argument("--clear-env", action="store_true", help="Remove every env var.")
        settings.add_argument("--owner", metavar="USERNAME", help="Give the domain to this user.")
        holdout = settings.add_mutually_exclusive_group()
        holdout.add_argument("--hide-holdout", action="store_true", help="Viewers see no holdout values.")
        holdout.add_argument("--show-holdout", action="store_true", help="Viewers see holdout values.")
        sync = action("sync", help="Fetch the domain's git workspace and check out --ref (default: its recorded ref).")
        sync.add_argument("--ref", default=None, help="Branch, tag or commit to move to.")

    def _ls(self, options) -> None:
        domains = list(Domain.objects.select_related("task"))
        current = domain_current()
        if options["json"]:
            print_json(self, [d.summary() | {"current": d == current} for d in domains])
            return
        if not domains:
            self.stdout.write("No domains yet. Create one with `manage.py dojo_init`.")
            return
        table = Table("", "name", "task type", "primary metric", "task", "status", "workspace")
        for d in domains:
            task = d.task_or_none
            table.add_row(
                "*" if d == current else "",
                d.name,
                task.task_type if task else "-",
                f"{task.primary_metric} ({task.direction})" if task else "-",
                ("frozen" if task.is_frozen else "not frozen") if task else "no task",
                d.status,
                d.workspace_path,
            )
        console_for(self).print(table)

    def _use(self, options) -> None:
        domain = domain_use(domain=domain_resolve(name=options["target"]))
        if options["json"]:
            print_json(self, domain.summary())
        else:
            self.stdout.write(f"Current domain: {domain.name}")

    def _current(self, options) -> None:
        domain = domain_current()
        if domain is None:
            raise CommandError("no current domain: run `manage.py dojo_init` or `manage.py dojo_domain use NAME`")
        if options["json"]:
            print_json(self, domain.summary())
        else:
            self.stdout.write(domain.name)

    def _show(self, options) -> None:
        domain = domain_resolve(name=options["target"] or options["domain"])
        data = domain.summary()
        if options["json"]:
            print_json(self, data)
            return
        console = console_for(self)
        console.print(f"[bold]{domain.name}[/] ({domain.status})", markup=True)
        if domain.description:
            console.print(domain.description, markup=False)
        table = Table(show_header=False, box=None)
        for key in ("workspace_path", "program_path", "setup_path", "created_at"):
            table.add_row(key.replace("_", " "), str(data[key]))
        task = data["task"]
        if task:
            table.add_row("task type", task["task_type"])
            table.add_row("primary metric", f"{task['primary_metric']} ({task['direction']})")
            table.add_row("metrics", ", ".join(task["expected_metrics"]))
            table.add_row("frozen", task["frozen_at"] or "no")
            for key, value in task["config"].items():
                table.add_row(f"config.{key}", str(value))
        console.print(table)

    def _set(self, options) -> None:
        domain = domain_resolve(name=options["domain"])
        changes: dict = {}
        if options["python"] is not None:
            changes["workspace_python"] = options["python"]
        if options["clear_env"]:
            changes["env_vars"] = {}
        elif options["env"] is not None:
            pairs = [item.partition("=") for item in options["env"]]
            bad = [name for name, sep, _ in pairs if not sep]
            if bad:
                raise CommandError(f"--env takes NAME=VALUE, got {bad[0]!r}")
            changes["env_vars"] = {name: value for name, _, value in pairs}
        if options["owner"] is not None:
            changes["owner_username"] = options["owner"]
        if options["hide_holdout"] or options["show_holdout"]:
            changes["hide_holdout_from_viewers"] = options["hide_holdout"]
        if not changes:
            raise CommandError("nothing to change: give --python, --env, --clear-env, --owner or --hide-holdout/--show-holdout")
        domain = domain_update(domain=domain, **changes)  # a management command: the local administrator
        if options["json"]:
            print_json(self, domain.summary())
            return
        self.stdout.write(f"{domain.name}: " + ", ".join(sorted(changes)) + " saved.")

    def _sync(self, options) -> None:
        domain = domain_resolve(name=options["domain"])
        result = domain_git_sync(domain=domain, ref=options["ref"])
        if options["json"]:
            print_json(self, result)
            return
        if result["commit"] == result["previous"]:
            self.stdout.write(f"{domain.name}: already at {result['commit'][:12]} ({result['ref'] or 'default branch'})")
        else:
            self.stdout.write(
                f"{domain.name}: {result['previous'][:12]} -> {result['commit'][:12]} "
                f"({result['ref'] or 'default branch'}), {len(result['changed_files'])} files changed"
            )
        if result["contract_files_changed"]:
            self.stdout.write(
                "The frozen contract imports changed files: " + ", ".join(result["contract_files_changed"])
                + ". Experiments refuse to run until you unfreeze and freeze the task again "
                "(`manage.py dojo_task unfreeze --reason ...` then `dojo_task setup`)."
            )

    def _setup(self, options) -> None:
        domain = domain_resolve(name=options["domain"])
        echo = None if options["json"] else (lambda text: self.stdout.write(text, ending=""))
        domain = domain_env_build(domain=domain, run_setup_script=options["run_setup_script"], on_output=echo,
                                  force=options["force"])
        if options["json"]:
            print_json(self, domain_workspace_status(domain=domain))
            return
        packages = len([ln for ln in domain.env_lock.splitlines() if ln.strip() and not ln.startswith("#")])
        self.stdout.write(f"Environment ready: {domain.env_python} ({packages} packages locked). "
                          "The trainer runs in it from the next experiment on.")

    def _status(self, options) -> None:
        domain = domain_resolve(name=options["domain"])
        status = domain_workspace_status(domain=domain)
        if options["json"]:
            print_json(self, status)
            return
        env, git, interp = status["environment"], status["git"], status["interpreter"]
        table = Table(show_header=False, box=None)
        table.add_row("workspace", status["path"])
        table.add_row("exists", "yes" if status["exists"] else "NO")
        table.add_row("writable", "yes" if status["writable"] else "no")
        if git["url"]:
            table.add_row("git", f"{git['url']} @ {git['ref'] or '(default branch)'}")
        table.add_row("git commit", git["head"] or git["commit"] or "-")
        table.add_row("environment", f"{env['state']}" + (f" ({env['python']}, {env['packages']} packages)" if env["python"] else ""))
        if env["error"]:
            table.add_row("last build error", env["error"])
        table.add_row("interpreter", f"{interp['path']} ({interp['source']}) Python {interp['version'] or '?'}")
        console_for(self).print(table)

    def _scan(self, options) -> None:
        domain = domain_resolve(name=options["domain"])
        if options["apply"] is not None:
            chosen = domain_scan_apply(domain=domain, index=options["apply"] - 1)
            if options["json"]:
                print_json(self, chosen)
            else:
                self.stdout.write(f"SETUP.md now names data {chosen['data']}"
                                  + (f", target {chosen['target']}" if chosen["target"] else "")
                                  + (f", id columns {', '.join(chosen['id_columns'])}" if chosen["id_columns"] else "")
                                  + f". Review it: {domain.setup_path}")
            return
        scan = domain_workspace_scan(domain=domain)
        if options["json"]:
            print_json(self, scan)
            return
        console = console_for(self)
        table = Table("data file", "format", "shape", "target?", "id columns?", "task type?")
        for item in scan["data_files"]:
            shape = "error: " + item["error"] if "error" in item else f"{item['rows'] if item['rows'] is not None else '?'} x {item['columns_count']}"
            table.add_row(item["path"], item["format"], shape, item.get("target") or "-",
                          ", ".join(item.get("id_columns") or []) or "-", item.get("task_type") or "-")
        console.print(table if scan["data_files"] else "No data files (csv, tsv, parquet, json, jsonl) found.")
        for scorer in scan["scorers"]:
            console.print(f"scorer?  {scorer['path']}:{scorer['line']}  {scorer['name']}({', '.join(scorer['args'])})",
                          markup=False)
        for n, sug in enumerate(scan["suggestions"], 1):
            console.print(f"suggestion {n}: data {sug['data']}, target {sug['target'] or '?'}, "
                          f"id columns {', '.join(sug['id_columns']) or '-'}; apply with --apply {n}", markup=False)

import json
import time
from pathlib import Path

from django.core.management.base import BaseCommand
from rich.table import Table
from rich.text import Text

from dojo_site.cli import (
    add_actions,
    add_domain_argument,
    add_json_argument,
    command_error,
    console_for,
    print_json,
)
from dojo_site.errors import DojoError, InvalidInput, NotReady
from domains.services import (
    JOB_ACTIVE,
    JOB_KINDS,
    domain_resolve,
    task_for_domain,
    task_freeze,
    task_generate,
    task_job_enqueue,
    task_setup,
    task_status,
    task_tools_import,
    task_unfreeze,
    task_update,
    task_verify,
    tasks_inline,
)

# How often a waiting command reads the queued job (one row by primary key).
WAIT_POLL_SECONDS = 0.5


class Command(BaseCommand):
    help = (
        "The task's frozen evaluation contract: setup (generate + verify + freeze) | generate | import | "
        "verify | freeze | unfreeze | show | config. Exit codes: 0 ok, 3 not ready (unverified or failing "
        "tools, task not frozen), 1 any other error."
    )

    def add_arguments(self, parser) -> None:
        add_domain_argument(parser)
        add_json_argument(parser)
        action = add_actions(parser)
        setup = action("setup", help="Generate the tools when missing, verify them, freeze the task.")
        setup.add_argument("--with", dest="method", choices=["auto", "template", "claude"], default="auto")
        setup.add_argument("--override-audit", dest="override_audit", default="", metavar="REASON",
                           help="Freeze despite severe leak-audit findings; the reason is recorded on the task.")
        generate = action("generate", help="Write load_data and evaluate from SETUP.md.")
        generate.add_argument(
            "--with", dest="method", choices=["auto", "template", "claude"], default="auto",
            help="auto (default): the template when SETUP.md matches one, else Claude.",
        )
        generate.add_argument(
            "--hint", default="", metavar="TEXT",
            help="Extra instructions, e.g. \"drop the column `customer_id`\" (read like SETUP.md lines "
                 "by the template; given to Claude in its prompt).",
        )
        imp = action("import", help="Import hand-written tools from files.")
        imp.add_argument("--load-data", dest="load_data", type=Path, metavar="FILE")
        imp.add_argument("--evaluate", type=Path, metavar="FILE")
        verify = action("verify", help="Run both tools in the sandbox and check them against the contract.")
        freeze = action("freeze", help="Freeze the verified tools and write the data snapshot.")
        freeze.add_argument("--override-audit", dest="override_audit", default="", metavar="REASON",
                            help="Freeze despite severe leak-audit findings; the reason is recorded on the task.")
        for queued in (setup, generate, verify, freeze):
            queued.add_argument("--background", action="store_true",
                                help="Queue it for a worker (qcluster) and return at once; `dojo_task show` follows it.")
        unfreeze = action("unfreeze", help="Unfreeze the task (recorded, with a reason).")
        unfreeze.add_argument("--reason", required=True, help="Why the contract changes (kept on the task).")
        action("show", help="State, fingerprints, tools with their verification, snapshot.")
        config = action("config", help="Change the primary metric or config keys (unfrozen task only).")
        config.add_argument("--metric", help="Primary metric (one of the task type's metrics).")
        config.add_argument(
            # Not dest="settings": Django reads options.settings as its --settings module.
            "--set", dest="config_items", action="append", default=[], metavar="KEY=VALUE",
            help="A config key, e.g. --set holdout_ratio=0.3 or --set limits.timeout_seconds=60 "
                 "(repeatable; limits.NAME=null removes that override; limits also on a frozen task).",
        )

    def handle(self, *args, **options) -> None:
        try:
            task = task_for_domain(domain=domain_resolve(name=options["domain"]))
            if options["action"] in JOB_KINDS and (options.get("background") or not tasks_inline()):
                self._queued(task, options)
                return
            getattr(self, f"_{options['action']}")(task, options)
        except DojoError as exc:
            raise command_error(exc) from None

    def _out(self, task, options, message: str) -> None:
        if options["json"]:
            print_json(self, task_status(task=task))
        else:
            self.stdout.write(message)

    def _queued(self, task, options) -> None:
        """DOJO_INLINE_TASKS=0 or --background: a worker runs the job; wait for it unless --background."""
        kind = options["action"]
        frozen_by = {"override_reason": options.get("override_audit", ""), "by": _cli_user()}
        params = {"generate": {"method": options.get("method", "auto"), "hint": options.get("hint", "")},
                  "freeze": frozen_by,
                  "setup": {"method": options.get("method", "auto"), **frozen_by}}.get(kind, {})
        task = task_job_enqueue(task=task, kind=kind, params=params)
        if options["background"]:
            self._out(task, options, f"{kind} queued; follow it with `dojo_task show`.")
            return
        seen = ""
        while True:
            task.refresh_from_db(fields=["job"])
            state = (task.job or {}).get("state", "")
            if state != seen and not options["json"]:
                self.stdout.write(f"{kind}: {state}")
            seen = state
            if state not in JOB_ACTIVE:
                break
            time.sleep(WAIT_POLL_SECONDS)
        task.refresh_from_db()
        self._out(task, options, json.dumps(task.job.get("result", {}), default=str))
        if state == "failed":
            raise NotReady(f"{kind} failed: {task.job.get('error', '')}")

    def _setup(self, task, options) -> None:
        task = task_setup(task=task, method=options["method"], override_reason=options["override_audit"],
                          by=_cli_user())
        self._out(task, options, f"Frozen: fingerprint {task.fingerprint[:12]}, data {task.data_fingerprint[:12]}")

    def _generate(self, task, options) -> None:
        tools = task_generate(task=task, method=options["method"], hint=options["hint"])
        task.refresh_from_db()
        listed = ", ".join(f"{t.name} v{t.version} ({t.origin})" for t in tools)
        self._out(task, options, f"Generated {listed}. Next: `dojo_task verify`.")
        if not options["json"]:
            self._notes(task.setup_notes)

    def _notes(self, notes: dict) -> None:
        console = console_for(self)
        for line in (notes or {}).get("understood", []):
            console.print(f"understood: {line}", markup=False)
        for line in (notes or {}).get("not_understood", []):
            console.print(f"not understood (ignored): {line}", markup=False)

    def _import(self, task, options) -> None:
        codes = {}
        for name in ("load_data", "evaluate"):
            path = options[name]
            if path is None:
                continue
            try:
                codes[name] = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise InvalidInput(f"cannot read {path}: {exc}") from None
        if not codes:
            raise InvalidInput("give --load-data FILE and/or --evaluate FILE")
        tools = task_tools_import(task=task, **codes)
        listed = ", ".join(f"{t.name} v{t.version}" for t in tools)
        self._out(task, options, f"Imported {listed}. Next: `dojo_task verify`.")

    def _verify(self, task, options) -> None:
        run = task_verify(task=task)
        if options["json"]:
            print_json(self, task_status(task=task))
        else:
            console = console_for(self)
            for check in (run.load_data, run.evaluate):
                mark = "[green]ok[/green]" if check.ok else "[red]failed[/red]"
                seconds = f" in {check.seconds:.2f} s" if check.seconds is not None else ""
                console.print(f"{check.name}: {mark}{seconds}")
                for error in check.errors:
                    console.print(f"  - {error}", markup=False)
            if run.isolation != "bwrap":
                console.print(f"Note: {task_status(task=task)['isolation_hint']}", markup=False)
            _print_audit(console, task.audit)
        if not run.ok:
            raise NotReady(f"verification failed: {run.errors[0]}" + (f" (+{len(run.errors) - 1} more)" if len(run.errors) > 1 else ""))

    def _freeze(self, task, options) -> None:
        task = task_freeze(task=task, override_reason=options["override_audit"], by=_cli_user())
        self._out(task, options, f"Frozen: fingerprint {task.fingerprint[:12]}, data {task.data_fingerprint[:12]}")

    def _unfreeze(self, task, options) -> None:
        task = task_unfreeze(task=task, reason=options["reason"])
        self._out(task, options, "Unfrozen. Experiments scored before are marked as from another contract.")

    def _config(self, task, options) -> None:
        config: dict = {}
        for item in options["config_items"]:
            key, sep, value = item.partition("=")
            key, value = key.strip(), value.strip()
            if not sep or not key:
                raise InvalidInput(f"--set takes KEY=VALUE (or SECTION.KEY=VALUE), got {item!r}")
            section, dot, name = key.partition(".")
            if not dot:
                config[key] = value
                continue
            # limits.timeout_seconds=60 → {"limits": {"timeout_seconds": "60"}}; `null` removes an override.
            if not name or "." in name:
                raise InvalidInput(f"--set {key}: use SECTION.KEY=VALUE with one dot, e.g. limits.timeout_seconds=60")
            if section not in ("limits",):
                raise InvalidInput(f"--set {key}: {section!r} has no sub-keys; dotted keys are for limits.<name>")
            existing = config.setdefault(section, {})
            if not isinstance(existing, dict):
                raise InvalidInput(f"--set {key}: {section} was also set as a whole")
            existing[name] = None if value.lower() in ("null", "none", "") else value
        if not config and not options["metric"]:
            raise InvalidInput("give --metric and/or --set KEY=VALUE")
        task = task_update(task=task, primary_metric=options["metric"], config=config or None)
        self._out(task, options, f"Primary metric {task.primary_metric} ({task.direction}); config {task.config}")

    def _show(self, task, options) -> None:
        status = task_status(task=task)
        if options["json"]:
            print_json(self, status)
            return
        console = console_for(self)
        console.print(f"[bold]{status['domain']}[/bold]: {status['task_type']}, {status['state']}")
        console.print(f"primary metric: {status['primary_metric']} ({status['direction']}); "
                      f"metrics: {', '.join(status['expected_metrics'])}")
        console.print(f"config: {status['config']}", markup=False)
        self._notes(status.get("setup_notes"))
        if status["frozen"]:
            console.print(f"frozen at {status['frozen_at']}; fingerprint {status['fingerprint']}")
            console.print(f"data fingerprint {status['data_fingerprint']}")
        elif status["unfrozen_at"]:
            console.print(f"unfrozen at {status['unfrozen_at']}: {status['unfreeze_reason']}", markup=False)
        table = Table("tool", "version", "origin", "verification", "seconds", "errors")
        for name, tool in status["tools"].items():
            if tool is None:
                table.add_row(name, "-", "-", "missing", "", "")
                continue
            if tool["edited_after_verification"]:
                verdict = "edited after verification"
            elif tool["verified_ok"] is None:
                verdict = "not verified"
            else:
                verdict = "ok" if tool["verified_ok"] else "failed"
            seconds = f"{tool['verification_seconds']:.2f}" if tool["verification_seconds"] is not None else ""
            table.add_row(name, str(tool["version"]), tool["origin"], verdict, seconds,
                          "\n".join(tool["verification_errors"]))
        console.print(table)
        snap = status["snapshot"]
        if snap:
            shapes = Table("part", "shape", "type", "bytes")
            sizes = snap.get("sizes", {})
            for part, where in (("X_train", "public"), ("y_train", "public"), ("X_test", "public"), ("y_test", "sealed")):
                shapes.add_row(part, "×".join(map(str, snap["shapes"][part])), snap["types"][part],
                               f"{sizes.get(f'{where}/{part}.pkl', 0):,}")
            console.print(shapes)
            console.print(f"validation rows {snap.get('n_validation')}, holdout rows {snap.get('n_holdout')}")
        _print_audit(console, status["audit"])
        override = status["audit_override"]
        if override:
            console.print(f"audit overridden by {override.get('by') or '?'} at {override.get('at')}: "
                          f"{override.get('reason')}", markup=False)
        if status["isolation_hint"]:
            console.print(f"Note: {status['isolation_hint']}", markup=False)


_SEVERITY_STYLE = {"severe": "bold red", "warning": "yellow", "info": "dim"}


def _print_audit(console, findings: list[dict]) -> None:
    """The leak audit's findings, severe first (domains/audit.py)."""
    if not findings:
        console.print("leak audit: not run yet (it runs with `dojo_task verify`)")
        return
    table = Table("severity", "check", "finding", title="Leak audit")
    for finding in findings:
        severity = str(finding.get("severity", ""))
        table.add_row(Text(severity, style=_SEVERITY_STYLE.get(severity, "")), str(finding.get("check", "")),
                      Text(str(finding.get("detail", ""))))
    console.print(table)



def _cli_user() -> str:
    """Who overrides from a terminal: the OS user, recorded as "cli:<name>"."""
    import getpass

    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"

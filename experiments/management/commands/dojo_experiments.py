import time
from pathlib import Path

from rich.syntax import Syntax
from rich.table import Table
from rich.text import Text

from dojo_site.cli import (
    ActionCommand,
    add_actions,
    add_domain_argument,
    add_json_argument,
    command_error,
    console_for,
    limit_checked,
    print_json,
)
from dojo_site.errors import InvalidInput
from domains.sandbox import ISOLATION_HINT, sandbox_isolation
from domains.services import domain_resolve, tasks_inline
from experiments.analysis import (
    compare_as_json,
    experiments_compare,
    experiments_for_compare,
    parse_ids,
)
from experiments.models import Experiment
from experiments.services import (
    SORTS,
    experiment_best,
    experiment_enqueue,
    experiment_get,
    experiment_leaderboard,
    experiment_reproduce,
    experiment_run,
    experiment_summary,
)

# How often `run` reads a queued experiment's state while it waits (one indexed read).
WAIT_POLL_SECONDS = 0.5


def _num(value) -> str:
    return "-" if value is None else f"{value:.6g}"


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


class Command(ActionCommand):
    help = ("A domain's experiments: ls | best | show ID | compare ID ID… | run --code-file F --hypothesis H | "
            "reproduce ID.")

    def add_arguments(self, parser) -> None:
        add_domain_argument(parser)
        add_json_argument(parser)
        add = add_actions(parser)
        ls = add("ls", "The leaderboard (or newest first with --sort created).")
        ls.add_argument("--sort", choices=["metric", *SORTS], default="rank",
                        help="rank (the default: the one meaning of best, experiments/ranking.py), validation "
                             "(= metric), holdout or created.")
        ls.add_argument("--state", choices=Experiment.State.values)
        ls.add_argument("--limit", type=int, default=20)
        add("best", "The best experiment: ranked by experiments/ranking.py, quarantined ones left out.")
        show = add("show", "One experiment: metrics, logs, artifacts (--code for the train code).")
        show.add_argument("experiment_id", metavar="ID")
        show.add_argument("--code", action="store_true", help="Print the train code too.")
        compare = add("compare", "Experiments side by side: metrics, params/variables (differences marked), record.")
        compare.add_argument("experiment_ids", metavar="ID", nargs="+")
        compare.add_argument("--diff-only", action="store_true", help="Only the rows whose values differ.")
        run = add("run", "Run one experiment by hand (the same path the agent uses).")
        run.add_argument("--code-file", required=True, help="A Python file defining train(...).")
        run.add_argument("--hypothesis", required=True)
        run.add_argument("--parent", help="Parent experiment ID (lineage).")
        run.add_argument("--seed", type=int)
        run.add_argument("--background", action="store_true",
                         help="Queue it for a worker (qcluster) and return at once with its ID.")
        reproduce = add("reproduce", "Re-run an experiment's stored code; show both metric sets.")
        reproduce.add_argument("experiment_id", metavar="ID")

    def _ls(self, options) -> None:
        domain = domain_resolve(name=options["domain"])
        sort = "validation" if options["sort"] == "metric" else options["sort"]
        rows = list(experiment_leaderboard(domain=domain, sort=sort, state=options["state"])[: limit_checked(options["limit"])])
        if options["json"]:
            print_json(self, [experiment_summary(e) | {"other_contract": getattr(e, "other_contract", False)} for e in rows])
            return
        if not rows:
            self.stdout.write(f"No experiments in {domain.name} yet.")
            return
        metric = domain.task.primary_metric
        table = Table("id", "state", f"{metric} (val)", f"{metric} (holdout)", "gap", "train s", "hypothesis",
                      title=f"Experiments of {domain.name} by {sort}")
        for e in rows:
            gap = None if e.primary_value is None or e.holdout_primary_value is None else e.holdout_primary_value - e.primary_value
            mark = " *" if getattr(e, "other_contract", False) else ""
            table.add_row(f"{e.pk}{mark}", e.state, _num(e.primary_value), _num(e.holdout_primary_value), _num(gap),
                          _num(e.train_seconds), Text((e.hypothesis or e.error)[:70]))
        console = console_for(self)
        console.print(table)
        if any(getattr(e, "other_contract", False) for e in rows):
            console.print("* scored under another contract (the task was re-frozen since)")

    def _best(self, options) -> None:
        domain = domain_resolve(name=options["domain"])
        best = experiment_best(domain=domain)
        if best is None:
            raise InvalidInput(f"no completed experiment in {domain.name} under its current contract yet")
        self._print(best, options, code=False)

    def _show(self, options) -> None:
        domain = domain_resolve(name=options["domain"]) if options.get("domain") else None
        self._print(experiment_get(experiment_id=options["experiment_id"], domain=domain), options, code=options["code"])

    def _compare(self, options) -> None:
        domain = domain_resolve(name=options["domain"]) if options.get("domain") else None
        exps = experiments_for_compare(ids=parse_ids(options["experiment_ids"]), domain=domain)
        data = experiments_compare(experiments=exps)
        if options["json"]:
            print_json(self, compare_as_json(data))
            return
        table = Table("", *(f"#{e.pk} {e.state}" for e in exps),
                      title=f"Compare in {exps[0].domain.name} (* = values differ; best of a metric row in bold)")
        for section, rows in (("metrics", data["metrics"]), ("params / variables", data["variables"]),
                              ("record", data["facts"])):
            shown = [r for r in rows if r.differs or not options["diff_only"]]
            if not shown:
                continue
            table.add_row(Text(section, style="bold underline"), *("" for _ in exps))
            for row in shown:
                cells = [Text(_cell(v)[:60], style="bold" if i == row.best else "") for i, v in enumerate(row.values)]
                table.add_row(Text(f"{'* ' if row.differs else '  '}{row.label}"), *cells)
        console_for(self).print(table)

    def _run(self, options) -> None:
        domain = domain_resolve(name=options["domain"])
        path = Path(options["code_file"])
        try:
            code = path.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise InvalidInput(f"cannot read {path}: {exc}") from None
        if sandbox_isolation() == "fallback" and not options["json"]:
            console_for(self).print(f"[yellow]warning:[/] {ISOLATION_HINT}")
        args = {"domain": domain, "train_code": code, "hypothesis": options["hypothesis"],
                "parent": options["parent"], "seed": options["seed"]}
        if options["background"] or not tasks_inline():
            # Queued (DOJO_INLINE_TASKS=0 or --background): a worker runs it; this machine runs no train code.
            exp = experiment_enqueue(**args)
            if options["background"]:
                if options["json"]:
                    print_json(self, experiment_summary(exp))
                else:
                    self.stdout.write(f"experiment #{exp.pk} queued; follow it with "
                                      f"`dojo_experiments show {exp.pk}`")
                return
            exp = self._wait(exp, quiet=options["json"])
        else:
            exp = experiment_run(**args)
        self._print(exp, options, code=False)
        if exp.state == Experiment.State.FAILED:
            raise command_error(InvalidInput(f"experiment #{exp.pk} failed: {exp.error}"))

    def _wait(self, exp: Experiment, *, quiet: bool) -> Experiment:
        """Poll the queued experiment until it ends, printing each state it passes through."""
        seen = ""
        while True:
            exp = Experiment.objects.get(pk=exp.pk)
            if exp.state != seen and not quiet:
                self.stdout.write(f"experiment #{exp.pk}: {exp.state}")
            seen = exp.state
            if exp.state not in (Experiment.State.PENDING, Experiment.State.RUNNING):
                return exp
            time.sleep(WAIT_POLL_SECONDS)

    def _reproduce(self, options) -> None:
        domain = domain_resolve(name=options["domain"]) if options.get("domain") else None
        original = experiment_get(experiment_id=options["experiment_id"], domain=domain)
        again = experiment_reproduce(experiment=original)
        if options["json"]:
            print_json(self, {"original": experiment_summary(original), "reproduction": experiment_summary(again)})
            return
        table = Table("metric", f"#{original.pk} validation", f"#{again.pk} validation",
                      f"#{original.pk} holdout", f"#{again.pk} holdout", title="Reproduction")
        for key in sorted(set(original.metrics) | set(again.metrics)):
            table.add_row(key, _num(original.metrics.get(key)), _num(again.metrics.get(key)),
                          _num(original.holdout_metrics.get(key)), _num(again.holdout_metrics.get(key)))
        console = console_for(self)
        console.print(table)
        same = again.metrics == original.metrics and again.holdout_metrics == original.holdout_metrics
        console.print("identical metrics" if same else f"metrics differ (reproduction state: {again.state} {again.error})")

    def _print(self, exp: Experiment, options, *, code: bool) -> None:
        if options["json"]:
            data = experiment_summary(exp) | {
                "stdout_tail": exp.stdout_tail, "stderr_tail": exp.stderr_tail,
                "artifacts": [{"path": a.path, "size": a.size, "content_type": a.content_type} for a in exp.artifacts.all()],
            }
            if code:
                data["train_code"] = exp.train_code
            print_json(self, data)
            return
        console = console_for(self)
        console.print(Text.assemble((f"#{exp.pk} ", "bold"), (exp.state, "green" if exp.state == "completed" else "red"),
                                    " ", exp.hypothesis))
        facts = Table(show_header=False, box=None)
        facts.add_row("domain", Text(exp.domain.name))
        facts.add_row("parent", f"#{exp.parent_id}" if exp.parent_id else "-")
        for label, metrics in (("validation", exp.metrics), ("holdout", exp.holdout_metrics)):
            facts.add_row(label, ", ".join(f"{k}={_num(v)}" for k, v in sorted(metrics.items())) or "-")
        if exp.error:
            facts.add_row("error", Text(exp.error, style="red"))
        facts.add_row("train / total s", f"{_num(exp.train_seconds)} / {_num(exp.total_seconds)}")
        facts.add_row("peak memory MB", _num(exp.peak_memory_mb))
        facts.add_row("seed", str(exp.seed))
        facts.add_row("isolation", exp.isolation or "-")
        facts.add_row("code sha256", exp.code_sha256[:16])
        for warning in exp.warnings:
            facts.add_row("warning", Text(warning, style="yellow"))
        for artifact in exp.artifacts.all():
            facts.add_row("artifact", f"{artifact.path} ({artifact.size} B)")
        for flag in exp.code_flags:
            style = "red" if flag.get("severity") == "severe" else "yellow"
            facts.add_row("code flag", Text(f"line {flag.get('line')} {flag.get('kind')} ({flag.get('severity')}): "
                                            f"{flag.get('text')}", style=style))
        for event in exp.audit_trail:
            facts.add_row("audit", Text(f"{event.get('kind')}: {event.get('detail')}", style="yellow"))
        console.print(facts)
        if exp.stderr_tail.strip() and exp.state == Experiment.State.FAILED:
            console.print(Text(exp.stderr_tail[-2000:], style="dim"))
        if code:
            console.print(Syntax(exp.train_code, "python", line_numbers=True))

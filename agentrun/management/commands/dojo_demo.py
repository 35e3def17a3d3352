"""`manage.py dojo_demo`: the whole product in one command, on a dataset bundled with scikit-learn.

Creates the admin user, a demo domain through the real pipeline (SETUP.md naming the loader →
template generation → verification → freeze), runs the built-in researcher in the foreground
through the real run loop, and prints the leaderboard, the knowledge written and how to open
the web UI. Run it again and the next run starts from what the first one learned.
"""

import os
import secrets
import time
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from rich.markup import escape
from rich.table import Table

from agentrun.models import AgentEvent, AgentRun
from agentrun.services import run_create, run_execute
from dojo_site.cli import add_json_argument, command_error, console_for, print_json
from dojo_site.errors import DojoError
from domains.models import Domain
from domains.services import domain_create, domain_use, task_setup
from experiments.models import Experiment
from experiments.ranking import best_experiment, ranked_experiments
from knowledge.models import KnowledgeAtom

DATASETS: dict[str, tuple[str, str]] = {
    # name → (scikit-learn loader, task type)
    "diabetes": ("load_diabetes", "regression"),
    "breast_cancer": ("load_breast_cancer", "binary"),
    "wine": ("load_wine", "multiclass"),
    "digits": ("load_digits", "multiclass"),
}
DESCRIPTIONS = {
    "diabetes": "Predict disease progression one year after baseline from ten measurements (442 patients).",
    "breast_cancer": "Tell malignant from benign tumours from 30 cell-nucleus measurements (569 samples).",
    "wine": "Name the cultivar of a wine from 13 chemical measurements (178 wines, 3 classes).",
    "digits": "Recognise handwritten digits from 8x8 pixel images (1,797 images, 10 classes).",
}
ADMIN_USERNAME = "admin"


class Command(BaseCommand):
    help = (
        "Create the admin user and a demo domain on a scikit-learn dataset, run the built-in "
        "researcher on it, and print the leaderboard and the knowledge it wrote."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("--dataset", choices=sorted(DATASETS), default="diabetes")
        parser.add_argument("--experiments", type=int, default=25, help="Experiments in the run (default 25).")
        parser.add_argument("--minutes", type=float, default=10.0, help="Wall-clock limit of the run (default 10).")
        parser.add_argument("--seed", type=int, default=0)
        add_json_argument(parser)

    def handle(self, *args: Any, **options: Any) -> None:
        console = console_for(self)
        quiet = options["json"]
        if options["experiments"] < 1:
            raise CommandError("--experiments must be at least 1")
        if options["minutes"] <= 0:
            raise CommandError("--minutes must be greater than 0")
        started = time.monotonic()
        try:
            login = admin_ensure()
            domain, setup_seconds = demo_domain_ensure(dataset=options["dataset"])
            run = run_create(
                domain=domain, backend="builtin", max_experiments=options["experiments"],
                max_minutes=options["minutes"], seed=options["seed"],
            )
        except DojoError as exc:
            raise command_error(exc) from None
        if not quiet:
            console.print(f"[bold]Dojo demo[/bold]: {escape(DESCRIPTIONS[options['dataset']])}")
            console.print(login["message"])
            console.print(
                f"Domain [bold]{domain.name}[/bold] ({domain.task.task_type}, "
                f"{domain.task.primary_metric}): task frozen in {setup_seconds:.1f}s. "
                f"Run {run.pk}: built-in researcher, {options['experiments']} experiments."
            )

        def on_event(event: AgentEvent) -> None:
            if not quiet:
                line = _event_line(event)
                if line:
                    console.print(line)

        run = run_execute(run_id=run.pk, on_event=on_event)
        seconds = time.monotonic() - started
        if quiet:
            print_json(self, demo_json(run=run, login=login, seconds=seconds))
            return
        _print_leaderboard(console, run)
        _print_pick(console, run)
        _print_knowledge(console, run)
        console.print(
            f"\nRun {run.pk} {run.status} in {seconds:.0f}s "
            f"({run.result.get('reason', '')}). To look around in the web UI:\n"
            f"  .venv/bin/python manage.py dojo_serve    (or: make serve)\n"
            f"  open http://127.0.0.1:8000{domain.get_absolute_url()} and log in as "
            f"[bold]{ADMIN_USERNAME}[/bold]. Run `make demo` again: the next run starts from "
            "this run's knowledge."
        )
        if run.status == AgentRun.Status.FAILED:
            raise CommandError(f"the run failed: {run.error}")


def admin_ensure() -> dict[str, Any]:
    """Create the `admin` superuser when missing; the password comes from DOJO_ADMIN_PASSWORD or
    is generated and shown once. An existing user is left alone."""
    users = get_user_model()
    if users.objects.filter(username=ADMIN_USERNAME).exists():
        return {
            "username": ADMIN_USERNAME, "created": False, "password": None,
            "message": f"Admin user [bold]{ADMIN_USERNAME}[/bold] exists (reset its password with "
            f"`manage.py changepassword {ADMIN_USERNAME}`).",
        }
    password = os.environ.get("DOJO_ADMIN_PASSWORD") or secrets.token_urlsafe(9)
    users.objects.create_superuser(username=ADMIN_USERNAME, email="", password=password)
    return {
        "username": ADMIN_USERNAME, "created": True, "password": password,
        "message": f"Created admin user [bold]{ADMIN_USERNAME}[/bold] with password "
        f"[bold]{escape(password)}[/bold] (shown once; change it with `manage.py changepassword {ADMIN_USERNAME}`).",
    }


def demo_domain_ensure(*, dataset: str) -> tuple[Domain, float]:
    """The demo domain for `dataset`, created and frozen through the real pipeline when missing.

    An existing demo domain is reused as it is, so a second demo run builds on the first one's
    knowledge; a broken one (its task not frozen) is set up again.
    """
    loader, task_type = DATASETS[dataset]
    name = f"demo-{dataset.replace('_', '-')}"
    started = time.monotonic()
    domain = Domain.objects.filter(name=name).first()
    if domain is None:
        workspace = Path(settings.DOJO_HOME) / "workspaces" / name
        workspace.mkdir(parents=True, exist_ok=True)
        domain = domain_create(
            name=name, task_type=task_type, workspace=workspace,
            description=DESCRIPTIONS[dataset], data_path=f"sklearn:{loader}",
        )
    else:
        domain_use(domain=domain)
    task_setup(task=domain.task)
    domain.refresh_from_db()
    return domain, time.monotonic() - started


def _event_line(event: AgentEvent) -> str:
    data = event.data or {}
    if event.type == "text":
        return f"[cyan]•[/cyan] {escape(str(data.get('text', '')))}"
    if event.type == "experiment":
        value = data.get("primary_value")
        shown = f"{value:.5g}" if isinstance(value, int | float) else "failed"
        best = " [green]best so far[/green]" if data.get("is_best") else ""
        seconds = data.get("train_seconds")
        took = f" ({seconds:.1f}s)" if isinstance(seconds, int | float) else ""
        error = f" [red]{escape(str(data.get('error', ''))[:120])}[/red]" if data.get("error") else ""
        return f"  experiment {data.get('experiment_id')}: {data.get('primary_metric')} {shown}{took}{best}{error}"
    if event.type == "error":
        return f"[red]error:[/red] {escape(str(data.get('error', '')))}"
    return ""


def _leaderboard(run: AgentRun) -> list[Experiment]:
    """The run's experiments ranked by the one meaning of "best" (experiments/ranking.py)."""
    return list(ranked_experiments(run.domain, run=run)[:10])


def _print_leaderboard(console, run: AgentRun) -> None:
    task = run.domain.task
    table = Table(title=f"Leaderboard of run {run.pk} ({task.primary_metric}, {task.direction}; ranked by rank value)")
    for column in ("#", "experiment", "rank value", "validation", "holdout", "gap", "train s", "hypothesis"):
        table.add_column(column, justify="right" if column not in ("hypothesis",) else "left")
    for rank, exp in enumerate(_leaderboard(run), start=1):
        holdout = exp.holdout_primary_value
        gap = f"{holdout - exp.primary_value:+.4g}" if holdout is not None else "-"
        spread = f" ± {exp.seed_spread:.2g}" if exp.seed_spread is not None else ""
        table.add_row(
            str(rank), str(exp.pk), f"{exp.rank_value:.5g}{spread}", f"{exp.primary_value:.5g}",
            f"{holdout:.5g}" if holdout is not None else "-", gap,
            f"{exp.train_seconds:.1f}" if exp.train_seconds is not None else "-",
            escape(exp.hypothesis[:70]),
        )
    console.print(table)


def _print_pick(console, run: AgentRun) -> None:
    """The best experiment of the run (the leaderboard's #1), with its holdout score."""
    exp = best_experiment(run.domain, run=run)
    if exp is None:
        return
    holdout = f"{exp.holdout_primary_value:.5g}" if exp.holdout_primary_value is not None else "-"
    console.print(
        f"Best: experiment {exp.pk}, rank value {exp.rank_value:.5g}, validation {exp.primary_value:.5g}, "
        f"holdout {holdout} — {escape(exp.hypothesis[:100])}"
    )


def _print_knowledge(console, run: AgentRun) -> None:
    atoms = list(
        KnowledgeAtom.objects.filter(created_by_run=run).order_by("-confidence", "pk")
    )
    if not atoms:
        console.print("No knowledge was written.")
        return
    console.print(f"[bold]Knowledge written by run {run.pk}[/bold] (the next run starts from it):")
    for atom in atoms:
        console.print(
            f"  [{atom.confidence:.2f}] v{atom.version} {escape(atom.claim)}"
            + (f"\n         → {escape(atom.action.split(' config=')[0])}" if atom.action else "")
        )


def demo_json(*, run: AgentRun, login: dict[str, Any], seconds: float) -> dict[str, Any]:
    return {
        "run_id": run.pk,
        "status": run.status,
        "domain": run.domain.name,
        "seconds": round(seconds, 1),
        "admin": {k: login[k] for k in ("username", "created", "password")},
        "result": run.result,
        "pick": getattr(best_experiment(run.domain, run=run), "pk", None),
        "leaderboard": [
            {
                "experiment_id": e.pk, "rank_value": e.rank_value, "seed_spread": e.seed_spread,
                "validation": e.primary_value, "holdout": e.holdout_primary_value,
                "hypothesis": e.hypothesis,
            }
            for e in _leaderboard(run)
        ],
        "knowledge": [
            {"atom_id": a.pk, "claim": a.claim, "action": a.action, "confidence": a.confidence, "version": a.version}
            for a in KnowledgeAtom.objects.filter(created_by_run=run).order_by("-confidence", "pk")
        ],
    }

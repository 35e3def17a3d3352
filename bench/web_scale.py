"""Server time and SQL queries of every page and API list at scale (issue 12 item 11).

    .venv/bin/python bench/web_scale.py [--experiments 10000] [--events 100000] [--atoms 2000] [--repeat 5]

Builds its own DOJO_HOME and SQLite DB in a temporary folder (removed at the end), seeds through
the ORM (bulk_create): one domain with a frozen-looking task, `--experiments` experiments (mostly
completed, some failed/stopped, a lineage, params), a run holding a tenth of them and `--events`
events, `--atoms` knowledge atoms with three evidence rows each (the FTS index fills through its
triggers). Then requests every page and API list with Django's test Client as a logged-in staff
user: the median server time of `--repeat` requests (after one warm-up) and the SQL queries of one
request (CaptureQueriesContext). Target: every one under 150 ms and under 15 queries. Prints the
load averages at the start and the end: this is a shared 2-core machine, read the figures with them.
"""

import argparse
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TARGET_MS, TARGET_QUERIES = 150.0, 15
WORDS = (
    "gradient boosting ridge lasso forest trees scaling target transform depth learning rate "
    "ensembles stacking features interactions polynomial splines knn svm logistic calibration"
).split()


def _loadavg() -> str:
    return Path("/proc/loadavg").read_text().strip()


def seed(*, n_experiments: int, n_events: int, n_atoms: int):
    from django.contrib.auth import get_user_model
    from django.utils import timezone

    from agentrun.models import AgentEvent, AgentRun
    from domains.models import Domain, Task
    from experiments.models import Experiment
    from knowledge.models import Evidence, KnowledgeAtom

    rng = random.Random(0)
    user = get_user_model().objects.create_user(username="bench", password="bench", is_staff=True, is_superuser=True)
    workspace = Path(os.environ["DOJO_HOME"]).parent / "workspace"
    workspace.mkdir(parents=True, exist_ok=True)
    (workspace / "PROGRAM.md").write_text("# Goal\n\nBeat the baseline on **RMSE**.\n\n| step | what |\n|---|---|\n| 1 | baselines |\n")
    (workspace / "SETUP.md").write_text("# Data\n\nDiabetes, target `target`.\n")
    domain = Domain.objects.create(
        name="scale", workspace_path=str(workspace), program_path=str(workspace / "PROGRAM.md"),
        setup_path=str(workspace / "SETUP.md"), owner=user,
    )
    for i in range(4):  # a few more domains, so the domains list is a list
        Domain.objects.create(name=f"other-{i}", workspace_path=str(workspace), program_path="", setup_path="", owner=user)
    task = Task.objects.create(
        domain=domain, task_type="regression", primary_metric="rmse", direction="minimize",
        expected_metrics=["rmse", "mae", "r2"], fingerprint="f" * 64, data_fingerprint="d" * 64,
        frozen_at=timezone.now(),
    )
    now = timezone.now()
    runs = [
        AgentRun.objects.create(domain=domain, backend="builtin", status=AgentRun.Status.COMPLETED,
                                started_at=now - timedelta(days=30 - i), finished_at=now - timedelta(days=29 - i))
        for i in range(29)
    ]
    live = AgentRun.objects.create(domain=domain, backend="builtin", status=AgentRun.Status.RUNNING,
                                   max_experiments=n_experiments, started_at=now - timedelta(hours=2))
    runs.append(live)
    code = "from sklearn.ensemble import HistGradientBoostingRegressor\n\n" + "\n".join(
        f"# line {i}: a comment that makes the code a realistic size" for i in range(60)
    ) + "\ndef train(X_train, y_train, X_test, *, artifacts_dir):\n    return X_test[:, 0]\n"
    states = ["completed"] * 17 + ["failed", "stopped", "completed"]
    experiments = []
    for i in range(n_experiments):
        state = states[i % len(states)]
        value = 50 + 20 * rng.random() - 10 * (i / n_experiments) if state == "completed" else None
        family = rng.choice(["hgb", "ridge", "forest", "knn"])
        experiments.append(Experiment(
            domain=domain, run=runs[i % len(runs)] if i % 10 else live, state=state,
            hypothesis=f"{family}: {' '.join(rng.sample(WORDS, 6))}", train_code=code, code_sha256=f"{i:064x}",
            variables={"family": family, "lr": round(rng.random(), 3), "depth": rng.randint(2, 12)},
            metrics={"rmse": value, "mae": value and value * 0.8, "r2": 0.4} if value else {},
            holdout_metrics={"rmse": value + rng.random()} if value else {},
            primary_value=value, holdout_primary_value=value + rng.random() if value else None,
            rank_value=value, train_seconds=rng.random() * 3, total_seconds=rng.random() * 4,
            task_fingerprint=task.fingerprint, data_fingerprint=task.data_fingerprint, seed=0,
            error="" if value else "stopped" if state == "stopped" else "ValueError: bad shape",
            started_at=now - timedelta(minutes=n_experiments - i), finished_at=now - timedelta(minutes=n_experiments - i - 1),
        ))
    Experiment.objects.bulk_create(experiments, batch_size=2000)
    # created_at is auto_now_add: spread it over 60 days for the trend.
    ids = list(Experiment.objects.filter(domain=domain).order_by("pk").values_list("pk", flat=True))
    for offset in range(0, len(ids), 2000):
        chunk = ids[offset:offset + 2000]
        Experiment.objects.filter(pk__in=chunk).update(created_at=now - timedelta(days=60 * (1 - offset / len(ids))))
    # A lineage: every experiment but the first hundred has a parent.
    parents = [Experiment(pk=pk, parent_id=ids[rng.randrange(max(1, i // 2))]) for i, pk in enumerate(ids) if i >= 100]
    Experiment.objects.bulk_update(parents, ["parent"], batch_size=2000)

    events = []
    for seq in range(1, n_events + 1):
        if seq % 20 == 0:
            events.append(AgentEvent(run=live, seq=seq, type="experiment", data={
                "experiment_id": ids[seq % len(ids)], "state": "completed", "primary_metric": "rmse",
                "primary_value": 50.0, "best_experiment_id": ids[0], "best_value": 40.0}))
        else:
            events.append(AgentEvent(run=live, seq=seq, type="text", data={"text": f"step {seq}: trying {rng.choice(WORDS)}"}))
        if len(events) == 5000:
            AgentEvent.objects.bulk_create(events)
            events = []
    AgentEvent.objects.bulk_create(events)

    atoms = KnowledgeAtom.objects.bulk_create(
        KnowledgeAtom(
            domain=domain, context=f"regression on diabetes, {' '.join(rng.sample(WORDS, 4))}",
            claim=f"{rng.choice(WORDS)} {rng.choice(WORDS)} beats {rng.choice(WORDS)} by {rng.randint(1, 40)}%",
            action=f"try {' '.join(rng.sample(WORDS, 3))}", confidence=round(rng.random(), 2),
            status=rng.choice(["active"] * 6 + ["superseded", "retracted"]),
        )
        for _ in range(n_atoms)
    )
    Evidence.objects.bulk_create(
        Evidence(atom=atom, experiment_id=ids[(k * 7 + j * 13) % len(ids)], stance="supports" if j else "contradicts")
        for k, atom in enumerate(atoms) for j in range(3)
    )
    return user, domain, live, ids


def measure(client, url: str, repeat: int) -> tuple[float, int, int]:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    response = client.get(url)  # warm-up (templates, caches)
    status = response.status_code
    connection.queries_log.clear()  # a full log (maxlen) would make the capture below look empty
    with CaptureQueriesContext(connection) as queries:
        client.get(url)
    n_queries = len(queries)  # now: the next request clears the log the capture reads
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        client.get(url)
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times), n_queries, status


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiments", type=int, default=10_000)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--atoms", type=int, default=2_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    load_start = _loadavg()

    home = Path(tempfile.mkdtemp(prefix="dojo-web-scale-"))
    os.environ["DOJO_HOME"] = str(home / "home")
    os.environ.pop("DATABASE_URL", None)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dojo_site.settings")
    try:
        import django

        django.setup()
        from django.conf import settings
        from django.core.management import call_command
        from django.test import Client

        settings.ALLOWED_HOSTS = [*settings.ALLOWED_HOSTS, "testserver"]
        call_command("migrate", verbosity=0)
        started = time.perf_counter()
        user, domain, run, ids = seed(n_experiments=args.experiments, n_events=args.events, n_atoms=args.atoms)
        print(f"seeded {args.experiments} experiments, {args.events} events, {args.atoms} atoms "
              f"in {time.perf_counter() - started:.1f} s")
        client = Client()
        client.force_login(user)
        d, r, mid = domain.pk, run.pk, args.events // 2
        deep = max(1, args.experiments // 25 - 3)
        pages = [
            ("domains list", "/domains/"),
            ("domains list: results (htmx)", "/runs/domains/results/"),
            ("domain overview", f"/domains/{d}/"),
            ("domain overview: results (htmx)", f"/runs/domain/{d}/results/"),
            ("leaderboard, first page", f"/experiments/domain/{d}/"),
            ("leaderboard, deep page by holdout", f"/experiments/domain/{d}/?sort=holdout&page={deep}"),
            ("optimisation history data", f"/experiments/domain/{d}/charts/history.json"),
            ("experiment page", f"/experiments/{ids[len(ids) // 2]}/"),
            ("run page", f"/runs/{r}/"),
            ("run page, experiments only", f"/runs/{r}/?show=experiments"),
            ("run page: poll", f"/runs/{r}/poll/?after={args.events - 10}"),
            ("run page: earlier events", f"/runs/{r}/earlier/?before={mid}"),
            ("run page: metric chart data", f"/runs/{r}/metrics.json"),
            ("runs tab", f"/runs/domain/{d}/"),
            ("runs list", "/runs/"),
            ("knowledge tab", f"/knowledge/domain/{d}/"),
            ("knowledge tab, page 20", f"/knowledge/domain/{d}/?page=20"),
            ("knowledge search", "/knowledge/?q=gradient+boosting"),
            ("API domains", "/api/domains"),
            ("API experiments", f"/api/domains/{d}/experiments"),
            ("API experiments, deep by holdout", f"/api/domains/{d}/experiments?sort=holdout&offset={args.experiments - 100}"),
            ("API runs", "/api/runs"),
            ("API run events after a cursor", f"/api/runs/{r}/events?after={mid}"),
            ("API run events before a cursor", f"/api/runs/{r}/events?before={mid}&limit=200"),
            ("API knowledge", "/api/knowledge"),
            ("API knowledge, deep page", f"/api/knowledge?offset={args.atoms - 100}"),
            ("API knowledge search", "/api/knowledge/search?query=gradient+boosting&limit=50"),
        ]
        print(f"load average before: {load_start}")
        print(f"{'page':44} {'median ms':>10} {'queries':>8}  status")
        misses = 0
        for name, url in pages:
            ms, queries, status = measure(client, url, args.repeat)
            miss = ms >= TARGET_MS or queries >= TARGET_QUERIES or status != 200
            misses += miss
            print(f"{name:44} {ms:10.1f} {queries:8d}  {status}{'  MISS' if miss else ''}")
        print(f"load average after:  {_loadavg()}")
        print(f"{len(pages) - misses} of {len(pages)} under {TARGET_MS:g} ms and {TARGET_QUERIES} queries")
        return 0
    finally:
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

"""Per-experiment overhead of the harness: wall time of experiment_run minus the time inside train().

    .venv/bin/python bench/overhead.py [--runs 20] [--rows 1000000] [--skip-big] [--skip-cold]

Builds its own DOJO_HOME and SQLite DB in a temporary folder, sets up two frozen domains through the
real pipeline (scikit-learn's diabetes; a rows × 20 numeric Parquet file), then times experiments
with the warm pool and with the cold-spawn fallback (DOJO_POOL_MAX=0). Prints medians, and the
load averages at the start and the end (this is a 2-core machine: other work on it shows up in
every figure, so read them together with the load).
"""

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

LINEAR = """
from sklearn.linear_model import LinearRegression

def train(X_train, y_train, X_test, *, artifacts_dir):
    return LinearRegression().fit(X_train, y_train).predict(X_test)
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--skip-big", action="store_true")
    parser.add_argument("--skip-cold", action="store_true")
    args = parser.parse_args()
    load_start = os.getloadavg()

    home = Path(tempfile.mkdtemp(prefix="dojo-bench-"))
    os.environ["DOJO_HOME"] = str(home / "home")
    os.environ.pop("DATABASE_URL", None)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dojo_site.settings")
    import django

    django.setup()
    from django.conf import settings
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    import numpy as np
    import pandas as pd

    from domains.sandbox import sandbox_isolation
    from domains.services import domain_create, task_setup
    from experiments.harness import pool
    from experiments.services import experiment_run

    cases = []
    ws = home / "diabetes"
    ws.mkdir()
    t = time.perf_counter()
    d = domain_create(name="bench-diabetes", task_type="regression", workspace=ws, data_path="sklearn:load_diabetes")
    task_setup(task=d.task)
    print(f"set up diabetes in {time.perf_counter() - t:.1f} s", flush=True)
    cases.append(("diabetes 442×10, LinearRegression", d))
    if not args.skip_big:
        ws = home / "big"
        ws.mkdir()
        rng = np.random.default_rng(0)
        X = rng.normal(size=(args.rows, 20))
        frame = pd.DataFrame(X, columns=[f"x{i}" for i in range(20)])
        frame["y"] = X @ rng.normal(size=20) + rng.normal(scale=0.1, size=args.rows)
        frame.to_parquet(ws / "data.parquet")
        del X, frame
        t = time.perf_counter()
        big = domain_create(name="bench-big", task_type="regression", workspace=ws, data_path="data.parquet",
                            target_column="y")
        task_setup(task=big.task)
        print(f"set up {args.rows}×20 in {time.perf_counter() - t:.1f} s", flush=True)
        cases.append((f"{args.rows:,}×20 numeric, LinearRegression", big))

    def measure(domain, runs: int) -> dict:
        overheads, totals, trains = [], [], []
        warm = None
        for i in range(runs + 1):
            t0 = time.perf_counter()
            exp = experiment_run(domain=domain, train_code=LINEAR, hypothesis="bench")
            wall = time.perf_counter() - t0
            if exp.state != "completed":
                raise SystemExit(f"experiment failed: {exp.error}")
            if i == 0:
                continue  # warm-up: starts the pool / evaluator
            warm = exp.environment.get("warm")
            overheads.append(wall - exp.train_seconds)
            totals.append(wall)
            trains.append(exp.train_seconds)
        return {"overhead": statistics.median(overheads), "total": statistics.median(totals),
                "train": statistics.median(trains), "min": min(overheads), "max": max(overheads), "warm": warm}

    rows = []
    for label, domain in cases:
        settings.DOJO_POOL_MAX = 4
        result = measure(domain, args.runs)
        rows.append((label, "warm pool", result))
        print(f"{label} / warm: {result}", flush=True)
        if not args.skip_cold:
            pool.pool_stop_all()
            settings.DOJO_POOL_MAX = 0
            result = measure(domain, args.runs)
            rows.append((label, "cold spawn", result))
            print(f"{label} / cold: {result}", flush=True)
            settings.DOJO_POOL_MAX = 4
        pool.pool_stop_all()

    print()
    load_end = os.getloadavg()
    print(f"isolation: {sandbox_isolation()}, cpus: {os.cpu_count()}, runs per row: {args.runs} (after 1 warm-up), "
          f"load average (1/5/15 min) at start: {' '.join(f'{x:.2f}' for x in load_start)}, "
          f"at end: {' '.join(f'{x:.2f}' for x in load_end)}")
    print("| case | path | overhead median (min–max) | in train() median | experiment_run wall median |")
    print("|---|---|---|---|---|")
    for label, path, r in rows:
        print(f"| {label} | {path} | {r['overhead'] * 1000:.1f} ms ({r['min'] * 1000:.1f}–{r['max'] * 1000:.1f}) | "
              f"{r['train'] * 1000:.1f} ms | {r['total'] * 1000:.1f} ms |")
    shutil.rmtree(home, ignore_errors=True)  # ~330 MB with the 1M-row case
    return 0


if __name__ == "__main__":
    sys.exit(main())

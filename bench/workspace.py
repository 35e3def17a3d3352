"""Costs of the workspace features (issue 11): importing a workspace module in train(), the
readiness check with fingerprinted workspace files, scanning a workspace, building an environment.

    .venv/bin/python bench/workspace.py [--runs 15] [--rows 100000]

Builds its own DOJO_HOME and SQLite DB in a temporary folder. Prints medians and the load averages
(a 2-core machine shared with other work: read the figures with the load).
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

PLAIN = """
import numpy as np

def train(X_train, y_train, X_test, *, artifacts_dir):
    return np.full(len(X_test), float(np.mean(y_train)))
"""
WITH_MODULE = """
import numpy as np
from mypipe.features import centre

def train(X_train, y_train, X_test, *, artifacts_dir):
    return np.full(len(X_test), centre(y_train))
"""
MODULE = "import numpy as np\n\n" + "\n".join(
    f"def helper_{i}(x):\n    return float(np.mean(x)) + {i} * 0.0\n" for i in range(200)
) + "\ndef centre(y):\n    return helper_0(y)\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--rows", type=int, default=100_000)
    args = parser.parse_args()
    load_start = os.getloadavg()
    home = Path(tempfile.mkdtemp(prefix="dojo-bench-ws-"))
    os.environ["DOJO_HOME"] = str(home / "home")
    os.environ.pop("DATABASE_URL", None)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dojo_site.settings")
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    import numpy as np
    import pandas as pd

    from domains.services import domain_create, domain_workspace_scan, task_assert_ready, task_setup
    from experiments.harness import pool
    from experiments.services import experiment_run

    try:
        ws = home / "repo"
        (ws / "mypipe").mkdir(parents=True)
        (ws / "mypipe" / "__init__.py").write_text("")
        (ws / "mypipe" / "features.py").write_text(MODULE)
        domain = domain_create(name="bench-ws", task_type="regression", workspace=ws, data_path="sklearn:load_diabetes")
        task_setup(task=domain.task)

        def overhead(code: str) -> float:
            values = []
            for i in range(args.runs + 1):
                t0 = time.perf_counter()
                exp = experiment_run(domain=domain, train_code=code)
                wall = time.perf_counter() - t0
                assert exp.state == "completed", exp.error
                if i:
                    values.append(wall - exp.train_seconds)
            return statistics.median(values)

        def train_time(code: str) -> float:
            return statistics.median(experiment_run(domain=domain, train_code=code).train_seconds
                                     for _ in range(args.runs))

        print(f"warm experiment overhead, plain train():            {overhead(PLAIN) * 1000:.1f} ms")
        print(f"warm experiment overhead, train() importing module: {overhead(WITH_MODULE) * 1000:.1f} ms")
        print(f"time inside train(), plain:                         {train_time(PLAIN) * 1000:.2f} ms")
        print(f"time inside train(), importing a 200-function module: {train_time(WITH_MODULE) * 1000:.2f} ms")
        pool.pool_stop_all()

        domain.task.refresh_from_db()
        from domains.models import Task

        task = Task.objects.select_related("domain").get(pk=domain.task.pk)
        task.contract_files = {"mypipe/features.py": "x"}  # timing only: the hash differs on purpose
        ready = []
        for _ in range(args.runs):
            t0 = time.perf_counter()
            try:
                task_assert_ready(task=task)
            except Exception:  # noqa: BLE001 - the refusal is what is timed
                pass
            ready.append(time.perf_counter() - t0)
        print(f"task_assert_ready with 1 fingerprinted workspace file (refusal): {statistics.median(ready) * 1000:.2f} ms")

        rng = np.random.default_rng(0)
        frame = pd.DataFrame(rng.normal(size=(args.rows, 20)), columns=[f"x{i}" for i in range(20)])
        frame["id"] = range(args.rows)
        frame["target"] = rng.normal(size=args.rows)
        frame.to_csv(ws / "train.csv", index=False)
        scans = []
        for _ in range(5):
            t0 = time.perf_counter()
            domain_workspace_scan(domain=domain)
            scans.append(time.perf_counter() - t0)
        print(f"scan of a workspace with a {args.rows:,}×22 CSV ({(ws / 'train.csv').stat().st_size / 1e6:.0f} MB): "
              f"{statistics.median(scans) * 1000:.0f} ms")
    finally:
        pool.pool_stop_all()
        shutil.rmtree(home, ignore_errors=True)
    print(f"load average (1/5/15 min) at start: {' '.join(f'{x:.2f}' for x in load_start)}, "
          f"at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Freeze a 1,000,000 x 20 numeric CSV task and print what it costs.

    .venv/bin/python bench/snapshot.py [--rows N] [--keep]

Prints the peak memory of the freeze (the sandboxed process that runs load_data once and writes
the snapshot, against the data's in-memory size; target < 3x) and the time to load the
trainer-visible snapshot back (X_train, y_train, X_test; target < 0.5 s). Everything lives in a
temporary DOJO_HOME; the CSV is cached in the system temp folder between runs.
"""

import argparse
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def make_csv(path: Path, rows: int, cols: int) -> None:
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(0)
    X = rng.normal(size=(rows, cols))
    frame = pd.DataFrame(X, columns=[f"x{i}" for i in range(cols)])
    frame["target"] = X @ rng.normal(size=cols) + rng.normal(size=rows)
    frame.to_csv(path, index=False, float_format="%.6f")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--cols", type=int, default=20)
    parser.add_argument("--keep", action="store_true", help="keep the temporary DOJO_HOME")
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="dojo-bench-snapshot-"))
    os.environ["DOJO_HOME"] = str(home / "home")
    os.environ.pop("DATABASE_URL", None)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dojo_site.settings")
    import django

    django.setup()
    from django.core.management import call_command

    from domains.services import domain_create, task_freeze, task_generate, task_verify
    from domains.snapshot import snapshot_load_public

    call_command("migrate", verbosity=0)
    workspace = home / "workspace"
    (workspace / "data").mkdir(parents=True)
    cached = Path(tempfile.gettempdir()) / f"dojo-bench-{args.rows}x{args.cols}.csv"
    if not cached.exists():
        started = time.perf_counter()
        make_csv(cached, args.rows, args.cols)
        print(f"wrote {cached} in {time.perf_counter() - started:.1f} s")
    # A hard link, not a symlink: the sandbox shows the workspace only, not the temp folder.
    try:
        os.link(cached, workspace / "data" / "train.csv")
    except OSError:
        shutil.copyfile(cached, workspace / "data" / "train.csv")
    csv_mb = cached.stat().st_size / 1e6

    domain = domain_create(
        name="bench", task_type="regression", workspace=workspace,
        data_path="data/train.csv", target_column="target",
    )
    task = domain.task
    task_generate(task=task, method="template")
    task.config["verify_timeout_seconds"] = 1200
    task.save()
    started = time.perf_counter()
    run = task_verify(task=task)
    assert run.ok, run.errors
    verify_s = time.perf_counter() - started

    self_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    started = time.perf_counter()
    task = task_freeze(task=task)
    freeze_s = time.perf_counter() - started
    self_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    info = task.snapshot_info

    data_mb = (args.rows * (args.cols + 1) * 8) / 1e6  # X (float64) and y, as load_data returns them
    peak_mb = info["peak_memory_mb"] * 1.048576  # rusage is in MiB; data size in MB
    loads = []
    for _ in range(5):
        started = time.perf_counter()
        X_train, y_train, X_test = snapshot_load_public(task.snapshot_path)
        loads.append(time.perf_counter() - started)
        del X_train, y_train, X_test

    print(f"data: {args.rows:,} x {args.cols} numeric + target; CSV {csv_mb:,.0f} MB; in memory {data_mb:,.0f} MB")
    print(f"verify: {verify_s:.2f} s; freeze: {freeze_s:.2f} s (load_data {info['load_data_seconds']:.2f} s inside); "
          f"isolation {info['isolation']}")
    print(f"freeze peak memory (sandboxed load_data + snapshot writer): {peak_mb:,.0f} MB "
          f"= {peak_mb / data_mb:.2f}x the data (target < 3x)")
    print(f"freeze, Dojo's own process: peak RSS {self_after:,.0f} MiB (was {self_before:,.0f} MiB before the freeze)")
    print(f"snapshot public files: {info['bytes_public'] / 1e6:,.0f} MB")
    print(f"snapshot load (X_train, y_train, X_test): first {loads[0]:.3f} s, median of 5 "
          f"{statistics.median(loads):.3f} s (target < 0.5 s)")
    if args.keep:
        print(f"kept {home}")
    else:
        from domains.snapshot import snapshot_remove

        snapshot_remove(task.snapshot_path)
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()

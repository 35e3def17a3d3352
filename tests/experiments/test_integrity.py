"""Attacks on the harness (reference dojoml 0.0.12 §18 recorded each of them as COMPLETED with forged
metrics). Each must end as a failed experiment or with honest metrics, never forged ones."""

import hashlib
import os
import socket
import time
from pathlib import Path

import pytest
from django.db import connection

from domains.services import task_assert_ready
from experiments.models import Artifact, Experiment
from experiments.services import artifact_open, experiment_run
from tests.experiments.conftest import LINEAR

HONEST_TAIL = """
    from sklearn.linear_model import LinearRegression
    return LinearRegression().fit(X_train, y_train).predict(X_test)
"""


def run(domain, code: str) -> Experiment:
    return experiment_run(domain=domain, train_code=code, hypothesis="attack")


@pytest.fixture
def baseline(diabetes):
    exp = run(diabetes, LINEAR)
    assert exp.state == "completed", exp.error
    return exp


def assert_failed_or_honest(exp: Experiment, baseline: Experiment) -> None:
    if exp.state == "failed":
        assert exp.metrics == {} and exp.primary_value is None
    else:
        assert exp.state == "completed"
        assert exp.metrics == baseline.metrics
        assert exp.holdout_metrics == baseline.holdout_metrics


def test_it_fails_reading_y_test_from_main(diabetes, baseline):
    exp = run(diabetes, """
def train(X_train, y_train, X_test, *, artifacts_dir):
    import __main__
    return __main__.y_test
""")
    assert exp.state == "failed"
    assert "y_test" in exp.error
    assert exp.metrics == {}


def test_it_finds_no_labels_in_the_callers_frames(diabetes, baseline):
    exp = run(diabetes, """
import sys

def train(X_train, y_train, X_test, *, artifacts_dir):
    frame = sys._getframe()
    while frame is not None:
        for scope in (frame.f_locals, frame.f_globals):
            for name in ("y_test", "y_true", "labels"):
                if name in scope:
                    return scope[name]
        frame = frame.f_back
    raise RuntimeError("no labels anywhere up the stack")
""")
    assert exp.state == "failed"
    assert "no labels anywhere up the stack" in exp.error


@pytest.mark.parametrize("module", ["load_data", "evaluate"])
def test_it_cannot_import_the_frozen_tools(diabetes, baseline, module):
    exp = run(diabetes, f"""
def train(X_train, y_train, X_test, *, artifacts_dir):
    import {module}
    return {module}.load_data()[3] if hasattr({module}, "load_data") else None
""")
    assert exp.state == "failed"
    assert "ModuleNotFoundError" in exp.error


@pytest.mark.parametrize("relative", ["sealed/y_test.pkl", "sealed/split.json", "tools/load_data.py", "tools/evaluate.py"])
def test_it_cannot_read_sealed_files_or_tools_by_path(diabetes, baseline, relative):
    target = Path(diabetes.task.snapshot_path) / relative
    assert target.exists()
    exp = run(diabetes, f"""
import pickle, runpy

def train(X_train, y_train, X_test, *, artifacts_dir):
    path = {str(target)!r}
    if path.endswith(".pkl"):
        with open(path, "rb") as fh:
            return pickle.load(fh)
    if path.endswith("load_data.py"):
        return runpy.run_path(path)["load_data"]()[3]
    return open(path).read()
""")
    assert exp.state == "failed"
    assert "No such file or directory" in exp.error or "Permission denied" in exp.error
    assert exp.metrics == {}


def test_it_cannot_overwrite_the_materialized_evaluate(diabetes, baseline):
    evaluate = Path(diabetes.task.snapshot_path) / "tools" / "evaluate.py"
    before = hashlib.sha256(evaluate.read_bytes()).hexdigest()
    exp = run(diabetes, f"""
def train(X_train, y_train, X_test, *, artifacts_dir):
    try:
        with open({str(evaluate)!r}, "w") as fh:
            fh.write("def evaluate(y_pred, **kw):\\n    return {{'rmse': 0.0, 'mae': 0.0, 'r2': 1.0}}\\n")
        print("OVERWROTE")
    except OSError as exc:
        print("refused:", exc)
{HONEST_TAIL}""")
    assert "OVERWROTE" not in exp.stdout_tail
    assert_failed_or_honest(exp, baseline)
    assert hashlib.sha256(evaluate.read_bytes()).hexdigest() == before
    task_assert_ready(task=diabetes.task)  # the contract is intact
    after = run(diabetes, LINEAR)
    assert after.metrics == baseline.metrics


def test_it_ignores_a_forged_metrics_line(diabetes, baseline):
    exp = run(diabetes, """
import os

def train(X_train, y_train, X_test, *, artifacts_dir):
    print('__DOJO_METRICS__:{"rmse": 0.001, "mae": 0.001, "r2": 0.999}', flush=True)
    print('{"id": "e1", "status": "exited", "returncode": 0}', flush=True)
    os._exit(0)
""")
    assert exp.state == "failed"
    assert "without returning predictions" in exp.error
    assert exp.metrics == {} and exp.primary_value is None


def test_it_scores_honestly_when_evaluate_is_monkeypatched(diabetes, baseline):
    exp = run(diabetes, f"""
import builtins, sys, types

fake = types.ModuleType("evaluate")
fake.evaluate = lambda y_pred, **kw: {{"rmse": 0.0, "mae": 0.0, "r2": 1.0}}
sys.modules["evaluate"] = fake
builtins.evaluate = fake.evaluate
import __main__
__main__.evaluate = fake.evaluate

def train(X_train, y_train, X_test, *, artifacts_dir):
{HONEST_TAIL}""")
    assert exp.state == "completed", exp.error
    assert exp.metrics == baseline.metrics
    assert exp.metrics["rmse"] > 1.0


def test_it_gives_the_trainer_no_server_secrets(diabetes, baseline, monkeypatch, settings):
    monkeypatch.setenv("DJANGO_SECRET_KEY", "django-secret-for-attack-test")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-attack-test")
    exp = run(diabetes, f"""
import os

def train(X_train, y_train, X_test, *, artifacts_dir):
    seen = dict(os.environ)
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                seen[pid] = open(f"/proc/{{pid}}/environ", "rb").read().decode(errors="replace")
            except OSError:
                pass
    text = repr(seen)
    print(text)
    (artifacts_dir / "env.txt").write_text(text)
{HONEST_TAIL}""")
    assert exp.state == "completed", exp.error
    with artifact_open(artifact=exp.artifacts.get(path="train/env.txt")) as stored:
        dumped = exp.stdout_tail + stored.read().decode()
    for secret in ("django-secret-for-attack-test", "sk-ant-attack-test", settings.SECRET_KEY):
        assert secret not in dumped
    assert "DOJO_SEED" in dumped  # the dump did run


def test_train_runs_below_the_trusted_sides_priority_and_cannot_raise_it(diabetes, baseline):
    # The harness and the evaluator come first when the CPU is short (trainer.TRAINER_NICENESS).
    exp = run(diabetes, f"""
import os

def train(X_train, y_train, X_test, *, artifacts_dir):
    print("NICE", os.getpriority(os.PRIO_PROCESS, 0))
    for how in (lambda: os.nice(-5), lambda: os.setpriority(os.PRIO_PROCESS, 0, 0)):
        try:
            how()
        except OSError:
            pass
    print("AFTER", os.getpriority(os.PRIO_PROCESS, 0))
{HONEST_TAIL}""")
    assert exp.state == "completed", exp.error
    niceness = os.getpriority(os.PRIO_PROCESS, 0) + 5
    assert f"NICE {niceness}" in exp.stdout_tail
    if exp.isolation == "bwrap":  # the sandbox user has no CAP_SYS_NICE
        assert f"AFTER {niceness}" in exp.stdout_tail, exp.stdout_tail


def test_it_cannot_open_the_database(diabetes, baseline, settings):
    paths = [str(connection.settings_dict["NAME"]), str(Path(settings.BASE_DIR) / "var" / "dojo.sqlite3")]
    exp = run(diabetes, f"""
import sqlite3

def train(X_train, y_train, X_test, *, artifacts_dir):
    for path in {paths!r}:
        try:
            db = sqlite3.connect(f"file:{{path}}?mode=ro", uri=True)
            rows = db.execute("select count(*) from experiments_experiment").fetchall()
            print("READ", path, rows)
        except sqlite3.Error as exc:
            print("refused", path, exc)
    raise SystemExit("done probing")
""")
    assert exp.state == "failed"
    assert "READ" not in exp.stdout_tail
    assert exp.stdout_tail.count("refused") == 2


def test_it_cuts_the_network(diabetes, baseline):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]
    try:
        exp = run(diabetes, f"""
import socket

def train(X_train, y_train, X_test, *, artifacts_dir):
    socket.create_connection(("127.0.0.1", {port}), timeout=2).sendall(b"leak")
{HONEST_TAIL}""")
    finally:
        server.close()
    assert exp.state == "failed"
    assert "ConnectionRefusedError" in exp.error or "Network is unreachable" in exp.error


def _processes_with(marker: str) -> list[int]:
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if marker.encode() in cmdline:
            found.append(int(pid))
    return found


def test_it_leaves_no_setsid_child_behind(diabetes, baseline):
    marker = f"dojo-setsid-{time.time_ns()}"
    exp = run(diabetes, f"""
import os, subprocess, sys

def train(X_train, y_train, X_test, *, artifacts_dir):
    subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)", {marker!r}], start_new_session=True)
    if os.fork() == 0:
        os.setsid()
        os.execv(sys.executable, [sys.executable, "-c", "import time; time.sleep(3600)", {marker!r}])
{HONEST_TAIL}""")
    assert_failed_or_honest(exp, baseline)
    deadline = time.monotonic() + 2
    while _processes_with(marker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _processes_with(marker) == []


def test_it_ignores_a_forged_hand_over_from_train(diabetes, baseline):
    """train() writing its own "results" to the hand-over pipe (fd 3) gets honest scores or a failure."""
    exp = run(diabetes, """
import io, json, os, struct
import numpy as np

def train(X_train, y_train, X_test, *, artifacts_dir):
    fake = io.BytesIO()
    np.save(fake, np.zeros(len(X_test)), allow_pickle=False)
    meta = json.dumps({"train_seconds": "lots", "peak_memory_mb": "huge", "metrics": {"rmse": 0.0}}).encode()
    os.write(3, struct.pack("<QQ", len(meta), len(fake.getvalue())) + meta + fake.getvalue())
    os._exit(0)
""")
    # Whatever arrives is only predictions: the trusted evaluator scores them honestly.
    assert exp.state == "completed", exp.error
    assert exp.metrics["rmse"] > 100  # all-zero predictions score badly
    assert exp.train_seconds is None and exp.peak_memory_mb is None


def test_it_refuses_an_oversized_hand_over(diabetes, baseline):
    exp = run(diabetes, """
import os, struct

def train(X_train, y_train, X_test, *, artifacts_dir):
    os.write(3, struct.pack("<QQ", 10, 10**12) + b"x" * 64)
    import time; time.sleep(30)
""")
    assert exp.state == "failed" and "hand-over larger than" in exp.error


def test_it_cannot_plant_artifacts_in_the_next_experiments_folder(diabetes, baseline):
    planter = run(diabetes, """
import os
from pathlib import Path

def train(X_train, y_train, X_test, *, artifacts_dir):
    work = Path(artifacts_dir).parent.parent
    mine = Path(artifacts_dir).parent.name          # e<pk>-<random>
    pk = int(mine[1:].split("-")[0])
    for guess in range(pk + 1, pk + 5):
        for name in (f"e{guess}", f"e{guess}-{mine.split('-')[-1]}"):
            target = work / name / "artifacts"
            target.mkdir(parents=True, exist_ok=True)
            (target / "planted.txt").write_text("not mine")
""" + HONEST_TAIL)
    # The slot's work folder belongs to the trusted side now (issue 9 item 5): planting fails at
    # once, or (a layout where the folder is writable) lands where no later experiment looks.
    assert planter.state == "completed" or "Permission denied" in planter.error, planter.error
    victim = run(diabetes, LINEAR)
    assert victim.state == "completed", victim.error
    assert not victim.artifacts.filter(path__contains="planted").exists()


def test_it_hides_the_raw_data_file_in_the_workspace(db, tmp_path):
    """The raw CSV holds the test rows' labels and the split is reproducible from the seed."""
    from sklearn.datasets import load_diabetes

    from domains.sandbox import sandbox_isolation
    from domains.services import domain_create, task_setup

    if sandbox_isolation(None) != "bwrap":
        pytest.skip("only bubblewrap can hide one file inside the bound workspace")
    workspace = tmp_path / "ws"
    workspace.mkdir()
    frame = load_diabetes(as_frame=True).frame
    frame.to_csv(workspace / "data.csv", index=False)
    domain = domain_create(name="csv-leak", task_type="regression", workspace=workspace,
                           data_path="data.csv", target_column="target")
    task_setup(task=domain.task)
    exp = run(domain, """
import os

def train(X_train, y_train, X_test, *, artifacts_dir):
    for path in ("data.csv", os.path.join(os.getcwd(), "data.csv")):
        try:
            with open(path) as handle:
                print("READ", len(handle.read()))
        except OSError as exc:
            print("DENIED", exc.errno)
""" + HONEST_TAIL)
    assert exp.state == "completed", exp.error
    assert "READ 0" in exp.stdout_tail or "DENIED" in exp.stdout_tail
    assert "target" not in exp.stdout_tail and (workspace / "data.csv").stat().st_size > 10_000


def test_it_hides_every_frozen_domains_raw_data_file_not_only_its_own(db, request):
    """A second domain frozen on a copy of the same data (another folder, another user's workspace):
    its raw file holds the same labels, so a lookup there must fail too."""
    from sklearn.datasets import load_diabetes

    from domains.sandbox import sandbox_isolation
    from domains.services import domain_create, task_setup

    if sandbox_isolation(None) != "bwrap":
        pytest.skip("only bubblewrap can hide single files inside a bound workspace")
    import shutil
    import tempfile

    frame = load_diabetes(as_frame=True).frame
    from django.conf import settings

    # Outside /tmp and /var/tmp (the sandbox has its own) and readable by the sandbox user, as a
    # real workspace is: under the project's own (git-ignored) tmp/.
    (Path(settings.BASE_DIR) / "tmp").mkdir(exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="dojo-copies-", dir=Path(settings.BASE_DIR) / "tmp"))
    root.chmod(0o755)
    request.addfinalizer(lambda: shutil.rmtree(root, ignore_errors=True))
    domains = []
    for name in ("copy-a", "copy-b"):
        workspace = root / name
        workspace.mkdir(mode=0o755)
        frame.to_csv(workspace / "data.csv", index=False)
        (workspace / "data.csv").chmod(0o644)
        domain = domain_create(name=name, task_type="regression", workspace=workspace,
                               data_path="data.csv", target_column="target")
        task_setup(task=domain.task)
        domains.append(domain)
    other_file = root / "copy-b" / "data.csv"
    exp = run(domains[0], f"""
def train(X_train, y_train, X_test, *, artifacts_dir):
    try:
        with open({str(other_file)!r}) as handle:
            print("READ", len(handle.read()))
    except OSError as exc:
        print("DENIED", exc.errno)
""" + HONEST_TAIL)
    assert exp.state == "completed", exp.error
    assert "READ 0" in exp.stdout_tail or "DENIED" in exp.stdout_tail, exp.stdout_tail


# --- Issue 9: the trusted side reads only what it opened itself (domains/safe_read.py) ----------


def _log_targets(diabetes, home: Path, monkeypatch) -> dict[str, tuple[str, str]]:
    """name → (path a planted link points to, a string that must never come back)."""
    import sqlite3

    secret = home / "secret_key"
    secret.write_text("SECRET-KEY-MARKER-9f2c")
    db = home / "dojo.sqlite3"
    with sqlite3.connect(db) as conn:
        conn.execute("create table t (v text)")
        conn.execute("insert into t values ('DB-ROW-MARKER-77e1')")
    monkeypatch.setenv("DOJO_ENVIRON_MARKER", "ENVIRON-MARKER-41ab")
    split = Path(diabetes.task.snapshot_path) / "sealed" / "split.json"
    return {
        "sealed-split": (str(split), '"holdout"'),
        "secret-key": (str(secret), "SECRET-KEY-MARKER-9f2c"),
        "sqlite": (str(db), "SQLite format 3"),
        "proc-environ": ("/proc/self/environ", "ENVIRON-MARKER-41ab"),
    }


@pytest.mark.parametrize("target", ["sealed-split", "secret-key", "sqlite", "proc-environ"])
def test_it_never_follows_a_log_planted_as_a_symlink(diabetes, baseline, settings, monkeypatch, target):
    """stdout.txt/stderr.txt replaced by links: the server used to read the link's target (as
    root) into the experiment's logs, which the agent reads back."""
    path, marker = _log_targets(diabetes, Path(settings.DOJO_HOME), monkeypatch)[target]
    exp = run(diabetes, f"""
import os, sys

def train(X_train, y_train, X_test, *, artifacts_dir):
    job = artifacts_dir.parent
    for name in ("stdout.txt", "stderr.txt"):
        os.unlink(job / name)
        os.symlink({path!r}, job / name)
{HONEST_TAIL}""")
    assert_failed_or_honest(exp, baseline)
    assert exp.state == "completed", exp.error
    assert marker not in exp.stdout_tail and marker not in exp.stderr_tail
    assert exp.stdout_tail == "" and exp.stderr_tail == ""
    text = " ".join(exp.warnings)
    assert "stdout.txt refused: a symlink" in text and "stderr.txt refused: a symlink" in text


def test_it_does_not_block_on_a_log_replaced_by_a_fifo(diabetes, baseline):
    """Opening a FIFO for reading blocks until a writer comes: the old code hung on it forever."""
    started = time.monotonic()
    exp = run(diabetes, f"""
import os

def train(X_train, y_train, X_test, *, artifacts_dir):
    job = artifacts_dir.parent
    os.unlink(job / "stdout.txt")
    os.mkfifo(job / "stdout.txt")
    os.mkfifo(job / "error.json")
{HONEST_TAIL}""")
    assert time.monotonic() - started < 20
    assert exp.state == "completed", exp.error
    assert "stdout.txt refused: a FIFO" in " ".join(exp.warnings)


def test_it_refuses_a_hard_linked_and_a_fifo_artifact(diabetes, baseline, settings):
    exp = run(diabetes, f"""
import os

def train(X_train, y_train, X_test, *, artifacts_dir):
    (artifacts_dir / "plain.txt").write_text("mine")
    (artifacts_dir.parent / "outside.txt").write_text("not an artifact")
    os.link(artifacts_dir.parent / "outside.txt", artifacts_dir / "linked.txt")
    os.mkfifo(artifacts_dir / "pipe")
    (artifacts_dir / "sub").mkdir()
    os.symlink("/etc", artifacts_dir / "sub" / "etc")
{HONEST_TAIL}""")
    assert exp.state == "completed", exp.error
    kept = sorted(p for p in exp.artifacts.values_list("path", flat=True) if p.startswith("train/"))
    assert kept == ["train/plain.txt"]
    text = " ".join(exp.warnings)
    assert "linked.txt refused: a hard link" in text
    assert "pipe refused: a FIFO" in text
    assert "sub/etc refused" in text
    # Only the kept files reached the shared storage: nothing was stored for the refused ones.
    stored = {str(f.relative_to(Path(settings.DOJO_HOME) / "shared"))
              for f in (Path(settings.DOJO_HOME) / "shared").rglob("*") if f.is_file()}
    assert stored == set(Artifact.objects.values_list("storage_name", flat=True))
    with artifact_open(artifact=exp.artifacts.get(path="train/plain.txt")) as plain:
        assert plain.read() == b"mine"


def test_it_refuses_a_job_folder_replaced_by_a_link(diabetes, baseline, settings):
    """train() swaps its whole job folder for a link to the sealed folder: nothing in it is read."""
    sealed = Path(diabetes.task.snapshot_path) / "sealed"
    exp = run(diabetes, f"""
import os, shutil

def train(X_train, y_train, X_test, *, artifacts_dir):
    job = artifacts_dir.parent
    os.rename(job, str(job) + "-gone")
    os.symlink({str(sealed)!r}, job)
{HONEST_TAIL}""")
    assert exp.metrics == {} or exp.metrics == baseline.metrics
    assert '"holdout"' not in exp.stdout_tail + exp.stderr_tail + exp.error


def _forging_interpreter(tmp_path: Path, n_rows: int) -> Path:
    """A "python" that speaks both harness protocols without running anything honest: as the
    trainer it hands over all-zero predictions, as the evaluator it answers perfect scores.
    What a user could point workspace_python at (it answers `-c` like a real interpreter)."""
    import io

    import numpy as np

    folder = tmp_path / "forger" / "bin"
    folder.mkdir(parents=True)
    zeros = io.BytesIO()
    np.save(zeros, np.zeros(n_rows), allow_pickle=False)
    (folder / "zeros.npy").write_bytes(zeros.getvalue())
    (folder / "fake.py").write_text(f"""
import json, os, sys
evaluator = sys.argv[1].endswith("evaluator.py")
perfect = {{"rmse": 0.0, "mae": 0.0, "r2": 1.0}}
zeros = open({str(folder / "zeros.npy")!r}, "rb").read()
out = sys.stdout.buffer
out.write(json.dumps({{"ready": True, "pid": os.getpid(), "versions": {{}}}}).encode() + b"\\n"); out.flush()
buf = b""
while True:
    chunk = os.read(0, 1 << 20)
    if not chunk:
        break
    buf += chunk
    while b"\\n" in buf:
        line, buf = buf.split(b"\\n", 1)
        req = json.loads(line)
        if "id" not in req:
            continue
        need = req.get("y_pred_bytes", 0)
        while len(buf) < need:
            buf += os.read(0, 1 << 20)
        buf = buf[need:]
        if evaluator:
            answer = {{"id": req["id"], "ok": True, "metrics": perfect, "holdout_metrics": perfect, "artifacts": {{}}}}
            out.write(json.dumps(answer).encode() + b"\\n")
        else:
            answer = {{"id": req["id"], "status": "exited", "returncode": 0, "signal": None, "meta": {{}},
                      "payload_bytes": len(zeros)}}
            out.write(json.dumps(answer).encode() + b"\\n" + zeros)
        out.flush()
""")
    script = folder / "python"
    script.write_text(f"""#!/bin/sh
case "$1" in
  *evaluator.py|*trainer.py) exec /usr/bin/python3 {folder / "fake.py"} "$@" ;;
esac
exec /usr/bin/python3 "$@"
""")
    script.chmod(0o755)
    return script


def test_it_runs_the_evaluator_in_dojos_interpreter_whatever_the_workspace_python(diabetes, baseline, tmp_path):
    """A workspace interpreter that forges the evaluator's answers changes nothing: the
    evaluator runs in Dojo's own interpreter; the user's one serves the trainer only (which
    here hands over zeros, scored as zeros)."""
    import sys

    if not Path("/usr/bin/python3").exists():
        pytest.skip("the forging interpreter is a shell script around /usr/bin/python3")
    from domains.snapshot import snapshot_load_public

    n_rows = len(snapshot_load_public(diabetes.task.snapshot_path)[2])
    diabetes.workspace_python = str(_forging_interpreter(tmp_path, n_rows))
    diabetes.save(update_fields=["workspace_python"])
    exp = run(diabetes, LINEAR)
    assert exp.state == "completed", exp.error
    assert exp.metrics["rmse"] > 100 and exp.holdout_metrics["rmse"] > 100  # zeros, honestly scored
    assert exp.environment["interpreter"] == diabetes.workspace_python
    assert exp.environment["evaluator"] == sys.executable


# --- Issue 9: every wait has a deadline the sandbox cannot stretch --------------------------------

LIMIT = 3  # seconds: the wall-clock limit of the hang tests' domain


@pytest.fixture
def short(make_domain):
    return make_domain(name="short-limit", config={"limits": {"timeout_seconds": LIMIT}})


def _timed(domain, code: str, **kwargs) -> tuple[Experiment, float]:
    """Run `code` on a warm slot (an honest run first: a slot discarded by the previous attack is
    replaced by then), and time it."""
    warm = experiment_run(domain=domain, train_code=LINEAR)
    assert warm.state == "completed", warm.error
    started = time.monotonic()
    exp = experiment_run(domain=domain, train_code=code, hypothesis="attack", **kwargs)
    return exp, time.monotonic() - started


def _assert_no_survivors(marker: str) -> None:
    deadline = time.monotonic() + 3
    while _processes_with(marker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _processes_with(marker) == []


def _sleeper(marker: str) -> str:
    """train() code starting a setsid() process that would sleep for an hour, named by marker."""
    return f"""
    import subprocess, sys
    subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)", {marker!r}], start_new_session=True)
"""


def test_it_ends_an_experiment_whose_train_stops_the_warm_parent(short):
    """SIGSTOP of the warm trainer: the server used to wait limit + 30 s, then blame a dead process."""
    marker = f"dojo-stopped-parent-{time.time_ns()}"
    exp, seconds = _timed(short, f"""
import os, signal

def train(X_train, y_train, X_test, *, artifacts_dir):
{_sleeper(marker)}
    os.kill(os.getppid(), signal.SIGSTOP)
    import numpy as np
    return np.zeros(len(X_test))
""")
    assert exp.state == "failed"
    assert "stopped responding" in exp.error and f"wall-clock limit ({LIMIT} s)" in exp.error
    assert seconds < LIMIT + 5
    _assert_no_survivors(marker)
    after = run(short, LINEAR)  # the slot was replaced, not reused
    assert after.state == "completed", after.error


def test_it_stops_within_two_seconds_when_the_warm_parent_is_stopped(short):
    marker = f"dojo-stop-stopped-{time.time_ns()}"
    asked: list[float] = []

    def should_stop() -> bool:
        if not asked and time.monotonic() - started > 1.0:
            asked.append(time.monotonic())
        return bool(asked)

    assert run(short, LINEAR).state == "completed"  # a warm slot
    started = time.monotonic()
    exp = experiment_run(domain=short, train_code=f"""
import os, signal, time

def train(X_train, y_train, X_test, *, artifacts_dir):
{_sleeper(marker)}
    os.kill(os.getppid(), signal.SIGSTOP)
    time.sleep(60)
""", should_stop=should_stop)
    assert asked and time.monotonic() - asked[0] < 2.0
    assert exp.error == "stopped"
    _assert_no_survivors(marker)


def test_it_stops_a_busy_train_within_two_seconds(short):
    asked: list[float] = []

    def should_stop() -> bool:
        if not asked and time.monotonic() - started > 1.0:
            asked.append(time.monotonic())
        return bool(asked)

    assert run(short, LINEAR).state == "completed"  # a warm slot
    started = time.monotonic()
    exp = experiment_run(domain=short, train_code="""
import signal, time

def train(X_train, y_train, X_test, *, artifacts_dir):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    while True:
        time.sleep(0.01)
""", should_stop=should_stop)
    assert asked and time.monotonic() - asked[0] < 2.0
    assert exp.error == "stopped"


def test_it_does_not_wait_for_a_grandchild_holding_the_result_pipe(short):
    """train() ends without a hand-over while a setsid() grandchild keeps fd 3 open: the old
    trainer read that pipe until EOF, forever; the grandchild and it were alive 21 minutes later."""
    marker = f"dojo-pipe-holder-{time.time_ns()}"
    exp, seconds = _timed(short, f"""
import os, sys

def train(X_train, y_train, X_test, *, artifacts_dir):
    if os.fork() == 0:
        os.setsid()
        os.execv(sys.executable, [sys.executable, "-c", "import time; time.sleep(3600)", {marker!r}])
    os._exit(0)
""")
    assert exp.state == "failed" and "without returning predictions" in exp.error
    assert seconds < LIMIT + 5
    _assert_no_survivors(marker)


def test_it_refuses_a_200_mb_meta_at_once(short):
    exp, seconds = _timed(short, """
import os, struct

def train(X_train, y_train, X_test, *, artifacts_dir):
    os.write(3, struct.pack("<QQ", 200 * 1024 * 1024, 16))
    chunk = b"[" * (1 << 20)
    for _ in range(200):
        os.write(3, chunk)
""")
    assert exp.state == "failed" and "hand-over meta larger than 65536 bytes" in exp.error
    assert seconds < LIMIT + 5


def test_it_reads_a_hand_over_just_under_the_cap_and_refuses_one_just_over(short):
    from experiments.services import prediction_cap

    cap = prediction_cap(task=short.task)
    assert cap < 64 * 1024  # X_test's rows × 2 × 8 bytes + a header: far below the old 512 MB
    code = """
import os, struct

def train(X_train, y_train, X_test, *, artifacts_dir):
    os.write(3, struct.pack("<QQ", 2, {size}) + b"{{}}" + b"\\0" * {size})
    os._exit(0)
"""
    under, seconds = _timed(short, code.format(size=cap - 1))
    assert under.state == "failed" and "y_pred could not be read" in under.error
    assert seconds < LIMIT + 5
    over, seconds = _timed(short, code.format(size=cap + 1))
    assert over.state == "failed" and f"hand-over larger than {cap} bytes" in over.error
    assert seconds < LIMIT + 5


def test_it_cannot_write_to_the_harness_pipe_through_proc(short):
    """The warm parent is not dumpable: its /proc fds (the protocol pipe to the server) are
    closed to train(), so no 200 MB or forged answer line can be written there."""
    exp = run(short, """
import os

def train(X_train, y_train, X_test, *, artifacts_dir):
    for fd in (0, 1, 2):
        try:
            with open(f"/proc/{os.getppid()}/fd/{fd}", "wb") as pipe:
                pipe.write(b'{"id": "x", "status": "exited"}\\n' + b"[" * (1 << 20))
            print("WROTE", fd)
        except OSError as exc:
            print("refused", fd, exc.errno)
""" + HONEST_TAIL)
    assert exp.state == "completed", exp.error
    assert "WROTE" not in exp.stdout_tail and exp.stdout_tail.count("refused") == 3


# --- Issue 9: nothing survives an experiment in a warm slot ---------------------------------------


def test_it_gives_each_experiment_fresh_scratch_folders(diabetes, baseline):
    """/tmp, /var/tmp, /dev/shm and $MPLCONFIGDIR used to carry files from one experiment to the
    next in the same slot: a channel between experiments and between runs."""
    planter = run(diabetes, """
import os
from pathlib import Path

def train(X_train, y_train, X_test, *, artifacts_dir):
    for folder in ("/tmp", "/var/tmp", "/dev/shm", os.environ.get("MPLCONFIGDIR", "/tmp/mpl"), os.environ["HOME"]):
        try:
            Path(folder).mkdir(parents=True, exist_ok=True)
            (Path(folder) / "planted-note").write_text("from the previous experiment")
        except OSError as exc:
            print("could not plant in", folder, exc)
    locked = Path("/tmp/locked")
    (locked / "deep").mkdir(parents=True, exist_ok=True)
    (locked / "deep" / "planted-note").write_text("x")
    os.chmod(locked / "deep", 0)
    os.chmod(locked, 0)
""" + HONEST_TAIL)
    assert planter.state == "completed", planter.error
    reader = run(diabetes, """
import os

def train(X_train, y_train, X_test, *, artifacts_dir):
    for folder in ("/tmp", "/var/tmp", "/dev/shm", os.environ.get("MPLCONFIGDIR", "/tmp/mpl"), os.environ["HOME"]):
        for root, dirs, files in os.walk(folder):
            for name in dirs + files:
                print("FOUND", os.path.join(root, name))
""" + HONEST_TAIL)
    assert reader.state == "completed", reader.error
    assert planter.environment["warm"] and reader.environment["warm"]
    assert "planted-note" not in reader.stdout_tail and "locked" not in reader.stdout_tail, reader.stdout_tail


def test_it_keeps_working_after_train_changes_its_slots_folders(diabetes, baseline):
    """chmod of the slot's work folder made every later experiment in that slot fail (10 of 10)."""
    attack = run(diabetes, """
import os

def train(X_train, y_train, X_test, *, artifacts_dir):
    slot = artifacts_dir.parent.parent
    for path, mode in ((slot, 0), (slot, 0o777), ("/tmp", 0), ("/dev/shm", 0)):
        try:
            os.chmod(path, mode)
            print("CHMOD", path)
        except OSError as exc:
            print("refused", path, exc.errno)
    for path in (slot / "squatter", slot / "e999999-0000"):
        try:
            os.mkdir(path)
            print("MKDIR", path)
        except OSError as exc:
            print("refused", path, exc.errno)
    os.chmod(artifacts_dir.parent, 0)  # its own job folder: allowed, and harmless to the next
""" + HONEST_TAIL)
    assert attack.state == "completed", attack.error
    assert "CHMOD" not in attack.stdout_tail and "MKDIR" not in attack.stdout_tail
    for _ in range(3):
        honest = run(diabetes, LINEAR)
        assert honest.state == "completed", honest.error
        assert honest.metrics == baseline.metrics


def test_it_kills_a_stopped_process_left_behind(diabetes, baseline):
    marker = f"dojo-stopped-orphan-{time.time_ns()}"
    exp = run(diabetes, f"""
import os, signal, subprocess, sys

def train(X_train, y_train, X_test, *, artifacts_dir):
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)", {marker!r}], start_new_session=True)
    os.kill(proc.pid, signal.SIGSTOP)
{HONEST_TAIL}""")
    assert_failed_or_honest(exp, baseline)
    _assert_no_survivors(marker)

"""dojo_run, dojo_stop and dojo_runs, in-process and (for Ctrl-C) as real processes."""

import json
import os
import signal
import subprocess
import sys
import time
from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from agentrun.models import AgentRun
from agentrun.services import run_create
from knowledge.models import KnowledgeAtom
from tests.agentrun.conftest import GOOD_TRAIN, MEAN_TRAIN
from tests.agentrun.helpers import assert_events_contiguous, execute_in_thread, wait_for
from tests.agentrun.test_background import WORKER, _subprocess_env


def _call(*args: str) -> str:
    out = StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


def test_dojo_run_streams_experiments_with_a_best_mark(frozen_domain, scripted):
    scripted(
        [
            {"text": "Starting with baselines."},
            {"tool": "run_experiment", "args": {"code": MEAN_TRAIN, "hypothesis": "mean"}},
            {"tool": "run_experiment", "args": {"code": GOOD_TRAIN, "hypothesis": "ridge"}},
            {"tool": "run_experiment", "args": {"code": MEAN_TRAIN, "hypothesis": "mean again"}},
        ],
        findings=[{"context": "diabetes", "claim": "ridge wins", "confidence": 0.7}],
    )
    output = _call("dojo_run", "--domain", "diabetes", "--backend", "scripted", "--max-experiments", "5")
    run = AgentRun.objects.get()
    assert run.status == "completed" and run.max_experiments == 5
    lines = [line for line in output.splitlines() if "experiment #" in line]
    assert len(lines) == 3
    assert "★ best so far" in lines[0] and "★ best so far" in lines[1] and "★ best so far" not in lines[2]
    assert "Starting with baselines." in output
    assert "knowledge #" in output and "ridge wins" in output
    assert "completed: 3 experiments, best #" in output


def test_dojo_run_prints_json_lines(frozen_domain, scripted):
    scripted([{"text": "hi"}])
    lines = _call("dojo_run", "--domain", "diabetes", "--backend", "scripted", "--json").splitlines()
    events = [json.loads(line) for line in lines]
    assert [e["seq"] for e in events[:-1]] == list(range(1, len(events)))
    assert events[-2]["type"] == "finalized"
    assert events[-1]["status"] == "completed" and events[-1]["domain"] == "diabetes"


def test_dojo_run_exits_3_when_the_task_is_not_ready(db, workspace):
    from domains.services import domain_create

    domain_create(name="raw", task_type="regression", workspace=workspace, data_path="sklearn:load_diabetes")
    with pytest.raises(CommandError, match="not frozen") as error:
        _call("dojo_run", "--domain", "raw")
    assert error.value.returncode == 3
    assert not AgentRun.objects.exists()


def test_dojo_run_exits_2_when_the_run_fails(frozen_domain, scripted):
    scripted([{"raise": "backend crashed"}])
    with pytest.raises(CommandError, match="run \\d+ failed: RuntimeError: backend crashed") as error:
        _call("dojo_run", "--domain", "diabetes", "--backend", "scripted")
    assert error.value.returncode == 2


def test_dojo_run_rejects_bad_limits_in_one_line(frozen_domain):
    with pytest.raises(CommandError, match="^max experiments must be greater than 0, got 0$") as error:
        _call("dojo_run", "--domain", "diabetes", "--max-experiments", "0")
    assert error.value.returncode == 1


@pytest.mark.parametrize(("args", "message"), [
    # Numbers past the columns' range were an OverflowError traceback at insert.
    (("--max-experiments", str(10**20)), "^max experiments must be at most 2147483647, got 100000000000000000000$"),
    (("--seed", str(10**20)), "^seed must be between -2147483648 and 2147483647, got 100000000000000000000$"),
    (("--budget-usd", "nan"), "^budget \\(USD\\) must be greater than 0, got nan$"),
])
def test_dojo_run_rejects_numbers_out_of_range_in_one_line(frozen_domain_in_transaction, args, message):
    with pytest.raises(CommandError, match=message) as error:
        _call("dojo_run", "--domain", "diabetes", *args)
    assert error.value.returncode == 1
    assert not AgentRun.objects.exists()


def test_dojo_runs_ls_takes_a_huge_limit_and_refuses_zero(frozen_domain_in_transaction):
    run = run_create(domain=frozen_domain_in_transaction)
    assert json.loads(_call("dojo_runs", "ls", "--domain", "diabetes", "--json", "--limit", str(10**20)))[0]["id"] == run.pk
    with pytest.raises(CommandError, match="^--limit must be at least 1$"):
        _call("dojo_runs", "ls", "--domain", "diabetes", "--limit", "-5")


def _start_dojo_run(dojo_home, tmp_path, script: dict) -> subprocess.Popen:
    env = _subprocess_env(dojo_home, script, tmp_path, COLUMNS="200")
    return subprocess.Popen(
        [sys.executable, str(WORKER), "manage", "dojo_run", "--domain", "diabetes", "--backend", "scripted"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


@pytest.mark.slow
def test_first_ctrl_c_stops_gracefully_and_flushes_knowledge(frozen_domain, dojo_home, tmp_path):
    script = {"steps": [{"text": "working"}, {"until_stopped": 60}], "findings": [{"claim": "flushed on stop", "context": "c"}]}
    process = _start_dojo_run(dojo_home, tmp_path, script)
    try:
        wait_for(lambda: AgentRun.objects.filter(events__data__text="working").exists(), what="the run to start")
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, err
    run = AgentRun.objects.get()
    assert run.status == "stopped" and run.stop_requested and run.result["reason"] == "stop requested"
    assert KnowledgeAtom.objects.filter(created_by_run=run, claim="flushed on stop").exists()
    assert "Stopping…" in out and "stopped:" in out
    assert_events_contiguous(run)


@pytest.mark.slow
def test_second_ctrl_c_skips_the_clean_up(frozen_domain, dojo_home, tmp_path):
    script = {
        "steps": [{"text": "working"}, {"until_stopped": 60}],
        "findings": [{"claim": "never written", "context": "c"}],
        "findings_delay": 60,
    }
    process = _start_dojo_run(dojo_home, tmp_path, script)
    try:
        wait_for(lambda: AgentRun.objects.filter(events__data__text="working").exists(), what="the run to start")
        process.send_signal(signal.SIGINT)
        wait_for(lambda: AgentRun.objects.filter(events__data__text="flushing knowledge").exists(), what="the flush")
        started = time.monotonic()
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, err
    assert time.monotonic() - started < 10
    run = AgentRun.objects.get()
    assert run.status == "stopped" and run.result["reason"] == "aborted: clean-up skipped"
    assert not KnowledgeAtom.objects.filter(created_by_run=run).exists()
    assert_events_contiguous(run)


def test_dojo_stop_stops_a_run_executing_elsewhere(frozen_domain, scripted):
    scripted([{"text": "busy"}, {"until_stopped": 60}])
    run = run_create(domain=frozen_domain, backend="scripted")
    thread, out = execute_in_thread(run.pk)
    wait_for(lambda: run.events.filter(data__text="busy").exists(), what="the run to start")
    printed = _call("dojo_stop", "--domain", "diabetes")
    assert f"Stop requested for run {run.pk}" in printed
    thread.join(15)
    assert out["run"].status == "stopped"
    with pytest.raises(CommandError, match=f"run {run.pk} has already finished \\(stopped\\)"):
        _call("dojo_stop", str(run.pk))


def test_dojo_stop_stops_a_queued_run_at_once(frozen_domain):
    run = run_create(domain=frozen_domain)
    assert json.loads(_call("dojo_stop", str(run.pk), "--json")) == {"id": run.pk, "status": "stopped", "stop_requested": True}
    run.refresh_from_db()
    assert run.status == "stopped" and [e.type for e in run.events.all()] == ["finalized"]
    with pytest.raises(CommandError, match="no queued or running run on domain 'diabetes'"):
        _call("dojo_stop", "--domain", "diabetes")
    with pytest.raises(CommandError, match="no run 999"):
        _call("dojo_stop", "999")


def test_dojo_runs_lists_and_shows(frozen_domain, scripted):
    scripted([{"tool": "run_experiment", "args": {"code": MEAN_TRAIN, "hypothesis": "mean"}}])
    _call("dojo_run", "--domain", "diabetes", "--backend", "scripted")
    run = AgentRun.objects.get()

    listed = json.loads(_call("dojo_runs", "ls", "--domain", "diabetes", "--json"))
    assert [(r["id"], r["status"], r["experiments"]) for r in listed] == [(run.pk, "completed", 1)]
    table = _call("dojo_runs", "ls", "--domain", "diabetes")
    assert "scripted" in table and "completed" in table and "1/1" in table

    shown = json.loads(_call("dojo_runs", "show", str(run.pk), "--events", "--json"))
    assert shown["id"] == run.pk and shown["result"]["best_experiment_id"]
    assert [e["seq"] for e in shown["events"]] == list(range(1, len(shown["events"]) + 1))
    text = _call("dojo_runs", "show", "--domain", "diabetes", "--events")
    assert "experiment #" in text and "finalized" in text
    with pytest.raises(CommandError, match="no run 4242"):
        _call("dojo_runs", "show", "4242")
    assert os.environ.get("DJANGO_SETTINGS_MODULE")


def test_dojo_run_background_queues_the_run_and_prints_its_url(
    frozen_domain_in_transaction, django_capture_on_commit_callbacks, monkeypatch, settings
):
    from django_q.conf import Conf

    monkeypatch.setattr(Conf, "SYNC", False)
    settings.DOJO_BASE_URL = "https://dojo.example/"
    with django_capture_on_commit_callbacks() as callbacks:
        text = _call("dojo_run", "--domain", "diabetes", "--background", "--max-experiments", "2")
    run = AgentRun.objects.get()
    assert run.status == "queued" and run.max_experiments == 2
    assert f"queued for the worker: https://dojo.example/runs/{run.pk}/" in text
    assert len(callbacks) == 1  # enqueued once the run row is committed
    as_json = json.loads(_call("dojo_run", "--domain", "diabetes", "--background", "--json"))
    assert as_json["status"] == "queued" and as_json["url"].startswith("https://dojo.example/runs/")

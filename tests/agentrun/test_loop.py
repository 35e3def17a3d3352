"""The run loop with a scripted backend and real experiments on a frozen diabetes domain."""

import json
import os
import time
from pathlib import Path

import pytest
from django_q.models import OrmQ

from agentrun.models import AgentEvent, AgentRun
from agentrun.services import (
    run_context_build,
    run_create,
    run_execute,
    run_start,
    run_stop_request,
)
from dojo_site.errors import InvalidInput, NotReady
from experiments.models import Experiment
from knowledge.models import KnowledgeAtom
from tests.agentrun import scripted_backend
from tests.agentrun.conftest import GOOD_TRAIN, MEAN_TRAIN, PROGRAM
from tests.agentrun.helpers import (
    assert_events_contiguous,
    event_types,
    exact_feedback,
    execute_in_thread,
    wait_for,
)


def test_it_refuses_an_unfrozen_task_and_enqueues_nothing(db, workspace, django_capture_on_commit_callbacks):
    from domains.services import domain_create

    domain = domain_create(name="raw", task_type="regression", workspace=workspace, data_path="sklearn:load_diabetes")
    with django_capture_on_commit_callbacks() as callbacks:
        with pytest.raises(NotReady, match="not frozen; run `dojo_task setup --domain raw`"):
            run_start(domain=domain)
    assert callbacks == []
    assert not AgentRun.objects.exists()
    assert not OrmQ.objects.exists()


def test_it_validates_the_limits(frozen_domain):
    with pytest.raises(InvalidInput, match="max experiments must be greater than 0"):
        run_create(domain=frozen_domain, max_experiments=0)
    with pytest.raises(InvalidInput, match="unknown backend 'gpt'"):
        run_create(domain=frozen_domain, backend="gpt")
    with pytest.raises(InvalidInput, match="max minutes must be at most"):
        run_create(domain=frozen_domain, max_minutes=10**9)
    assert not AgentRun.objects.exists()


def test_it_runs_a_backend_end_to_end(frozen_domain, scripted):
    exact_feedback(frozen_domain)  # compares what the agent saw with the stored metrics
    scripted(
        [
            {"tool": "list_knowledge", "args": {}},
            {"tool": "run_experiment", "args": {"code": MEAN_TRAIN, "hypothesis": "mean baseline"}},
            {"tool": "run_experiment", "args": {"code": GOOD_TRAIN, "hypothesis": "ridge", "parent_id": "$last.experiment_id"}},
            {
                "tool": "write_knowledge",
                "args": {
                    "context": "diabetes, 10 numeric features",
                    "claim": "Ridge regression beats the mean baseline on validation rmse",
                    "confidence": 0.8,
                    "evidence": [{"experiment_id": "$last.experiment_id", "stance": "supports"}],
                },
            },
            {"turn": True},
        ],
        findings=[{"context": "end of run", "claim": "linear models are a strong start on diabetes", "confidence": 0.6}],
    )
    run = run_create(domain=frozen_domain, backend="scripted")
    run = run_execute(run_id=run.pk)

    assert run.status == "completed", run.error
    assert run.prompt == PROGRAM
    assert run.turns == 1 and run.started_at and run.finished_at
    events = assert_events_contiguous(run)
    types = [e.type for e in events]
    assert types[0] == "text" and types[-2:] == ["result", "finalized"]
    assert types.count("experiment") == 2 and types.count("knowledge") == 2

    mean, ridge = Experiment.objects.filter(run=run).order_by("pk")
    assert mean.state == ridge.state == "completed"
    assert ridge.parent_id == mean.pk
    assert ridge.primary_value < mean.primary_value
    experiment_events = [e.data for e in events if e.type == "experiment"]
    assert experiment_events[0]["is_best"] and experiment_events[1]["is_best"]
    assert experiment_events[1]["best_experiment_id"] == ridge.pk
    assert run.result["best_experiment_id"] == ridge.pk and run.result["best_value"] == ridge.primary_value
    assert run.result["reason"] == "the agent finished"

    # What the agent got back: validation metrics, never the holdout.
    result = scripted_backend.RESULTS[2]
    assert result["ok"] and result["metrics"] == ridge.metrics and result["primary_value"] == ridge.primary_value
    assert "holdout" not in json.dumps(result)
    assert str(ridge.holdout_primary_value) not in json.dumps([e.data for e in events])

    atoms = KnowledgeAtom.objects.filter(created_by_run=run).order_by("pk")
    assert [a.claim for a in atoms] == [
        "Ridge regression beats the mean baseline on validation rmse",
        "linear models are a strong start on diabetes",
    ]
    assert list(atoms[0].evidence_links.values_list("experiment_id", flat=True)) == [ridge.pk]


def test_it_builds_the_context_from_program_contract_knowledge_and_leaderboard(frozen_domain):
    KnowledgeAtom.objects.create(domain=frozen_domain, context="diabetes", claim="bmi is the strongest feature", confidence=0.9)
    KnowledgeAtom.objects.create(domain=frozen_domain, context="old", claim="retracted idea", status="retracted")
    Experiment.objects.create(
        domain=frozen_domain, train_code="x", code_sha256="0" * 64, state="completed", hypothesis="ridge alpha=3",
        metrics={"rmse": 54.25}, primary_value=54.25, holdout_metrics={"rmse": 61.75}, holdout_primary_value=61.75,
        task_fingerprint=frozen_domain.task.fingerprint, data_fingerprint=frozen_domain.task.data_fingerprint,
    )
    Experiment.objects.create(  # scored under an earlier contract: not comparable, so not in the leaderboard
        domain=frozen_domain, train_code="x", code_sha256="0" * 64, state="completed", hypothesis="old contract",
        metrics={"rmse": 1.0}, primary_value=1.0, task_fingerprint="old", data_fingerprint="old",
    )
    Path(frozen_domain.program_path).write_text("# Program\nTry gradient boosting first.\n")
    run = run_create(domain=frozen_domain)
    Path(frozen_domain.program_path).write_text("# Program\nEdited after the run started.\n")

    context = run_context_build(run=run)

    assert run.prompt == "# Program\nTry gradient boosting first.\n"
    assert context["program"] == run.prompt
    assert (context["task_type"], context["primary_metric"], context["direction"]) == ("regression", "rmse", "minimize")
    assert context["expected_metrics"] == ["rmse", "mae", "r2"]
    assert [a["claim"] for a in context["knowledge"]] == ["bmi is the strongest feature"]
    assert [row["primary_value"] for row in context["leaderboard"]] == [54.25]
    prompt = context["system_prompt"]
    for text in ("Try gradient boosting first.", "rmse (lower is better)", "bmi is the strongest feature", "54.25",
                 "def train(X_train, y_train, X_test, *, artifacts_dir):", "run_experiment"):
        assert text in prompt
    assert "61.75" not in prompt and "retracted idea" not in prompt and "Edited after" not in prompt


def test_it_uses_a_prompt_override(frozen_domain):
    run = run_create(domain=frozen_domain, prompt="Only try tree models.")
    assert run.prompt == "Only try tree models."


def test_it_numbers_events_from_many_threads_without_gaps(frozen_domain, scripted):
    experiment = Experiment.objects.create(domain=frozen_domain, train_code="x", code_sha256="0" * 64, state="completed")
    calls = [{"tool": "log_metrics", "args": {"experiment_id": experiment.pk, "metrics": {"loss": float(i)}, "step": i}} for i in range(8)]
    scripted([{"parallel": calls}, {"parallel": calls}])
    run = run_execute(run_id=run_create(domain=frozen_domain, backend="scripted").pk)

    assert run.status == "completed"
    events = assert_events_contiguous(run)
    assert [e.type for e in events].count("tool_result") == 16
    experiment.refresh_from_db()
    # Every concurrent read-modify-write landed.
    assert sorted(e["step"] for e in experiment.logged_metrics) == sorted(list(range(8)) * 2)


def test_it_stops_when_a_stop_is_requested(frozen_domain, scripted):
    scripted([{"text": "waiting"}, {"until_stopped": 60}, {"text": "never said"}])
    run = run_create(domain=frozen_domain, backend="scripted")
    thread, out = execute_in_thread(run.pk)
    wait_for(lambda: AgentEvent.objects.filter(run=run, type="text", data__text="waiting").exists(), what="the run to start")
    started = time.monotonic()
    run_stop_request(run=run)
    thread.join(15)
    assert not thread.is_alive()
    run = out["run"]
    assert time.monotonic() - started < 5
    assert run.status == "stopped" and run.result["reason"] == "stop requested"
    assert "never said" not in json.dumps([e.data for e in run.events.all()])
    assert_events_contiguous(run)


def _trainer_sleepers(marker: str) -> list[int]:
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                if marker in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"):
                    found.append(int(pid))
            except OSError:
                continue
    return found


def test_it_stops_during_an_experiment_and_kills_the_trainer(frozen_domain, scripted):
    marker = "3600.4242"
    slow = f"""
import subprocess, time

def train(X_train, y_train, X_test, *, artifacts_dir):
    subprocess.Popen(["sleep", "{marker}"])
    time.sleep(600)
"""
    scripted([{"tool": "run_experiment", "args": {"code": slow, "hypothesis": "hangs"}}])
    run = run_create(domain=frozen_domain, backend="scripted")
    thread, out = execute_in_thread(run.pk)
    wait_for(lambda: _trainer_sleepers(marker), what="the trainer's child process")
    run_stop_request(run=run)
    thread.join(30)
    assert not thread.is_alive()
    run = out["run"]
    assert run.status == "stopped"
    experiment = Experiment.objects.get(run=run)
    # A person's stop is not a failure of the experiment's code.
    assert experiment.state == "stopped" and "stopped" in experiment.error
    assert run.result["stopped"] == 1 and run.result["failed"] == 0
    wait_for(lambda: not _trainer_sleepers(marker), timeout=10, what="the trainer's processes to die")
    assert_events_contiguous(run)


def test_it_enforces_max_experiments_across_threads(frozen_domain, scripted):
    call = {"tool": "run_experiment", "args": {"code": MEAN_TRAIN, "hypothesis": "mean"}}
    scripted([{"parallel": [call, call, call]}, call])
    run = run_execute(run_id=run_create(domain=frozen_domain, backend="scripted", max_experiments=2).pk)

    assert run.status == "completed"
    assert run.result["reason"] == "experiment limit reached (2)"
    assert Experiment.objects.filter(run=run).count() == 2
    refused = [r for r in scripted_backend.RESULTS if not r["ok"]]
    assert len(refused) == 1 and "experiment limit reached (2)" in refused[0]["error"]


def test_it_enforces_the_wall_clock(frozen_domain, scripted):
    scripted([{"until_stopped": 60}])
    started = time.monotonic()
    run = run_execute(run_id=run_create(domain=frozen_domain, backend="scripted", max_minutes=0.02).pk)
    assert run.status == "completed" and run.result["reason"] == "wall-clock limit reached"
    assert 1.0 <= time.monotonic() - started < 10


def test_it_enforces_the_budget(frozen_domain, scripted):
    scripted([{"cost": 0.03}, {"cost": 0.03}, {"text": "spent too much"}])
    run = run_execute(run_id=run_create(domain=frozen_domain, backend="scripted", budget_usd=0.05).pk)
    assert run.status == "completed" and run.result["reason"] == "budget reached ($0.05)"
    assert run.cost_usd == pytest.approx(0.06)
    assert "spent too much" not in event_types(run) and not run.events.filter(data__text="spent too much").exists()


def test_it_enforces_max_turns(frozen_domain, scripted):
    scripted([{"turn": True}, {"turn": True}, {"text": "third turn"}])
    run = run_execute(run_id=run_create(domain=frozen_domain, backend="scripted", max_turns=2).pk)
    assert run.status == "completed" and run.turns == 2 and run.result["reason"] == "turn limit reached (2)"
    assert not run.events.filter(data__text="third turn").exists()


def test_it_fails_cleanly_when_the_backend_raises(frozen_domain, scripted):
    scripted([{"text": "about to break"}, {"raise": "the model went away"}], findings=[{"claim": "still written", "context": "c"}])
    run = run_execute(run_id=run_create(domain=frozen_domain, backend="scripted").pk)
    assert run.status == "failed"
    assert run.error == "RuntimeError: the model went away"
    events = assert_events_contiguous(run)
    error = next(e for e in events if e.type == "error")
    assert "the model went away" in error.data["traceback"]
    assert events[-2].data["status"] == "failed"
    assert KnowledgeAtom.objects.filter(created_by_run=run, claim="still written").exists()


def test_it_goes_on_after_a_tool_handler_raises(frozen_domain, scripted, monkeypatch):
    import knowledge.services

    def broken(**kwargs):
        raise RuntimeError("search index exploded")

    monkeypatch.setattr(knowledge.services, "atom_search", broken)
    scripted([{"tool": "search_knowledge", "args": {"query": "ridge"}}, {"text": "carrying on"}])
    run = run_execute(run_id=run_create(domain=frozen_domain, backend="scripted").pk)
    assert run.status == "completed"
    result = run.events.get(type="tool_result")
    assert result.data["ok"] is False
    assert result.data["result"]["error"] == "search_knowledge failed: RuntimeError: search index exploded"
    assert run.events.filter(type="text", data__text="carrying on").exists()


def test_it_executes_a_run_only_once(frozen_domain, scripted):
    scripted([{"text": "hello"}])
    run = run_create(domain=frozen_domain, backend="scripted")
    first = run_execute(run_id=run.pk)
    count = first.events.count()
    second = run_execute(run_id=run.pk)
    assert second.status == first.status == "completed"
    assert second.events.count() == count
    assert first.events.filter(data__text="hello").count() == 1


def test_it_fails_a_run_whose_task_was_unfrozen_while_queued(frozen_domain, scripted):
    from domains.services import task_unfreeze

    scripted([{"text": "should not run"}])
    run = run_create(domain=frozen_domain, backend="scripted")
    task_unfreeze(task=frozen_domain.task, reason="new data")
    run = run_execute(run_id=run.pk)
    assert run.status == "failed" and "not frozen" in run.error
    assert not run.events.filter(data__text="should not run").exists()
    assert_events_contiguous(run)


def test_it_runs_two_runs_on_one_domain_at_once(frozen_domain, scripted):
    call = {"tool": "run_experiment", "args": {"code": MEAN_TRAIN, "hypothesis": "mean"}}
    scripted([call, {"tool": "list_experiments", "args": {}}, call])
    first = run_create(domain=frozen_domain, backend="scripted")
    second = run_create(domain=frozen_domain, backend="scripted")
    threads = [execute_in_thread(first.pk), execute_in_thread(second.pk)]
    for thread, _ in threads:
        thread.join(120)
        assert not thread.is_alive()
    for (_, out), run in zip(threads, (first, second), strict=True):
        assert "error" not in out
        run = out["run"]
        assert run.status == "completed", run.error
        assert_events_contiguous(run)
        assert list(Experiment.objects.filter(run=run).values_list("state", flat=True)) == ["completed", "completed"]
    assert Experiment.objects.filter(domain=frozen_domain).count() == 4

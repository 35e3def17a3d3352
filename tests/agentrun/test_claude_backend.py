"""The Claude backend, offline, through the real claude-agent-sdk.

Most tests spawn tests/fakes/claude_agent.py as the CLI (the SDK's `cli_path`): a scripted model
whose mcp__dojo__* calls travel the SDK's real MCP routing into our tool handlers. One test runs
the SDK's bundled Claude Code CLI against tests/fakes/anthropic_api.py on 127.0.0.1.
"""

import json
import sys
import time
from pathlib import Path

import pytest

from agentrun.backends.claude import findings_parse
from agentrun.models import AgentRun
from agentrun.services import run_create, run_execute, run_stop_request
from experiments.models import Experiment
from knowledge.models import KnowledgeAtom
from tests.agentrun.conftest import GOOD_TRAIN, MEAN_TRAIN, PROGRAM
from tests.agentrun.helpers import (
    assert_events_contiguous,
    exact_feedback,
    execute_in_thread,
    wait_for,
)
from tests.fakes import anthropic_api

FAKE_CLI = Path(__file__).resolve().parents[1] / "fakes" / "claude_agent.py"
FINDINGS_JSON = json.dumps([
    {"context": "diabetes regression", "claim": "Ridge beats the mean predictor clearly", "action": "start from Ridge",
     "confidence": 0.7, "evidence": ["$RIDGE"]},
])


@pytest.fixture
def fake_claude(tmp_path, settings, monkeypatch):
    """Point the backend at the fake CLI; returns (write_script, read_log)."""
    wrapper = tmp_path / "claude"
    wrapper.write_text(f"#!/bin/sh\nexec {sys.executable} {FAKE_CLI} \"$@\"\n")
    wrapper.chmod(0o755)
    settings.DOJO_CLAUDE_CLI_PATH = str(wrapper)
    # The fake lives and logs under /tmp, which the CLI's bubblewrap profile replaces; the walls
    # themselves are tested through the real CLI below.
    settings.DOJO_CLAUDE_SANDBOX = "off"
    log = tmp_path / "fake-claude.log"
    monkeypatch.setenv("FAKE_CLAUDE_LOG", str(log))

    def write_script(script: dict) -> None:
        path = tmp_path / "script.json"
        path.write_text(json.dumps(script))
        monkeypatch.setenv("FAKE_CLAUDE_SCRIPT", str(path))

    def read_log() -> list[dict]:
        return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []

    return write_script, read_log


def _argv(entries: list[dict]) -> list[str]:
    return next(e["argv"] for e in entries if "argv" in e)


def test_it_runs_experiments_and_writes_knowledge_over_mcp(frozen_domain, fake_claude):
    exact_feedback(frozen_domain)  # compares what the agent saw with the stored metrics
    write_script, read_log = fake_claude
    write_script({
        "cost_per_call": 0.01,
        "turns": [[
            {"text": "I will start with a mean baseline, then Ridge."},
            {"tool": "mcp__dojo__run_experiment", "input": {"code": MEAN_TRAIN, "hypothesis": "mean baseline"}},
            {"tool": "mcp__dojo__run_experiment", "input": {"code": GOOD_TRAIN, "hypothesis": "ridge", "parent_id": "$last.experiment_id"}},
            {"tool": "mcp__dojo__write_knowledge", "input": {
                "context": "diabetes regression", "claim": "Ridge with alpha=1 is a strong first model",
                "confidence": 0.75, "evidence": [{"experiment_id": "$last.experiment_id"}]}},
            {"text": "Ridge is best so far."},
        ]],
        "oneshot": FINDINGS_JSON,
    })
    run = run_create(domain=frozen_domain, backend="claude")
    run = run_execute(run_id=run.pk)

    assert run.status == "completed", run.error
    mean, ridge = Experiment.objects.filter(run=run).order_by("pk")
    assert (mean.state, ridge.state) == ("completed", "completed") and ridge.parent_id == mean.pk
    written = KnowledgeAtom.objects.get(created_by_run=run, claim="Ridge with alpha=1 is a strong first model")
    assert list(written.evidence_links.values_list("experiment_id", flat=True)) == [ridge.pk]

    events = assert_events_contiguous(run)
    texts = [e.data["text"] for e in events if e.type == "text"]
    assert "I will start with a mean baseline, then Ridge." in texts and "Ridge is best so far." in texts
    calls = [e.data for e in events if e.type == "tool_call"]
    assert [c["name"] for c in calls] == ["run_experiment", "run_experiment", "write_knowledge"]
    assert [c["arguments"]["hypothesis"] for c in calls[:2]] == ["mean baseline", "ridge"]
    assert [e.data["experiment_id"] for e in events if e.type == "experiment"] == [mean.pk, ridge.pk]
    # Five scripted model calls at $0.01, then the one-shot summary at $0.01; all are this run's.
    assert run.turns == 5
    assert run.cost_usd == pytest.approx(0.06)
    assert run.result["claude_result"] == "success"

    log = read_log()
    # What the model saw from run_experiment: validation metrics, never the holdout.
    seen = [e["tool_result"] for e in log if "tool_result" in e]
    assert json.loads(seen[1]["text"])["metrics"] == ridge.metrics
    assert "holdout" not in json.dumps(seen)

    argv = _argv(log)
    assert "--setting-sources=" in argv
    assert argv[argv.index("--tools") + 1] == "Read,Glob,Grep"
    # Built-ins are never pre-allowed: each call is asked about over stdio (can_use_tool).
    assert argv[argv.index("--permission-prompt-tool") + 1] == "stdio"
    allowed = argv[argv.index("--allowedTools") + 1].split(",")
    assert "mcp__dojo__run_experiment" in allowed and not {"Bash", "Write", "Read"} & set(allowed)
    system_prompt = argv[argv.index("--system-prompt") + 1]
    assert PROGRAM.strip() in system_prompt and "rmse (lower is better)" in system_prompt


def test_it_writes_the_end_of_run_summary_as_knowledge(frozen_domain, fake_claude, monkeypatch):
    from agentrun.backends import claude as claude_backend

    write_script, _ = fake_claude
    script = {"turns": [[{"tool": "mcp__dojo__run_experiment", "input": {"code": GOOD_TRAIN, "hypothesis": "ridge"}}]]}
    write_script(script)
    original = claude_backend.findings

    def findings_citing_the_run(session):
        # The scripted summary cites the experiment the run made, once its id is known.
        ridge = Experiment.objects.get(run=session.run)
        write_script({**script, "oneshot": "```json\n" + FINDINGS_JSON.replace('"$RIDGE"', str(ridge.pk)) + "\n```"})
        return original(session)

    monkeypatch.setattr(claude_backend, "findings", findings_citing_the_run)
    run = run_execute(run_id=run_create(domain=frozen_domain, backend="claude").pk)

    assert run.status == "completed", run.error
    ridge = Experiment.objects.get(run=run)
    atom = KnowledgeAtom.objects.get(created_by_run=run)
    assert atom.claim == "Ridge beats the mean predictor clearly" and atom.action == "start from Ridge"
    assert list(atom.evidence_links.values_list("experiment_id", flat=True)) == [ridge.pk]
    assert run.events.filter(type="knowledge", data__source="end-of-run findings").count() == 1


def test_it_interrupts_claude_when_the_run_is_stopped(frozen_domain, fake_claude):
    write_script, read_log = fake_claude
    write_script({"turns": [[{"text": "Let me think for a long time."}, {"sleep": 60}, {"text": "never said"}]]})
    run = run_create(domain=frozen_domain, backend="claude")
    thread, out = execute_in_thread(run.pk)
    wait_for(lambda: run.events.filter(data__text="Let me think for a long time.").exists(), what="Claude to start")
    started = time.monotonic()
    run_stop_request(run=run)
    thread.join(30)
    assert not thread.is_alive() and "error" not in out
    run = out["run"]
    assert run.status == "stopped" and time.monotonic() - started < 10
    assert run.result["claude_result"] == "error_during_execution"
    assert not run.events.filter(data__text="never said").exists()
    received = [e["received"]["request"]["subtype"] for e in read_log() if e.get("received", {}).get("type") == "control_request"]
    assert "interrupt" in received


def test_it_stops_on_the_budget_and_charges_the_difference(frozen_domain, fake_claude):
    write_script, read_log = fake_claude
    calls = [{"tool": "mcp__dojo__list_experiments", "input": {}} for _ in range(6)]
    write_script({"cost_per_call": 0.01, "turns": [calls]})
    run = run_execute(run_id=run_create(domain=frozen_domain, backend="claude", budget_usd=0.025).pk)
    assert run.status == "completed", run.error
    assert run.result["reason"] == "budget reached ($0.025)"
    assert run.cost_usd == pytest.approx(0.03)
    argv = _argv(read_log())
    assert argv[argv.index("--max-budget-usd") + 1] == "0.025"


def test_it_asks_claude_to_go_on_while_experiments_remain(frozen_domain, fake_claude):
    write_script, read_log = fake_claude
    write_script({"turns": [
        [{"tool": "mcp__dojo__run_experiment", "input": {"code": MEAN_TRAIN, "hypothesis": "mean"}}, {"text": "One done."}],
        [{"tool": "mcp__dojo__run_experiment", "input": {"code": GOOD_TRAIN, "hypothesis": "ridge"}},
         {"tool": "mcp__dojo__run_experiment", "input": {"code": GOOD_TRAIN, "hypothesis": "one too many"}},
         {"text": "Limit reached, wrapping up."}],
    ]})
    run = run_execute(run_id=run_create(domain=frozen_domain, backend="claude", max_experiments=2).pk)
    assert run.status == "completed", run.error
    assert run.result["reason"] == "experiment limit reached (2)"
    assert list(Experiment.objects.filter(run=run).values_list("hypothesis", flat=True).order_by("pk")) == ["mean", "ridge"]
    prompts = [e["received"]["message"]["content"] for e in read_log() if e.get("received", {}).get("type") == "user"]
    # Two turns of the agent session, then the one-shot end-of-run summary.
    assert len(prompts) == 3 and prompts[1].startswith("Keep going: 1 experiments remain")
    refused = [e["tool_result"] for e in read_log() if "tool_result" in e][-1]
    assert refused["is_error"] and "experiment limit reached (2)" in refused["text"]
    assert run.events.filter(data__text="Limit reached, wrapping up.").exists()


def test_it_returns_tool_errors_to_claude_and_goes_on(frozen_domain, fake_claude):
    write_script, read_log = fake_claude
    write_script({"turns": [[
        {"tool": "mcp__dojo__get_experiment", "input": {"experiment_id": 987654}},
        {"tool": "mcp__dojo__run_experiment", "input": {"hypothesis": "forgot the code"}},
        {"tool": "Bash", "input": {"command": "cat /etc/passwd"}},
        {"text": "Recovered from the errors."},
    ]]})
    run = run_execute(run_id=run_create(domain=frozen_domain, backend="claude").pk)
    assert run.status == "completed", run.error
    results = [e["tool_result"] for e in read_log() if "tool_result" in e]
    assert results[0]["is_error"] and "experiment 987654 does not exist" in results[0]["text"]
    assert results[1]["is_error"] and "code" in results[1]["text"]
    assert run.events.filter(type="tool_call", data__name="Bash").exists()
    bash_result = run.events.get(type="tool_result", data__name="Bash")
    assert bash_result.data["ok"] is False and "No such tool available" in json.dumps(bash_result.data)
    assert run.events.filter(data__text="Recovered from the errors.").exists()
    assert not Experiment.objects.filter(run=run).exists()


def test_it_fails_with_a_clear_message_when_claude_is_missing(frozen_domain, settings, tmp_path):
    settings.DOJO_CLAUDE_CLI_PATH = str(tmp_path / "no-such-claude")
    run = run_execute(run_id=run_create(domain=frozen_domain, backend="claude").pk)
    assert run.status == "failed"
    assert run.error.startswith("ClaudeUnavailable: Claude is not available:")
    assert_events_contiguous(run)


def test_it_parses_findings_defensively():
    reply = '```json\n[{"claim": "a", "confidence": 2, "evidence": [1, 99, {"experiment_id": 2}]}, {"no": "claim"}, "x"]\n```'
    assert findings_parse(reply, valid_ids={1, 2}) == [
        {"context": "end-of-run findings", "claim": "a", "action": "", "confidence": 1.0,
         "evidence": [(1, "supports"), (2, "supports")]},
    ]
    assert findings_parse("no json here", valid_ids=set()) == []
    assert findings_parse("[not json", valid_ids=set()) == []


BUNDLED_CLI = Path(__import__("claude_agent_sdk").__file__).parent / "_bundled" / "claude"


@pytest.mark.slow
@pytest.mark.skipif(not BUNDLED_CLI.is_file(), reason="claude-agent-sdk installed without its bundled Claude Code CLI (sdist build)")
def test_the_bundled_cli_runs_the_agent_against_a_fake_anthropic_api(frozen_domain, settings, tmp_path, monkeypatch):
    exact_feedback(frozen_domain)  # compares what the agent saw with the stored metrics
    def write_knowledge(body):
        experiment_id = anthropic_api.last_tool_result(body)["experiment_id"]
        return anthropic_api.tool_use("mcp__dojo__write_knowledge", {
            "context": "diabetes regression", "claim": "Ridge is a solid baseline here", "confidence": 0.6,
            "evidence": [{"experiment_id": experiment_id}],
        })

    def summary(body):
        ridge = Experiment.objects.filter(domain=frozen_domain).values_list("pk", flat=True).first()
        return anthropic_api.text(json.dumps([{"context": "diabetes", "claim": "linear models reach rmse near 55",
                                               "confidence": 0.6, "evidence": [ridge]}]))

    api = anthropic_api.FakeAnthropicAPI(
        agent_replies=[
            anthropic_api.tool_use("mcp__dojo__run_experiment", {"code": GOOD_TRAIN, "hypothesis": "ridge"}),
            write_knowledge,
            anthropic_api.text("Ridge recorded."),
        ],
        oneshot_replies=[summary],
    )
    settings.DOJO_CLAUDE_CLI_PATH = ""
    monkeypatch.setenv("ANTHROPIC_BASE_URL", api.url)
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-fake-for-tests")
    monkeypatch.setenv("CLAUDE_CONFIG_DIR", str(tmp_path / "claude-config"))
    with api:
        run = run_execute(run_id=run_create(domain=frozen_domain, backend="claude").pk)

    assert run.status == "completed", run.error
    experiment = Experiment.objects.get(run=run)
    assert experiment.state == "completed"
    assert KnowledgeAtom.objects.filter(created_by_run=run, claim="Ridge is a solid baseline here").exists()
    assert KnowledgeAtom.objects.filter(created_by_run=run, claim="linear models reach rmse near 55").exists()
    assert run.cost_usd > 0 and run.turns >= 3
    agent_calls = [r for r in api.requests if r.get("tools")]
    tool_names = {t["name"] for t in agent_calls[0]["tools"]}
    assert {"mcp__dojo__run_experiment", "Read", "Glob", "Grep"} <= tool_names
    assert not tool_names & {"Bash", "Write", "Edit", "WebFetch"}
    system = json.dumps(agent_calls[0]["system"])
    assert "Predict disease progression" in system
    sent_back = json.dumps(anthropic_api.last_tool_result(agent_calls[1]))
    assert str(experiment.primary_value) in sent_back and "holdout" not in sent_back
    assert AgentRun.objects.get(pk=run.pk).events.filter(type="experiment").count() == 1


def _last_tool_result_block(body: dict) -> dict:
    for message in reversed(body.get("messages", [])):
        if message.get("role") == "user" and isinstance(message.get("content"), list):
            for block in message["content"]:
                if block.get("type") == "tool_result":
                    content = block.get("content")
                    text = content if isinstance(content, str) else json.dumps(content)
                    return {"is_error": bool(block.get("is_error")), "text": text}
    return {}


@pytest.mark.slow
@pytest.mark.skipif(not BUNDLED_CLI.is_file(), reason="claude-agent-sdk installed without its bundled Claude Code CLI (sdist build)")
def test_the_bundled_cli_refuses_the_data_file_sealed_files_the_database_and_escapes(
    frozen_domain, settings, tmp_path, monkeypatch
):
    from django.db import connection

    from domains.sandbox import bwrap_works

    workspace = Path(frozen_domain.workspace_path)
    secret = "SECRET-LABEL-4242"
    raw = workspace / "data" / "raw.csv"
    raw.parent.mkdir()
    raw.write_text(f"x,label\n1,{secret}\n")
    (workspace / "link.csv").symlink_to(raw)
    (workspace / "notes.md").write_text("workspace notes: readable\n")
    (tmp_path / "outside.txt").write_text(f"outside {secret}\n")
    task = frozen_domain.task
    task.snapshot_info = {**(task.snapshot_info or {}), "data_file": str(raw)}
    task.save(update_fields=["snapshot_info"])
    sealed = next(p for p in (Path(task.snapshot_path) / "sealed").rglob("*") if p.is_file())
    if connection.vendor == "sqlite":
        database = Path(connection.settings_dict["NAME"])
    else:  # PostgreSQL has no file to read: the secret key file under DOJO_HOME stands in for it
        database = Path(settings.DOJO_HOME) / "secret_key"
        database.write_text("auth_user stand-in\n")
    assert database.is_file()

    asks = [
        ("Read", {"file_path": str(raw)}),
        ("Read", {"file_path": "link.csv"}),
        ("Read", {"file_path": str(sealed)}),
        ("Read", {"file_path": str(database)}),
        ("Read", {"file_path": "../outside.txt"}),
        ("Read", {"file_path": "data/../../outside.txt"}),
        ("Glob", {"pattern": "../**/*.txt"}),
        ("Grep", {"pattern": "SECRET", "path": str(Path(task.snapshot_path))}),
        ("Grep", {"pattern": "auth_user", "path": str(database)}),
    ]
    api = anthropic_api.FakeAnthropicAPI(
        agent_replies=[
            anthropic_api.tool_use("Read", {"file_path": str(workspace / "notes.md")}),
            *[anthropic_api.tool_use(name, arguments) for name, arguments in asks],
            anthropic_api.text("Nothing hidden was readable."),
        ],
    )
    settings.DOJO_CLAUDE_CLI_PATH = ""
    monkeypatch.setenv("ANTHROPIC_BASE_URL", api.url)
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-fake-for-tests")
    monkeypatch.setenv("DJANGO_SECRET_KEY_FOR_THIS_TEST", "must-not-reach-the-cli")
    with api:
        run = run_execute(run_id=run_create(domain=frozen_domain, backend="claude").pk)

    assert run.status == "completed", run.error
    agent_calls = [r for r in api.requests if r.get("tools")]
    results = [_last_tool_result_block(body) for body in agent_calls[1:]]
    assert len(results) == 1 + len(asks)
    assert not results[0]["is_error"] and "workspace notes: readable" in results[0]["text"]
    for (name, arguments), result in zip(asks, results[1:], strict=True):
        # Refused by our can_use_tool check, or (the data file) first by the SDK deny rule.
        # (The CLI turns down a Read of the binary database file before any permission check.)
        refused = any(word in result["text"] for word in ("Refused", "denied", "binary"))
        assert result["is_error"] and refused, (name, arguments, result)
    # Past the SDK rule on the data file itself, each refusal is our resolved-path check.
    assert "hidden from the agent" in results[2]["text"]  # the symlink, resolved to the data file
    assert "outside the workspace" in results[3]["text"]  # the sealed file
    assert all("outside the workspace" in r["text"] for r in results[5:7])
    assert "leaves the workspace" in results[7]["text"] and "Refused" in results[8]["text"]
    assert "Refused" in results[9]["text"] and "outside the workspace" in results[9]["text"]
    assert secret not in json.dumps(api.requests)
    assert run.events.filter(type="text", data__text__startswith="Refused ").count() >= 6
    assert run.events.filter(data__text="Nothing hidden was readable.").exists()
    # The per-run config folder (and wrapper) is gone after the run.
    assert not (Path(settings.DOJO_HOME) / "claude" / f"run-{run.pk}").exists()
    if bwrap_works():
        system = json.dumps(agent_calls[0].get("system"))
        assert "must-not-reach-the-cli" not in system


@pytest.mark.slow
def test_its_experiments_run_on_an_experiment_worker_with_queue_dispatch(frozen_domain, fake_claude, settings,
                                                                        dojo_home, monkeypatch):
    """DOJO_DISPATCH=queue: the Claude backend's run_experiment calls go through the queue too."""
    from django_q.conf import Conf

    from tests.cluster.helpers import experiment_workers_start, process_group_stop

    exact_feedback(frozen_domain)
    settings.DOJO_DISPATCH = "queue"
    monkeypatch.setattr(Conf, "SYNC", False)
    write_script, read_log = fake_claude
    write_script({"turns": [[
        {"tool": "mcp__dojo__run_experiment", "input": {"code": MEAN_TRAIN, "hypothesis": "mean baseline"}},
        {"tool": "mcp__dojo__run_experiment", "input": {"code": GOOD_TRAIN, "hypothesis": "ridge"}},
    ]]})
    workers = experiment_workers_start(dojo_home, settings)
    try:
        run = run_execute(run_id=run_create(domain=frozen_domain, backend="claude").pk)
    finally:
        process_group_stop(workers)
    assert run.status == "completed", run.error
    done = list(Experiment.objects.filter(run=run).order_by("pk"))
    assert [e.state for e in done] == ["completed", "completed"]
    assert all(e.worker_pid and e.worker_pid != run.worker_pid and e.attempts == 1 for e in done)
    seen = [e["tool_result"] for e in read_log() if "tool_result" in e]
    assert json.loads(seen[1]["text"])["metrics"] == done[1].metrics

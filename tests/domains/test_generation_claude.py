"""The Claude generator, offline: the real SDK drives tests/fakes/claude_toolgen.py as its CLI."""

import json
import socket
from pathlib import Path

import pytest

from dojo_site.claude import ClaudeFailed, ClaudeUnavailable, claude_complete
from dojo_site.errors import InvalidInput
from domains.generation import GenerationError, parse_tools_reply
from domains.models import TaskTool
from domains.services import task_generate
from tests.domains.taskkit import EVALUATE_REGRESSION, LOAD_REGRESSION, make_domain, task_of

FAKE = Path(__file__).resolve().parents[1] / "fakes" / "claude_toolgen.py"
PROSE_SETUP = "## Dataset\nSensor readings exported nightly by the plant's historian.\n## Evaluate\nrmse\n"
GOOD_REPLY = json.dumps({"load_data": LOAD_REGRESSION, "evaluate": EVALUATE_REGRESSION})


@pytest.fixture
def fake_claude(settings, tmp_path, monkeypatch):
    """Point Dojo at the fake CLI; returns a function setting its reply and reading its log."""
    settings.DOJO_CLAUDE_CLI_PATH = str(FAKE)
    settings.DOJO_TOOLGEN_MODEL = "claude-toolgen-test"
    log = tmp_path / "fake_claude.log"
    monkeypatch.setenv("FAKE_CLAUDE_LOG", str(log))

    def reply(text: str = GOOD_REPLY, mode: str = "reply"):
        path = tmp_path / "reply.txt"
        path.write_text(text)
        monkeypatch.setenv("FAKE_CLAUDE_REPLY_FILE", str(path))
        monkeypatch.setenv("FAKE_CLAUDE_MODE", mode)
        return lambda: [json.loads(line) for line in log.read_text().splitlines()]

    return reply


@pytest.fixture
def no_claude(settings, monkeypatch, tmp_path):
    settings.DOJO_CLAUDE_CLI_PATH = ""
    for name in ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "CLAUDE_CODE_OAUTH_TOKEN",
                 "CLAUDE_CODE_USE_BEDROCK", "CLAUDE_CODE_USE_VERTEX"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CLAUDE_CONFIG_DIR", str(tmp_path / "no-claude-login"))


@pytest.mark.django_db
def test_it_generates_with_claude_when_setup_md_matches_no_template(workspace, fake_claude):
    read_log = fake_claude()
    domain = make_domain(workspace, setup=PROSE_SETUP)
    tools = task_generate(task=task_of(domain))
    assert [(t.name, t.origin, t.version) for t in tools] == [("load_data", "claude", 1), ("evaluate", "claude", 1)]
    assert tools[0].code == LOAD_REGRESSION and tools[1].code == EVALUATE_REGRESSION
    assert tools[0].raw_reply == GOOD_REPLY
    argv, prompt = read_log()[0]["argv"], read_log()[1]["prompt"]
    assert argv[argv.index("--model") + 1] == "claude-toolgen-test"
    assert "--max-turns" in argv and argv[argv.index("--tools") + 1] == ""
    assert "plant's historian" in prompt  # SETUP.md is in the prompt
    assert "['rmse', 'mae', 'r2']" in prompt and "random_state=42" in prompt


@pytest.mark.django_db
def test_it_accepts_a_reply_in_one_json_fence(workspace, fake_claude):
    fake_claude("```json\n" + GOOD_REPLY + "\n```\n")
    domain = make_domain(workspace, setup=PROSE_SETUP)
    tools = task_generate(task=task_of(domain), method="claude")
    assert tools[1].code == EVALUATE_REGRESSION


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("reply", "why"),
    [
        ("Sure! Here are your tools:\n" + GOOD_REPLY, "the reply is not one JSON object"),
        (json.dumps([LOAD_REGRESSION, EVALUATE_REGRESSION]), "the reply is JSON list, expected an object"),
        (json.dumps({"load_data": LOAD_REGRESSION, "evaluate": EVALUATE_REGRESSION, "notes": "x"}),
         "the reply has keys ['evaluate', 'load_data', 'notes'], expected exactly ['evaluate', 'load_data']"),
        (json.dumps({"load_data": "def load_data(:\n", "evaluate": EVALUATE_REGRESSION}), "load_data.py line 1"),
        (json.dumps({"load_data": "def other():\n    pass\n", "evaluate": EVALUATE_REGRESSION}),
         "load_data.py does not define a top-level function load_data()"),
        ("", "the reply is empty"),
    ],
)
def test_it_keeps_the_raw_reply_when_claudes_reply_is_unusable(workspace, fake_claude, dojo_home, reply, why):
    fake_claude(reply)
    domain = make_domain(workspace, setup=PROSE_SETUP)
    with pytest.raises(GenerationError) as caught:
        task_generate(task=task_of(domain), method="claude")
    message = str(caught.value)
    assert message.startswith("Claude's reply is not usable: " + why)
    host, kept = message.rsplit("The raw reply is kept on ", 1)[1].split(" in ", 1)
    assert host == socket.gethostname()
    kept = Path(kept)
    assert kept.parent == dojo_home / "cache" / "toolgen"  # per-machine scratch (DOJO_CACHE_DIR)
    assert kept.read_text().strip() == reply.strip()
    assert not TaskTool.objects.exists()


def test_it_parses_only_the_two_tools():
    assert parse_tools_reply("  " + GOOD_REPLY + "\n") == {"load_data": LOAD_REGRESSION, "evaluate": EVALUATE_REGRESSION}
    with pytest.raises(GenerationError, match="evaluate is not a non-empty string"):
        parse_tools_reply(json.dumps({"load_data": LOAD_REGRESSION, "evaluate": 3}))


@pytest.mark.django_db
def test_it_reports_an_error_result_from_claude(workspace, fake_claude):
    fake_claude(mode="error_result")
    domain = make_domain(workspace, setup=PROSE_SETUP)
    with pytest.raises(ClaudeFailed, match="Claude returned an error: API Error: 529 overloaded"):
        task_generate(task=task_of(domain), method="claude")
    assert not TaskTool.objects.exists()


def test_it_reports_a_crashing_cli_with_its_stderr(settings, fake_claude):
    fake_claude(mode="crash")
    with pytest.raises(ClaudeFailed, match="crashed on purpose"):
        claude_complete(prompt="hi")


def test_it_returns_the_reply_text_and_cost(fake_claude):
    read_log = fake_claude("just text")
    done = claude_complete(prompt="summarise", system_prompt="be brief", model="claude-x")
    assert (done.text, done.model, done.cost_usd) == ("just text", "claude-x", 0.0123)
    argv = read_log()[0]["argv"]
    assert argv[argv.index("--system-prompt") + 1] == "be brief"


@pytest.mark.django_db
def test_it_names_the_ways_forward_when_no_template_matches_and_claude_is_unavailable(workspace, no_claude):
    domain = make_domain(workspace, setup=PROSE_SETUP)
    with pytest.raises(InvalidInput) as caught:
        task_generate(task=task_of(domain))
    message = str(caught.value)
    assert "matches no template and Claude is not available (no Anthropic credentials" in message
    assert "(1) name the data in SETUP.md's '## Dataset' section" in message
    assert "(2) write the tools yourself and run `dojo_task import --load-data FILE --evaluate FILE`" in message
    assert "(3) make Claude available" in message
    assert not TaskTool.objects.exists()


@pytest.mark.django_db
def test_it_says_why_claude_is_unavailable_when_asked_for_it(workspace, no_claude):
    domain = make_domain(workspace, setup=PROSE_SETUP)
    with pytest.raises(ClaudeUnavailable, match="set ANTHROPIC_API_KEY"):
        task_generate(task=task_of(domain), method="claude")


def test_it_refuses_a_cli_path_that_is_not_executable(settings, tmp_path):
    settings.DOJO_CLAUDE_CLI_PATH = str(tmp_path / "missing-claude")
    with pytest.raises(ClaudeUnavailable, match="is not an executable file"):
        claude_complete(prompt="hi")


@pytest.mark.django_db
def test_the_hint_reaches_claudes_prompt_and_is_kept_on_the_task(workspace, fake_claude):
    read_log = fake_claude()
    domain = make_domain(workspace, setup=PROSE_SETUP)
    hint = "Split by date on `ts`; never shuffle across days."
    task_generate(task=task_of(domain), method="claude", hint=hint)
    prompt = read_log()[1]["prompt"]
    assert "Extra instructions from the user (follow them):" in prompt and hint in prompt
    # Read like a SETUP.md line as well: a time-ordered split on `ts`, passed on as a hint.
    assert '"time_ordered_split_on": "ts"' in prompt
    assert task_of(domain).setup_notes["hint"] == hint

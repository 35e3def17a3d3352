"""The Claude agent's path rules (agentrun/claude_sandbox.py) on their own: the cases the real-CLI
test in test_claude_backend.py cannot reach cheaply (fallback isolation, a workspace inside
DOJO_HOME, write tools)."""

import os
from pathlib import Path

import pytest

from agentrun.claude_sandbox import AgentSandbox, permission_deny_rules, tool_refusal


def _sandbox(workspace: Path, hidden: list[Path], isolation: str = "scrubbed") -> AgentSandbox:
    forms = []
    for path in hidden:
        forms += [Path(os.path.abspath(path)), Path(os.path.realpath(path))]
    return AgentSandbox(workspace=Path(os.path.realpath(workspace)), hidden=tuple(forms), isolation=isolation,
                        cli_path=None, home=None)


@pytest.fixture
def layout(tmp_path):
    home = tmp_path / "dojo_home"
    workspace = home / "workspaces" / "shop"  # a git clone lives under DOJO_HOME
    (workspace / "data").mkdir(parents=True)
    raw = workspace / "data" / "raw.csv"
    raw.write_text("x,label\n1,2\n")
    (workspace / "src").mkdir()
    (workspace / "src" / "features.py").write_text("def build(): ...\n")
    (home / "dojo.sqlite3").write_text("db")
    return home, workspace, raw


def test_a_workspace_inside_dojo_home_is_readable_but_nothing_else_there(layout):
    home, workspace, raw = layout
    box = _sandbox(workspace, [home, raw])
    assert tool_refusal(sandbox=box, tool_name="Read", tool_input={"file_path": "src/features.py"}) is None
    assert "hidden" in tool_refusal(sandbox=box, tool_name="Read", tool_input={"file_path": "data/raw.csv"})
    assert "outside the workspace" in tool_refusal(sandbox=box, tool_name="Read", tool_input={"file_path": str(home / "dojo.sqlite3")})
    assert "outside the workspace" in tool_refusal(sandbox=box, tool_name="Read", tool_input={"file_path": "../../dojo.sqlite3"})
    assert "outside the workspace" in tool_refusal(sandbox=box, tool_name="Glob", tool_input={"pattern": "*", "path": ".."})
    assert "leaves the workspace" in tool_refusal(sandbox=box, tool_name="Grep", tool_input={"pattern": "x", "glob": "/etc/*"})


def test_symlinks_resolve_before_the_check(layout, tmp_path):
    home, workspace, raw = layout
    (workspace / "innocent.txt").symlink_to(raw)
    (workspace / "up").symlink_to(home)
    box = _sandbox(workspace, [home, raw])
    assert "hidden" in tool_refusal(sandbox=box, tool_name="Read", tool_input={"file_path": "innocent.txt"})
    assert "outside the workspace" in tool_refusal(sandbox=box, tool_name="Read", tool_input={"file_path": "up/dojo.sqlite3"})


def test_without_bwrap_grep_over_a_folder_holding_the_data_file_is_refused(layout):
    _, workspace, raw = layout
    box = _sandbox(workspace, [raw], isolation="scrubbed")
    assert "holds a hidden file" in tool_refusal(sandbox=box, tool_name="Grep", tool_input={"pattern": "label"})
    assert tool_refusal(sandbox=box, tool_name="Grep", tool_input={"pattern": "build", "path": "src"}) is None
    bwrapped = _sandbox(workspace, [raw], isolation="bwrap")  # there the file is empty underneath
    assert tool_refusal(sandbox=bwrapped, tool_name="Grep", tool_input={"pattern": "label"}) is None


def test_write_tools_and_bash_need_the_setting_and_bash_needs_bwrap(layout, settings):
    _, workspace, raw = layout
    box = _sandbox(workspace, [raw], isolation="scrubbed")
    settings.DOJO_CLAUDE_ALLOW_WRITE_TOOLS = False
    assert "not available" in tool_refusal(sandbox=box, tool_name="Write", tool_input={"file_path": "notes.md"})
    assert "not available" in tool_refusal(sandbox=box, tool_name="WebFetch", tool_input={"url": "https://x"})
    settings.DOJO_CLAUDE_ALLOW_WRITE_TOOLS = True
    assert tool_refusal(sandbox=box, tool_name="Write", tool_input={"file_path": "notes.md", "content": "x"}) is None
    assert "hidden" in tool_refusal(sandbox=box, tool_name="Edit", tool_input={"file_path": str(raw)})
    assert "Bash" in tool_refusal(sandbox=box, tool_name="Bash", tool_input={"command": "ls"})
    assert tool_refusal(sandbox=_sandbox(workspace, [raw], isolation="bwrap"), tool_name="Bash",
                        tool_input={"command": "ls"}) is None
    assert tool_refusal(sandbox=box, tool_name="mcp__dojo__run_experiment", tool_input={}) is None


def test_the_sdk_deny_rules_name_the_hidden_files_inside_the_workspace(layout):
    home, workspace, raw = layout
    rules = permission_deny_rules(_sandbox(workspace, [home, raw]))
    assert f"Read(/{raw})" in rules and f"Grep(/{raw})" in rules
    assert not any(str(home / "dojo.sqlite3") in rule for rule in rules)

"""The Claude backend: the Claude Agent SDK driving the tool surface as an in-process MCP server.

The SDK client lives in one asyncio loop inside this call (reference/claude-agent-sdk.md §3).
Every database touch from inside the loop goes through a worker thread — Django's ORM refuses to
run on a thread with a running event loop — and tool calls run there too, so a long experiment
never blocks the loop that must read the CLI's frames and deliver an interrupt.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import connections

from agentrun.claude_sandbox import (
    AgentSandbox,
    agent_sandbox_cleanup,
    agent_sandbox_prepare,
    permission_deny_rules,
    tool_refusal,
)
from agentrun.session import RunSession
from agentrun.tools import TOOL_SPECS, jsonable

logger = logging.getLogger(__name__)
# Our own MCP tools are allowed outright on purpose; only the built-ins go through can_use_tool.
warnings.filterwarnings("ignore", message=r"can_use_tool will not be invoked for: mcp__dojo__")

SERVER_NAME = "dojo"
READ_ONLY_TOOLS = ["Read", "Glob", "Grep"]
WRITE_TOOLS = ["Write", "Edit", "Bash"]
BUILTIN_CHECKED = {*READ_ONLY_TOOLS, *WRITE_TOOLS, "MultiEdit", "NotebookEdit"}
# Results of subtype listed here end a turn normally (a limit), not as a failure of the run.
LIMIT_SUBTYPES = {"error_max_turns", "error_max_budget_usd"}
# When experiments remain and the model ends its turn, ask it to go on — at most this often.
MAX_CONTINUATIONS = 5
# After the experiment limit, the model may still wrap up (write knowledge) for this many messages.
WRAP_UP_MESSAGES = 12
STOP_POLL_SECONDS = 0.2


def run(session: RunSession) -> None:
    from dojo_site.claude import ClaudeUnavailable, claude_unavailable_reason

    reason = claude_unavailable_reason()
    if reason:
        raise ClaudeUnavailable(f"Claude is not available: {reason}")
    asyncio.run(_run(session))


def _in_thread(fn: Callable[..., Any], *args: Any) -> Any:
    try:
        return fn(*args)
    finally:
        # Worker threads are the asyncio executor's; close their connections rather than leak one each.
        connections.close_all()


async def _db(fn: Callable[..., Any], *args: Any) -> Any:
    return await asyncio.to_thread(_in_thread, fn, *args)


def _mcp_server(session: RunSession) -> Any:
    from claude_agent_sdk import SdkMcpTool, create_sdk_mcp_server

    def handler(name: str) -> Callable[[dict[str, Any]], Any]:
        async def handle(arguments: dict[str, Any]) -> dict[str, Any]:
            result = await _db(session.call_tool, name, arguments)
            return {
                "content": [{"type": "text", "text": json.dumps(result)}],
                "is_error": not result.get("ok", False),
            }

        return handle

    tools = [
        SdkMcpTool(name=name, description=spec["description"], input_schema=spec["input_schema"], handler=handler(name))
        for name, spec in TOOL_SPECS.items()
    ]
    return create_sdk_mcp_server(name=SERVER_NAME, version="1.0.0", tools=tools)


def _permission_check(session: RunSession, sandbox: AgentSandbox) -> Callable[..., Any]:
    """The SDK's can_use_tool: every built-in call (none is pre-allowed) passes tool_refusal."""
    from claude_agent_sdk import PermissionResultAllow, PermissionResultDeny

    async def check(tool_name: str, tool_input: dict[str, Any], context: Any) -> Any:
        refusal = tool_refusal(sandbox=sandbox, tool_name=tool_name, tool_input=tool_input)
        if refusal is None:
            return PermissionResultAllow()
        await _db(session.emit, "text", {"text": f"Refused {tool_name}: {refusal}"})
        return PermissionResultDeny(message=f"Refused: {refusal}")

    return check


def _pre_tool_hook(session: RunSession, sandbox: AgentSandbox) -> Any:
    """The same check as a PreToolUse hook: the CLI approves read-only calls inside its working
    folder by itself, without asking can_use_tool, so a hook is the one gate every call passes."""
    from claude_agent_sdk import HookMatcher

    async def hook(hook_input: Any, tool_use_id: str | None, context: Any) -> dict[str, Any]:
        name = str(hook_input.get("tool_name") or "")
        arguments = hook_input.get("tool_input") or {}
        refusal = tool_refusal(sandbox=sandbox, tool_name=name, tool_input=arguments)
        if refusal is None:
            return {}
        await _db(session.emit, "text", {"text": f"Refused {name}: {refusal}"})
        return {"hookSpecificOutput": {
            "hookEventName": "PreToolUse", "permissionDecision": "deny",
            "permissionDecisionReason": f"Refused: {refusal}",
        }}

    return HookMatcher(matcher="|".join(sorted(BUILTIN_CHECKED)), hooks=[hook], on_failure="block")


def options_build(
    session: RunSession, *, sandbox: AgentSandbox, stderr: Callable[[str], None] | None = None
) -> Any:
    from claude_agent_sdk import ClaudeAgentOptions

    run_ = session.run
    builtin_tools = READ_ONLY_TOOLS + (WRITE_TOOLS if settings.DOJO_CLAUDE_ALLOW_WRITE_TOOLS else [])
    workspace = Path(session.domain.workspace_path)
    return ClaudeAgentOptions(
        system_prompt=session.context["system_prompt"],
        mcp_servers={SERVER_NAME: _mcp_server(session)},
        # The built-ins the model may see at all; everything else (Bash, Write, WebFetch…) is absent.
        tools=builtin_tools,
        # Our own tools are allowed outright (no bypassPermissions: the CLI refuses it as root);
        # the built-ins are not, so each of their calls reaches can_use_tool's path check.
        allowed_tools=[f"mcp__{SERVER_NAME}__{name}" for name in TOOL_SPECS],
        disallowed_tools=permission_deny_rules(sandbox),
        can_use_tool=_permission_check(session, sandbox),
        hooks={"PreToolUse": [_pre_tool_hook(session, sandbox)]},
        # Never load ~/.claude or a project's .claude settings, hooks or CLAUDE.md into a server run.
        setting_sources=[],
        max_turns=run_.max_turns,
        max_budget_usd=run_.budget_usd,
        model=run_.model or settings.DOJO_CLAUDE_MODEL,
        cli_path=sandbox.cli_path,
        cwd=str(workspace if workspace.is_dir() else settings.DOJO_HOME),
        env={"CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1"},
        stderr=stderr,
    )


@dataclass
class _Turn:
    interrupted: bool = False
    last_total_cost: float = 0.0
    seen_messages: set[str] = field(default_factory=set)
    builtin_calls: dict[str, str] = field(default_factory=dict)
    error: str = ""
    wrap_up_messages: int = 0
    stderr: list[str] = field(default_factory=list)


def _first_prompt(session: RunSession) -> str:
    remaining = session.experiments_remaining()
    budget = f" You may run up to {remaining} experiments." if remaining is not None else ""
    return (
        "Start the research described in your instructions. Use the dojo tools: look at what is "
        "known, run experiments, and record what you learn with write_knowledge." + budget
    )


async def _run(session: RunSession) -> None:
    from claude_agent_sdk import ClaudeSDKClient

    state = _Turn()

    def stderr_line(line: str) -> None:
        if len(state.stderr) < 200:
            state.stderr.append(line)

    from dojo_site.claude import claude_cli_path

    sandbox = await _db(
        lambda: agent_sandbox_prepare(domain=session.domain, run_id=session.run.pk, cli=claude_cli_path() or "claude")
    )
    client = ClaudeSDKClient(options=options_build(session, sandbox=sandbox, stderr=stderr_line))
    try:
        await client.connect()
        prompt = _first_prompt(session)
        for round_ in range(MAX_CONTINUATIONS + 1):
            await client.query(prompt)
            await _drain(client, session, state)
            if state.error or state.interrupted or session.should_stop():
                break
            remaining = session.experiments_remaining()
            if not remaining or round_ == MAX_CONTINUATIONS:
                break
            prompt = (
                f"Keep going: {remaining} experiments remain in this run. Build on the best result "
                "so far and record durable findings with write_knowledge."
            )
    except Exception as exc:
        detail = " ".join(state.stderr[-3:]).strip()
        raise RuntimeError(f"Claude session failed: {exc}{' — ' + detail[:500] if detail else ''}") from exc
    finally:
        await client.disconnect()
        agent_sandbox_cleanup(sandbox)
    if state.error:
        raise RuntimeError(state.error)


async def _drain(client: Any, session: RunSession, state: _Turn) -> None:
    """Read one turn to its ResultMessage, turning messages into events; interrupt on stop."""
    watcher = asyncio.create_task(_watch_stop(client, session, state))
    try:
        async for message in client.receive_response():
            await _handle(message, session, state)
    finally:
        watcher.cancel()
        try:
            await watcher
        except (asyncio.CancelledError, Exception):
            pass


def _must_interrupt(session: RunSession, state: _Turn) -> bool:
    if session.must_abort():
        return True
    if not session.should_stop():
        return False
    # The experiment limit lets the model wrap up (it is refused further experiments);
    # the turn and budget limits end the turn now.
    if (session.stop_reason or "").startswith("experiment limit"):
        return state.wrap_up_messages > WRAP_UP_MESSAGES
    return True


async def _watch_stop(client: Any, session: RunSession, state: _Turn) -> None:
    while True:
        await asyncio.sleep(STOP_POLL_SECONDS)
        if not state.interrupted and _must_interrupt(session, state):
            state.interrupted = True
            await _db(session.emit, "text", {"text": f"Interrupting Claude: {session.stop_reason}."})
            await client.interrupt()
            return


async def _handle(message: Any, session: RunSession, state: _Turn) -> None:
    from claude_agent_sdk import (
        AssistantMessage,
        ResultMessage,
        TextBlock,
        ToolResultBlock,
        ToolUseBlock,
        UserMessage,
    )

    if isinstance(message, AssistantMessage):
        # The CLI sends one AssistantMessage per content block; a model call is one message id.
        key = message.message_id or f"anon-{len(state.seen_messages)}"
        if key not in state.seen_messages:
            state.seen_messages.add(key)
            await _db(session.add_turn)
            if session.should_stop():
                state.wrap_up_messages += 1
        for block in message.content:
            if isinstance(block, TextBlock) and block.text.strip():
                await _db(session.emit, "text", {"text": block.text})
            elif isinstance(block, ToolUseBlock) and not block.name.startswith(f"mcp__{SERVER_NAME}__"):
                # Our own tools record themselves (session.call_tool); built-ins are recorded here.
                state.builtin_calls[block.id] = block.name
                await _db(session.emit, "tool_call", {"name": block.name, "arguments": block.input, "builtin": True})
        if message.error:
            await _db(session.emit, "error", {"error": f"Claude reported: {message.error}"})
    elif isinstance(message, UserMessage) and isinstance(message.content, list):
        for block in message.content:
            if isinstance(block, ToolResultBlock) and block.tool_use_id in state.builtin_calls:
                await _db(
                    session.emit,
                    "tool_result",
                    {
                        "name": state.builtin_calls.pop(block.tool_use_id),
                        "ok": not block.is_error,
                        "result": jsonable(block.content, max_chars=2_000, max_items=20),
                        "builtin": True,
                    },
                )
    elif isinstance(message, ResultMessage):
        # total_cost_usd is cumulative for the CLI process: the run is charged the difference.
        total = message.total_cost_usd or 0.0
        delta, state.last_total_cost = total - state.last_total_cost, max(total, state.last_total_cost)
        await _db(session.add_cost, delta)
        session.result.update(
            {
                "claude_session_id": message.session_id,
                "claude_result": message.subtype,
                "claude_terminal_reason": getattr(message, "terminal_reason", None),
            }
        )
        if message.is_error and not state.interrupted and message.subtype not in LIMIT_SUBTYPES:
            errors = "; ".join(getattr(message, "errors", None) or []) or (message.result or "")
            state.error = f"Claude ended with {message.subtype}: {errors}"[:1_000]
        elif message.subtype in LIMIT_SUBTYPES:
            errors = "; ".join(getattr(message, "errors", None) or []) or message.subtype
            await _db(session.emit, "text", {"text": f"Claude stopped: {errors}"})


# --- end-of-run findings ---------------------------------------------------------------------

SUMMARY_SYSTEM = (
    "You distil an ML research run into durable, transferable findings. Answer with a JSON array "
    "only, no prose."
)
MAX_FINDINGS = 5


def findings(session: RunSession) -> list[dict[str, Any]]:
    """Ask Claude (one-shot) for the run's 3–5 durable findings, grounded in its experiments."""
    from dojo_site.claude import claude_complete
    from experiments.models import Experiment

    experiments = list(Experiment.objects.filter(run=session.run).order_by("pk"))
    budget = session.run.budget_usd
    if not experiments or (budget is not None and session.cost_usd >= budget):
        # Nothing to distil, or no money left to distil it with.
        return []
    completion = claude_complete(prompt=_summary_prompt(session, experiments), system_prompt=SUMMARY_SYSTEM)
    session.add_cost(completion.cost_usd or 0.0)
    return findings_parse(completion.text, valid_ids={e.pk for e in experiments})


def _summary_prompt(session: RunSession, experiments: list[Any]) -> str:
    context = session.context
    lines = [
        f"Domain {context['domain']}: {context['task_type']}, primary metric {context['primary_metric']} "
        f"({context['direction']}). Validation metrics only.",
        "",
        "Experiments of this run (id, state, primary value, hypothesis, variables, error):",
    ]
    # The most recent experiments matter most; keep the prompt bounded from the start, not the end.
    for e in experiments[-60:]:
        lines.append(
            f"- {e.pk} {e.state} {e.primary_value} | {e.hypothesis[:160]} | "
            f"{json.dumps(e.variables)[:200]} | {e.error[:120]}"
        )
    written = session.run.atoms.all()[:20]
    if written:
        lines += ["", "Already recorded during the run (do not repeat):"]
        lines += [f"- {a.claim[:200]}" for a in written]
    lines += [
        "",
        "Give 3 to 5 findings another run on this or a similar dataset should know. Each item: "
        '{"context": "when it applies", "claim": "what was found, with numbers", '
        '"action": "what to do", "confidence": 0.0-1.0, "evidence": [experiment ids]}. '
        "Only claims the experiments above support; no generic ML advice.",
    ]
    return "\n".join(lines)


def findings_parse(text: str, *, valid_ids: set[int]) -> list[dict[str, Any]]:
    """The findings in a reply: the first JSON array, items with a claim, evidence in this run."""
    text = re.sub(r"^```(?:json)?\s*|\s*```$", "", text.strip())
    start, end = text.find("["), text.rfind("]")
    if start < 0 or end <= start:
        return []
    try:
        items = json.loads(text[start : end + 1])
    except json.JSONDecodeError:
        return []
    out = []
    for item in items if isinstance(items, list) else []:
        if not isinstance(item, dict) or not str(item.get("claim") or "").strip():
            continue
        try:
            confidence = min(1.0, max(0.0, float(item.get("confidence", 0.5))))
        except (TypeError, ValueError):
            confidence = 0.5
        evidence = []
        for ref in item.get("evidence") or []:
            ref_id = ref.get("experiment_id") if isinstance(ref, dict) else ref
            if isinstance(ref_id, int) and ref_id in valid_ids:
                evidence.append((ref_id, "supports"))
        out.append(
            {
                "context": str(item.get("context") or "end-of-run findings")[:2_000],
                "claim": str(item["claim"])[:2_000],
                "action": str(item.get("action") or "")[:2_000],
                "confidence": confidence,
                "evidence": evidence,
            }
        )
    return out[:MAX_FINDINGS]

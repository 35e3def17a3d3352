"""One-shot completions through the Claude Agent SDK (tool generation, end-of-run summaries).

A completion is one `query()` with no tools, no settings files and one turn. The executable is
settings.DOJO_CLAUDE_CLI_PATH when set (tests point it at a fake), otherwise the SDK's own choice
(its bundled CLI, then `claude` on PATH).
"""

from __future__ import annotations

import asyncio
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings

from dojo_site.errors import DojoError

# Environment variables any of which lets the CLI reach a model.
CREDENTIAL_VARIABLES = (
    "ANTHROPIC_API_KEY",
    "ANTHROPIC_AUTH_TOKEN",
    "CLAUDE_CODE_OAUTH_TOKEN",
    "CLAUDE_CODE_USE_BEDROCK",
    "CLAUDE_CODE_USE_VERTEX",
)


class ClaudeUnavailable(DojoError):
    """No usable Claude: no executable or no credentials."""

    status_code = 503


class ClaudeFailed(DojoError):
    """Claude was called but the call failed (process error, error result, timeout)."""

    status_code = 502


@dataclass(frozen=True)
class Completion:
    text: str
    model: str
    cost_usd: float | None


def claude_cli_path() -> str | None:
    """The executable a completion will run, or None when there is none."""
    if settings.DOJO_CLAUDE_CLI_PATH:
        path = Path(settings.DOJO_CLAUDE_CLI_PATH)
        return str(path) if path.is_file() and os.access(path, os.X_OK) else None
    import claude_agent_sdk

    bundled = Path(claude_agent_sdk.__file__).parent / "_bundled" / "claude"
    if bundled.is_file():
        return str(bundled)
    return shutil.which("claude")


def claude_unavailable_reason() -> str | None:
    """Why Claude cannot be used here, or None when it can.

    An explicitly configured DOJO_CLAUDE_CLI_PATH is trusted to carry its own credentials; the
    SDK's default CLI needs one of CREDENTIAL_VARIABLES or a login stored by `claude login`.
    """
    if settings.DOJO_CLAUDE_CLI_PATH:
        if claude_cli_path() is None:
            return f"DOJO_CLAUDE_CLI_PATH={settings.DOJO_CLAUDE_CLI_PATH} is not an executable file"
        return None
    if claude_cli_path() is None:
        return "no Claude Code executable found (install claude-agent-sdk's wheel or set DOJO_CLAUDE_CLI_PATH)"
    if any(os.environ.get(name) for name in CREDENTIAL_VARIABLES):
        return None
    config_dir = Path(os.environ.get("CLAUDE_CONFIG_DIR", Path.home() / ".claude"))
    if (config_dir / ".credentials.json").is_file():
        return None
    return "no Anthropic credentials (set ANTHROPIC_API_KEY, or run `claude login`)"


def claude_complete(
    *,
    prompt: str,
    system_prompt: str = "",
    model: str | None = None,
    timeout_seconds: float = 300.0,
) -> Completion:
    """Send one prompt, return the reply text. Raise ClaudeUnavailable or ClaudeFailed."""
    reason = claude_unavailable_reason()
    if reason:
        raise ClaudeUnavailable(f"Claude is not available: {reason}")
    model = model or settings.DOJO_CLAUDE_MODEL

    async def complete() -> Completion:
        return await asyncio.wait_for(
            _query(prompt=prompt, system_prompt=system_prompt, model=model), timeout_seconds
        )

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        runner_in_thread = False
    else:
        runner_in_thread = True
    try:
        if runner_in_thread:
            # Called from async code (e.g. an agent backend): the SDK needs its own loop.
            with ThreadPoolExecutor(max_workers=1) as pool:
                return pool.submit(asyncio.run, complete()).result()
        return asyncio.run(complete())
    except TimeoutError:
        raise ClaudeFailed(f"Claude did not answer within {timeout_seconds:g} s") from None


async def _query(*, prompt: str, system_prompt: str, model: str) -> Completion:
    from claude_agent_sdk import (
        AssistantMessage,
        ClaudeAgentOptions,
        ClaudeSDKError,
        CLINotFoundError,
        ProcessError,
        ResultMessage,
        TextBlock,
        query,
    )

    stderr_lines: list[str] = []
    options = ClaudeAgentOptions(
        system_prompt=system_prompt or None,
        model=model,
        cli_path=settings.DOJO_CLAUDE_CLI_PATH or None,
        tools=[],
        setting_sources=[],
        max_turns=1,
        env={"CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1"},
        stderr=lambda line: stderr_lines.append(line) if len(stderr_lines) < 50 else None,
    )
    texts: list[str] = []
    result: ResultMessage | None = None
    try:
        async for message in query(prompt=prompt, options=options):
            if isinstance(message, AssistantMessage):
                texts.extend(block.text for block in message.content if isinstance(block, TextBlock))
            elif isinstance(message, ResultMessage):
                result = message
    except CLINotFoundError as exc:
        raise ClaudeUnavailable(f"Claude is not available: {exc}") from None
    except ProcessError as exc:
        if result is not None and result.is_error:
            raise ClaudeFailed(_result_error(result)) from None
        detail = " ".join(stderr_lines[-3:]).strip() or str(exc)
        raise ClaudeFailed(f"Claude exited with an error: {detail[:500]}") from None
    except ClaudeSDKError as exc:
        raise ClaudeFailed(f"Claude failed: {str(exc)[:500]}") from None
    if result is None:
        raise ClaudeFailed("Claude ended without a result")
    if result.is_error:
        raise ClaudeFailed(_result_error(result))
    text = result.result if result.result is not None else "".join(texts)
    return Completion(text=text, model=model, cost_usd=result.total_cost_usd)


def _result_error(result: object) -> str:
    errors = getattr(result, "errors", None) or []
    detail = "; ".join(errors) or getattr(result, "result", None) or getattr(result, "subtype", "")
    return f"Claude returned an error: {str(detail)[:500]}"

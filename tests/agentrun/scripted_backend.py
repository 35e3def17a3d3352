"""A small scripted backend for run-loop tests (the real researcher is issue 6's).

It plays SCRIPT — or the JSON file named by $DOJO_SCRIPTED_BACKEND, for a run executed in a
subprocess — through the RunSession like any backend: tool calls, text, turns, cost, sleeps.
Steps: {"tool": name, "args": {...}} (a "$last.<key>" string takes that key from the previous
tool result); {"parallel": [{"tool": ..., "args": ...}, ...]} (calls from several threads at once);
{"text": "..."}; {"turn": true}; {"cost": 0.01}; {"sleep": seconds} (ends early on stop);
{"raise": "message"}; {"until_stopped": seconds} (sleeps until should_stop(), at most that long).
Findings (FINDINGS, or "findings" in the JSON file) are returned by findings().
"""

import json
import os
import time
from concurrent.futures import ThreadPoolExecutor

from django.db import connections

SCRIPT: list[dict] = []
FINDINGS: list[dict] = []
RESULTS: list[dict] = []  # every tool result, for assertions


def _load() -> tuple[list[dict], list[dict]]:
    path = os.environ.get("DOJO_SCRIPTED_BACKEND")
    if path:
        data = json.loads(open(path).read())
        return data.get("steps", []), data.get("findings", [])
    return SCRIPT, FINDINGS


def _substitute(value, last: dict):
    if isinstance(value, str) and value.startswith("$last."):
        return last.get(value[len("$last."):])
    if isinstance(value, dict):
        return {k: _substitute(v, last) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, last) for v in value]
    return value


def _call_in_thread(session, name, args):
    try:
        return session.call_tool(name, args)
    finally:
        connections.close_all()


def run(session) -> None:
    steps, _ = _load()
    RESULTS.clear()
    last: dict = {}
    for step in steps:
        if session.should_stop():
            break
        if "tool" in step:
            last = session.call_tool(step["tool"], _substitute(step.get("args", {}), last))
            RESULTS.append(last)
        elif "parallel" in step:
            with ThreadPoolExecutor(max_workers=len(step["parallel"])) as pool:
                futures = [
                    pool.submit(_call_in_thread, session, call["tool"], _substitute(call.get("args", {}), last))
                    for call in step["parallel"]
                ]
                for future in futures:
                    RESULTS.append(future.result())
        elif "text" in step:
            session.emit("text", {"text": step["text"]})
        elif "turn" in step:
            session.add_turn()
        elif "cost" in step:
            session.add_cost(step["cost"])
        elif "sleep" in step or "until_stopped" in step:
            deadline = time.monotonic() + float(step.get("sleep", step.get("until_stopped")))
            while time.monotonic() < deadline and not session.should_stop():
                time.sleep(0.02)
        elif "raise" in step:
            raise RuntimeError(step["raise"])


def findings(session) -> list[dict]:
    path = os.environ.get("DOJO_SCRIPTED_BACKEND")
    delay = json.loads(open(path).read()).get("findings_delay", 0) if path else 0
    if delay:
        # A slow knowledge flush, so a test can interrupt it (a second Ctrl-C skips the clean-up).
        session.emit("text", {"text": "flushing knowledge"})
        time.sleep(delay)
    return _load()[1]

#!/usr/bin/env python3
"""A stand-in `claude` executable that plays a scripted model for agent-run tests.

The SDK spawns it as its CLI (`cli_path`), so the whole SDK runs for real: argv building, the
subprocess, stream-json framing, the control protocol and the in-process MCP routing. `mcp__*`
tool uses are sent to the SDK as JSON-RPC `tools/call` requests, so the project's real tool
handlers run and their results come back to the "model".

Environment:
  FAKE_CLAUDE_SCRIPT  JSON file: {"turns": [[step, ...], ...], "oneshot": "reply text",
                      "cost_per_call": 0.01}. One list of steps per user message. Steps:
                      {"text": "..."}; {"tool": "mcp__dojo__run_experiment", "input": {...}};
                      {"sleep": seconds} (interruptible). In "input", the string
                      "$last.<key>" is replaced by that key of the last tool result.
                      A session started without MCP servers (a one-shot completion) answers
                      with "oneshot" (default "[]").
  FAKE_CLAUDE_LOG     a file to append {"argv": ...}, {"received": frame} and {"tool_result": ...}
                      lines to.
It emulates what the real CLI does (reference/claude-agent-sdk.md §4): cumulative
total_cost_usd, max turns and budget ending a turn with an error result, tool permission from
--allowedTools, an interrupt ending the turn with error_during_execution, exit code 1 after an
error result. Standard library only.
"""

import json
import os
import queue
import sys
import threading
import time
import uuid

VERSION = "2.1.332"


class Interrupted(Exception):
    pass


def log(entry):
    path = os.environ.get("FAKE_CLAUDE_LOG")
    if path:
        with open(path, "a") as handle:
            handle.write(json.dumps(entry) + "\n")


def send(frame):
    sys.stdout.write(json.dumps(frame) + "\n")
    sys.stdout.flush()


def arg(argv, flag, default=None):
    if flag in argv:
        return argv[argv.index(flag) + 1]
    for item in argv:
        if item.startswith(flag + "="):
            return item.split("=", 1)[1]
    return default


class FakeCLI:
    def __init__(self, argv):
        self.argv = argv
        script_path = os.environ.get("FAKE_CLAUDE_SCRIPT")
        self.script = json.load(open(script_path)) if script_path else {}
        self.model = arg(argv, "--model", "claude-fake")
        self.allowed = [a for a in (arg(argv, "--allowedTools", "") or "").split(",") if a]
        self.tools = [t for t in (arg(argv, "--tools", "") or "").split(",") if t]
        self.max_turns = int(arg(argv, "--max-turns", "0") or 0)
        budget = arg(argv, "--max-budget-usd")
        self.max_budget = float(budget) if budget else None
        mcp = json.loads(arg(argv, "--mcp-config", "{}") or "{}").get("mcpServers", {})
        self.sdk_servers = [name for name, cfg in mcp.items() if cfg.get("type") == "sdk"]
        self.session_id = str(uuid.uuid4())
        self.cost_per_call = float(self.script.get("cost_per_call", 0.01))
        self.total_cost = 0.0
        self.turn_index = 0
        self.frames = queue.Queue()
        self.pending_users = []
        self.counter = 0
        self.mcp_tools = {}
        self.last_result = {}
        self.last_was_error = False
        threading.Thread(target=self._read, daemon=True).start()

    # --- I/O ------------------------------------------------------------------------------
    def _read(self):
        for line in sys.stdin:
            if line.strip():
                frame = json.loads(line)
                log({"received": frame})
                self.frames.put(frame)
        self.frames.put(None)

    def _next_id(self):
        self.counter += 1
        return f"fake_{self.counter}_{uuid.uuid4().hex[:6]}"

    def _handle_control(self, frame):
        """Answer a control request from the SDK; raise Interrupted on an interrupt."""
        request = frame["request"]
        if request.get("subtype") == "interrupt":
            send({"type": "control_response", "response": {"subtype": "success", "request_id": frame["request_id"], "response": {"still_queued": []}}})
            raise Interrupted()
        # Like Claude Code 2.1.332, it says it honours on_failure="block" on hook matchers.
        answer = {"hook_on_failure_supported": True} if request.get("subtype") == "initialize" else {}
        send({"type": "control_response", "response": {"subtype": "success", "request_id": frame["request_id"], "response": answer}})

    def _wait(self, request_id=None, timeout=None):
        """Process frames until the response to request_id arrives (or timeout passes)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                frame = self.frames.get(timeout=remaining)
            except queue.Empty:
                return None
            if frame is None:
                raise EOFError()
            kind = frame.get("type")
            if kind == "control_response" and request_id and frame["response"].get("request_id") == request_id:
                return frame["response"]
            if kind == "control_request":
                self._handle_control(frame)
            elif kind == "user":
                self.pending_users.append(frame)

    def _request(self, request):
        request_id = self._next_id()
        send({"type": "control_request", "request_id": request_id, "request": request})
        return self._wait(request_id)

    def _mcp(self, server, message):
        response = self._request({"subtype": "mcp_message", "server_name": server, "message": message})
        return response.get("response", {}).get("mcp_response", {})

    # --- MCP ------------------------------------------------------------------------------
    def mcp_handshake(self):
        for server in self.sdk_servers:
            self._mcp(server, {"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "fake-claude", "version": VERSION}}})
            self._mcp(server, {"jsonrpc": "2.0", "method": "notifications/initialized"})
            listed = self._mcp(server, {"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
            for tool in listed.get("result", {}).get("tools", []):
                self.mcp_tools[f"mcp__{server}__{tool['name']}"] = tool

    def _allowed(self, name):
        for rule in self.allowed:
            if rule == name or (rule.endswith("__*") and name.startswith(rule[:-1])) or name.startswith(rule + "__"):
                return True
        return False

    # --- the scripted model -----------------------------------------------------------------
    def _assistant(self, block):
        message_id = self._next_id()
        send({"type": "assistant", "message": {"id": message_id, "type": "message", "role": "assistant", "model": self.model, "content": [block], "stop_reason": None, "usage": {"input_tokens": 1000, "output_tokens": 50}}, "parent_tool_use_id": None, "session_id": self.session_id})

    def _tool_result(self, tool_use_id, text, is_error):
        content = text if is_error else [{"type": "text", "text": text}]
        block = {"type": "tool_result", "tool_use_id": tool_use_id, "content": content}
        if is_error:
            block["is_error"] = True
        send({"type": "user", "message": {"role": "user", "content": [block]}, "parent_tool_use_id": None, "session_id": self.session_id})

    def _substitute(self, value):
        if isinstance(value, str) and value.startswith("$last."):
            return self.last_result.get(value[len("$last."):])
        if isinstance(value, dict):
            return {k: self._substitute(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self._substitute(v) for v in value]
        return value

    def _call_tool(self, name, arguments):
        tool_use_id = "toolu_" + uuid.uuid4().hex[:12]
        self._assistant({"type": "tool_use", "id": tool_use_id, "name": name, "input": arguments})
        if name.startswith("mcp__"):
            if name not in self.mcp_tools:
                return tool_use_id, f"<tool_use_error>Error: No such tool available: {name}</tool_use_error>", True
            if not self._allowed(name):
                return tool_use_id, f"Claude requested permissions to use {name}, but you haven't granted it yet.", True
            server = name.split("__")[1]
            response = self._mcp(server, {"jsonrpc": "2.0", "id": self.counter + 100, "method": "tools/call", "params": {"name": self.mcp_tools[name]["name"], "arguments": arguments}})
            result = response.get("result", {})
            text = "".join(c.get("text", "") for c in result.get("content", []))
            try:
                self.last_result = json.loads(text)
            except ValueError:
                self.last_result = {}
            log({"tool_result": {"name": name, "text": text, "is_error": bool(result.get("isError"))}})
            return tool_use_id, text, bool(result.get("isError"))
        if name not in self.tools:
            return tool_use_id, f"<tool_use_error>Error: No such tool available: {name}</tool_use_error>", True
        if not self._allowed(name):
            return tool_use_id, f"Permission to use {name} has been denied.", True
        return tool_use_id, f"(fake {name} output)", False

    def _result(self, subtype, calls, text=None, errors=None, terminal_reason="completed"):
        is_error = subtype != "success"
        self.last_was_error = is_error
        frame = {"type": "result", "subtype": subtype, "is_error": is_error, "num_turns": calls, "duration_ms": 1, "duration_api_ms": 1, "session_id": self.session_id, "total_cost_usd": round(self.total_cost, 6), "usage": {"input_tokens": 1000 * calls, "output_tokens": 50 * calls}, "terminal_reason": terminal_reason}
        if text is not None:
            frame["result"] = text
        if errors:
            frame["errors"] = errors
        send(frame)

    def play_turn(self, steps):
        send({"type": "system", "subtype": "init", "cwd": os.getcwd(), "session_id": self.session_id, "tools": self.tools + list(self.mcp_tools), "mcp_servers": [{"name": s, "status": "connected", "source": "sdk"} for s in self.sdk_servers], "model": self.model, "permissionMode": arg(self.argv, "--permission-mode", "default"), "claude_code_version": VERSION})
        calls = 0
        last_text = ""
        try:
            for step in steps:
                if "sleep" in step:
                    deadline = time.monotonic() + float(step["sleep"])
                    while time.monotonic() < deadline:
                        self._wait(timeout=min(0.05, max(0.0, deadline - time.monotonic())))
                    continue
                # Every text or tool step is one model call: it costs, and counts toward max turns.
                calls += 1
                if self.max_turns and calls > self.max_turns:
                    self._result("error_max_turns", calls, errors=[f"Reached maximum number of turns ({self.max_turns})"], terminal_reason="max_turns")
                    return
                self.total_cost += self.cost_per_call
                if "text" in step:
                    last_text = step["text"]
                    self._assistant({"type": "text", "text": step["text"]})
                elif "tool" in step:
                    tool_use_id, text, is_error = self._call_tool(step["tool"], self._substitute(step.get("input", {})))
                    if self.max_budget is not None and self.total_cost >= self.max_budget:
                        self._result("error_max_budget_usd", calls, errors=[f"Reached maximum budget (${self.max_budget})"], terminal_reason="budget_exhausted")
                        return
                    self._tool_result(tool_use_id, text, is_error)
                if self.max_budget is not None and self.total_cost >= self.max_budget:
                    self._result("error_max_budget_usd", calls, errors=[f"Reached maximum budget (${self.max_budget})"], terminal_reason="budget_exhausted")
                    return
        except Interrupted:
            send({"type": "user", "message": {"role": "user", "content": [{"type": "text", "text": "[Request interrupted by user]"}]}, "parent_tool_use_id": None, "session_id": self.session_id})
            self._result("error_during_execution", calls, terminal_reason="aborted_streaming")
            return
        self._result("success", calls, text=last_text)

    def main(self):
        # The SDK's initialize request comes first.
        while True:
            frame = self.frames.get()
            if frame is None:
                return 0
            if frame.get("type") == "control_request":
                try:
                    self._handle_control(frame)
                except Interrupted:
                    pass
                if frame["request"].get("subtype") == "initialize":
                    break
        self.mcp_handshake()
        try:
            while True:
                if self.pending_users:
                    frame = self.pending_users.pop(0)
                else:
                    frame = self.frames.get()
                    if frame is None:
                        break
                    if frame.get("type") == "control_request":
                        try:
                            self._handle_control(frame)
                        except Interrupted:
                            pass
                        continue
                    if frame.get("type") != "user":
                        continue
                if not self.sdk_servers:
                    reply = self.script.get("oneshot", "[]")
                    self.total_cost += self.cost_per_call
                    self._assistant({"type": "text", "text": reply})
                    self._result("success", 1, text=reply)
                    continue
                turns = self.script.get("turns", [])
                steps = turns[self.turn_index] if self.turn_index < len(turns) else [{"text": "Nothing more to do."}]
                self.turn_index += 1
                self.play_turn(steps)
        except EOFError:
            pass
        return 1 if self.last_was_error else 0


def main():
    argv = sys.argv[1:]
    if argv[:1] in (["-v"], ["--version"]):
        print(f"{VERSION} (Claude Code)")
        return 0
    log({"argv": argv})
    return FakeCLI(argv).main()


if __name__ == "__main__":
    sys.exit(main())

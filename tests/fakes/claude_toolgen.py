#!/usr/bin/env python3
"""A stand-in `claude` executable for one-shot completions (tool generation tests).

Speaks the SDK's stream-json control protocol just far enough for `query()`: answers
`initialize`, reads the user message, replies with one assistant text and a result.
Environment:
  FAKE_CLAUDE_REPLY_FILE  the reply text to send (default: "{}")
  FAKE_CLAUDE_MODE        "reply" (default) | "error_result" | "crash" | "hang"
  FAKE_CLAUDE_LOG         a file to append {"argv": ...} and {"prompt": ...} lines to
Standard library only: it runs under whatever python3 is on PATH.
"""

import json
import os
import sys
import time


def log(entry):
    path = os.environ.get("FAKE_CLAUDE_LOG")
    if path:
        with open(path, "a") as handle:
            handle.write(json.dumps(entry) + "\n")


def send(frame):
    sys.stdout.write(json.dumps(frame) + "\n")
    sys.stdout.flush()


def model_from_argv(argv):
    return argv[argv.index("--model") + 1] if "--model" in argv else "claude-fake"


def main():
    argv = sys.argv[1:]
    if argv[:1] in (["-v"], ["--version"]):
        print("2.1.332 (Claude Code)")
        return 0
    log({"argv": argv})
    mode = os.environ.get("FAKE_CLAUDE_MODE", "reply")
    if mode == "crash":
        sys.stderr.write("fake claude: crashed on purpose\n")
        sys.stderr.flush()
        return 2
    model = model_from_argv(argv)
    exit_code = 0
    for line in sys.stdin:
        frame = json.loads(line)
        if frame.get("type") == "control_request":
            send({
                "type": "control_response",
                "response": {"subtype": "success", "request_id": frame["request_id"], "response": {}},
            })
            continue
        if frame.get("type") != "user":
            continue
        log({"prompt": frame["message"]["content"]})
        if mode == "hang":
            time.sleep(60)
        base = {"duration_ms": 5, "duration_api_ms": 4, "num_turns": 1, "session_id": "fake-session"}
        if mode == "error_result":
            send({"type": "result", "subtype": "error_during_execution", "is_error": True,
                  "errors": ["API Error: 529 overloaded"], "total_cost_usd": 0.0, **base})
            exit_code = 1
            continue
        reply_file = os.environ.get("FAKE_CLAUDE_REPLY_FILE")
        text = open(reply_file).read() if reply_file else "{}"
        send({"type": "system", "subtype": "init", "model": model, "tools": []})
        send({"type": "assistant", "message": {"model": model, "content": [{"type": "text", "text": text}]},
              "parent_tool_use_id": None, "session_id": "fake-session"})
        send({"type": "result", "subtype": "success", "is_error": False, "result": text,
              "total_cost_usd": 0.0123, **base})
    return exit_code


if __name__ == "__main__":
    sys.exit(main())

"""A scripted fake of Anthropic's Messages API on 127.0.0.1, for the real bundled `claude` CLI.

The CLI honours ANTHROPIC_BASE_URL, so pointing it here runs the real SDK and the real CLI agent
loop offline (reference/claude-agent-sdk.md §4.4). Each POST /v1/messages takes the next reply:
requests that offer tools take from `agent_replies`, the others (one-shot completions) from
`oneshot_replies`. A reply is a dict {"content": [blocks], "stop_reason": ...} or a callable
taking the request body and returning one. Every request body is kept in `requests`.
Streaming requests get server-sent events, the others one JSON message.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Reply = dict[str, Any] | Callable[[dict[str, Any]], dict[str, Any]]
DONE = {"content": [{"type": "text", "text": "Done."}], "stop_reason": "end_turn"}


def text(value: str) -> dict[str, Any]:
    return {"content": [{"type": "text", "text": value}], "stop_reason": "end_turn"}


def tool_use(name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    return {"content": [{"type": "tool_use", "name": name, "input": arguments}], "stop_reason": "tool_use"}


def last_tool_result(body: dict[str, Any]) -> dict[str, Any]:
    """The JSON our MCP tool returned in the latest tool_result the CLI sent back."""
    for message in reversed(body.get("messages", [])):
        if message.get("role") != "user" or not isinstance(message.get("content"), list):
            continue
        for block in message["content"]:
            if block.get("type") == "tool_result":
                content = block.get("content")
                texts = [c.get("text", "") for c in content] if isinstance(content, list) else [str(content)]
                for item in texts:
                    try:
                        return json.loads(item)
                    except ValueError:
                        continue
    return {}


class FakeAnthropicAPI:
    def __init__(self, *, agent_replies: list[Reply], oneshot_replies: list[Reply] | None = None) -> None:
        self.agent_replies = list(agent_replies)
        self.oneshot_replies = list(oneshot_replies or [])
        self.requests: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._counter = 0
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                if not self.path.startswith("/v1/messages") or self.path.startswith("/v1/messages/count_tokens"):
                    self._json(200, {"input_tokens": 100} if "count_tokens" in self.path else {})
                    return
                message = fake._reply(body)
                if body.get("stream"):
                    self._stream(message)
                else:
                    self._json(200, message)

            def do_GET(self) -> None:
                self._json(404, {"type": "error", "error": {"type": "not_found_error", "message": "fake"}})

            def _json(self, status: int, data: dict[str, Any]) -> None:
                payload = json.dumps(data).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def _stream(self, message: dict[str, Any]) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Cache-Control", "no-cache")
                self.end_headers()

                def event(name: str, data: dict[str, Any]) -> None:
                    self.wfile.write(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode())
                    self.wfile.flush()

                start = {**message, "content": [], "stop_reason": None, "usage": {"input_tokens": 1000, "output_tokens": 1}}
                event("message_start", {"type": "message_start", "message": start})
                for index, block in enumerate(message["content"]):
                    if block["type"] == "text":
                        event("content_block_start", {"type": "content_block_start", "index": index, "content_block": {"type": "text", "text": ""}})
                        event("content_block_delta", {"type": "content_block_delta", "index": index, "delta": {"type": "text_delta", "text": block["text"]}})
                    else:
                        event("content_block_start", {"type": "content_block_start", "index": index, "content_block": {**block, "input": {}}})
                        event("content_block_delta", {"type": "content_block_delta", "index": index, "delta": {"type": "input_json_delta", "partial_json": json.dumps(block["input"])}})
                    event("content_block_stop", {"type": "content_block_stop", "index": index})
                event("message_delta", {"type": "message_delta", "delta": {"stop_reason": message["stop_reason"], "stop_sequence": None}, "usage": {"output_tokens": 50}})
                event("message_stop", {"type": "message_stop"})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def _reply(self, body: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            self.requests.append(body)
            self._counter += 1
            queue = self.agent_replies if body.get("tools") else self.oneshot_replies
            reply = queue.pop(0) if queue else DONE
            number = self._counter
        if callable(reply):
            reply = reply(body)
        content = []
        for i, block in enumerate(reply["content"]):
            if block["type"] == "tool_use":
                block = {"id": f"toolu_fake_{number}_{i}", **block}
            content.append(block)
        return {
            "id": f"msg_fake_{number}",
            "type": "message",
            "role": "assistant",
            "model": body.get("model", "claude-sonnet-4-5"),
            "content": content,
            "stop_reason": reply.get("stop_reason", "end_turn"),
            "stop_sequence": None,
            "usage": {"input_tokens": 1000, "output_tokens": 50},
        }

    def __enter__(self) -> FakeAnthropicAPI:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()

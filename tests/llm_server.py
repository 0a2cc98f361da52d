"""A real Chat Completions server on 127.0.0.1 for the LLM tests (stdlib, one thread per
request). Replies are scripted: each request takes the next entry of ``script`` (or the
default reply when it is empty) and every request is recorded with its arrival time."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class _Listener(ThreadingHTTPServer):
    # The default listen backlog is 5: eight calls connecting at once on a busy machine
    # saw a SYN dropped and its 1 s retransmit as a ConnectTimeout (llm_timeout=1s).
    request_queue_size = 128


@dataclass
class Reply:
    """One scripted reply: ``status`` with an error body, or a completion of ``text``."""

    text: str = "Hello from the test server."
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    error: str = ""
    delay: float = 0.0  # before the reply (a timeout when longer than the client waits)
    chunk_delay: float = 0.0  # between streamed chunks
    raw: bytes | None = None  # an unparsed body, sent as is


@dataclass
class Seen:
    at: float
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


class ChatServer:
    def __init__(self) -> None:
        self.script: deque[Reply] = deque()
        self.requests: list[Seen] = []
        self.lock = threading.Lock()
        self.inflight = 0
        self.max_inflight = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                with server.lock:
                    server.requests.append(
                        Seen(time.monotonic(), self.path, dict(self.headers.items()), body)
                    )
                    reply = server.script.popleft() if server.script else Reply()
                    server.inflight += 1
                    server.max_inflight = max(server.max_inflight, server.inflight)
                try:
                    if reply.delay:
                        time.sleep(reply.delay)  # the scripted latency of this reply
                    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                        server.answer(self, reply, body)
                finally:
                    with server.lock:
                        server.inflight -= 1

        self.httpd = _Listener(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_port}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def answer(self, h: BaseHTTPRequestHandler, reply: Reply, body: dict[str, Any]) -> None:
        if h.path != "/v1/chat/completions":
            reply = Reply(status=404, error=f"no route {h.path}")
        if reply.status != 200:
            data = json.dumps({"error": {"message": reply.error, "type": "test"}}).encode()
            self._send(h, reply.status, data, "application/json", reply.headers)
            return
        model = body.get("model", "?")
        words = reply.text.split(" ")
        deltas = [w if i == 0 else " " + w for i, w in enumerate(words)]
        usage = {"prompt_tokens": 11, "completion_tokens": len(deltas), "total_tokens": 0}
        if not body.get("stream"):
            data = (
                reply.raw
                or json.dumps(
                    {
                        "id": "cmpl-1",
                        "object": "chat.completion",
                        "model": model,
                        "choices": [
                            {
                                "index": 0,
                                "message": {"role": "assistant", "content": reply.text},
                                "finish_reason": "stop",
                            }
                        ],
                        "usage": usage,
                    }
                ).encode()
            )
            self._send(h, 200, data, "application/json", reply.headers)
            return
        h.send_response(200)
        h.send_header("Content-Type", "text/event-stream")
        h.send_header("Transfer-Encoding", "chunked")
        h.end_headers()
        for i, delta in enumerate(deltas):
            finish = "stop" if i == len(deltas) - 1 else None
            chunk = {
                "model": model,
                "choices": [{"index": 0, "delta": {"content": delta}, "finish_reason": finish}],
            }
            self._chunk(h, f"data: {json.dumps(chunk)}\n\n")
            if reply.chunk_delay:
                time.sleep(reply.chunk_delay)  # scripted pacing of the stream's chunks
        self._chunk(
            h, f": keep-alive comment\n\ndata: {json.dumps({'choices': [], 'usage': usage})}\n\n"
        )
        self._chunk(h, "data: [DONE]\n\n")
        h.wfile.write(b"0\r\n\r\n")
        h.wfile.flush()

    @staticmethod
    def _chunk(h: BaseHTTPRequestHandler, text: str) -> None:
        data = text.encode()
        h.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        h.wfile.flush()

    @staticmethod
    def _send(h, status: int, data: bytes, ctype: str, headers: dict[str, str]) -> None:
        h.send_response(status)
        h.send_header("Content-Type", ctype)
        h.send_header("Content-Length", str(len(data)))
        for k, v in headers.items():
            h.send_header(k, v)
        h.end_headers()
        h.wfile.write(data)
        h.wfile.flush()

    def reset(self) -> None:
        with self.lock:
            self.script.clear()
            self.requests.clear()
            self.max_inflight = 0

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

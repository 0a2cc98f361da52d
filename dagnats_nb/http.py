"""The engine's small HTTP server (on the engine loop): ``/health`` and ``/ready``.

HTTP/1.1 is parsed by ``h11`` (already installed with httpx); routes are a table so later
endpoints (webhooks, the worker bridge) add rows, not code paths. Loopback by default.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import h11

log = logging.getLogger("dagnats_nb.http")

MAX_BODY = 1 << 20


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


Reply = tuple[int, dict[str, Any]]
Handler = Callable[[Request], Awaitable[Reply]]


class HTTPServer:
    def __init__(self, routes: dict[tuple[str, str], Handler]) -> None:
        self.routes = routes
        self._server: asyncio.AbstractServer | None = None
        self.url: str | None = None

    async def start(self, addr: str) -> str:
        host, _, port = addr.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"http_addr {addr!r}: write host:port, e.g. 127.0.0.1:8080")
        self._server = await asyncio.start_server(self._serve, host, int(port))
        bound = self._server.sockets[0].getsockname()
        self.url = f"http://{bound[0]}:{bound[1]}"
        return self.url

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER)
        try:
            request = await self._read(conn, reader)
            if request is None:
                return
            status, body = await self._dispatch(request)
            data = json.dumps(body, default=str).encode()
            headers = [("content-type", "application/json"), ("content-length", str(len(data)))]
            writer.write(conn.send(h11.Response(status_code=status, headers=headers)))
            writer.write(conn.send(h11.Data(data=data)))
            writer.write(conn.send(h11.EndOfMessage()))
            await writer.drain()
        except (h11.RemoteProtocolError, ConnectionError, asyncio.IncompleteReadError) as exc:
            log.debug("http: %s", exc)
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _read(self, conn: h11.Connection, reader: asyncio.StreamReader) -> Request | None:
        head: h11.Request | None = None
        body = bytearray()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await asyncio.wait_for(reader.read(65536), 30)
                conn.receive_data(data)
                continue
            if isinstance(event, h11.Request):
                head = event
            elif isinstance(event, h11.Data):
                body += event.data
                if len(body) > MAX_BODY:
                    return Request("", "", {}, b"")
            elif isinstance(event, h11.EndOfMessage) and head is not None:
                headers = {k.decode().lower(): v.decode() for k, v in head.headers}
                target = head.target.decode().split("?", 1)[0]
                return Request(head.method.decode(), target, headers, bytes(body))
            elif isinstance(event, h11.ConnectionClosed):
                return None

    async def _dispatch(self, request: Request) -> Reply:
        if not request.method:
            return 413, {"error": f"request body larger than {MAX_BODY} bytes"}
        handler = self.routes.get((request.method, request.path))
        if handler is None:
            if any(path == request.path for _, path in self.routes):
                return 405, {"error": f"{request.method} not allowed on {request.path}"}
            return 404, {"error": f"no route {request.path}"}
        try:
            return await handler(request)
        except Exception as exc:  # a handler bug is a 500, never a dead server
            log.exception("http handler %s failed", request.path)
            return 500, {"error": f"{type(exc).__name__}: {exc}"}

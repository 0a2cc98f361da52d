"""The engine's small HTTP server (on the engine loop): ``/health``, ``/ready``, and the
secured endpoints (webhooks, the worker bridge) when they are configured.

HTTP/1.1 is parsed by ``h11`` (already installed with httpx); routes are a table so endpoints
add rows, not code paths. A route's path is exact (``/health``) or a pattern whose segments
may be ``{name}`` (one segment) or, last, ``{name...}`` (the rest of the path); the values
land percent-decoded in ``Request.params``. Each route has its own body limit (413 over it,
before the body is read when Content-Length says so). A handler answers JSON (a ``Reply``),
bytes as they are (a ``Raw``: an HTTP trigger's response) or a ``Stream`` (e.g. server-sent
events). Loopback by default.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote

import h11

log = logging.getLogger("dagnats_nb.adapters.http.server")

MAX_BODY = 1 << 20
# A body over its route's limit is read and thrown away up to this many bytes (so the client
# reads the 413 instead of a connection reset), then the connection is closed.
DRAIN_MAX = 64 << 20
# Slow clients (issue 16, item 8): a request's head must arrive whole within this many
# seconds, its body within BODY_DEADLINE, and at most MAX_CONNECTIONS are open at once
# (more get a 503 and are closed at once).
HEADER_DEADLINE = 10.0
BODY_DEADLINE = 60.0
MAX_CONNECTIONS = 128


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    path: str
    headers: dict[str, str]  # names lower-cased
    body: bytes
    params: dict[str, str] = field(default_factory=dict)
    query: dict[str, str] = field(default_factory=dict)  # the first value of each name


# (status, JSON body) or (status, JSON body, extra response headers)
Reply = tuple[int, dict[str, Any]] | tuple[int, dict[str, Any], dict[str, str]]


@dataclass(frozen=True, slots=True)
class Stream:
    """A reply sent as it is made: status and headers at once, then each chunk ``chunks``
    yields (chunked transfer encoding), until it ends, the client hangs up or sends anything,
    or the server stops. ``chunks.aclose()`` (if it has one) is awaited in every case."""

    chunks: AsyncIterator[bytes]
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Raw:
    """A reply whose body is sent as given (not JSON): bytes, content type, extra headers."""

    status: int
    body: bytes
    content_type: str = "application/octet-stream"
    headers: dict[str, str] = field(default_factory=dict)


class BodyError(ValueError):
    """A request body that is not the JSON asked for; its message is one line (a 400)."""


def read_json(body: bytes, what: str, advice: str, *, constants: bool = True) -> Any:
    """``body`` parsed as JSON, or BodyError ``"{what} {why}: {advice}"`` when it is not
    JSON (not UTF-8, bad syntax), nests too deep for the parser, holds an integer of over
    4,300 digits, or (with ``constants`` False) NaN, Infinity or -Infinity."""
    try:
        return json.loads(body, parse_constant=None if constants else _no_constant)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        why = f"is not JSON ({exc})"
    except _Constant as exc:
        why = f"holds {exc}, which is not JSON"
    except RecursionError:
        why = "is nested too deep to read"
    except ValueError:  # Python reads no integer of more than 4,300 digits
        why = "holds an integer of over 4,300 digits"
    raise BodyError(f"{what} {why}: {advice}")


class _Constant(ValueError):
    """NaN, Infinity or -Infinity: Python's JSON parser reads them, JSON has none."""


def _no_constant(name: str) -> Any:
    raise _Constant(name)


Handler = Callable[[Request], Awaitable[Reply | Stream | Raw]]


@dataclass(frozen=True, slots=True)
class Route:
    """A handler and the largest request body it accepts."""

    handler: Handler
    max_body: int = MAX_BODY


def match(pattern: str, path: str) -> dict[str, str] | None:
    """The parameters of ``path`` under ``pattern`` (``{}`` for an exact match), else None."""
    if "{" not in pattern:
        return {} if pattern == path else None
    want, got = pattern.split("/"), path.split("/")
    params: dict[str, str] = {}
    for i, seg in enumerate(want):
        if seg.startswith("{") and seg.endswith("...}"):
            rest = "/".join(got[i:]).strip("/")
            if not rest:
                return None
            params[seg[1:-4]] = unquote(rest)
            return params
        if i >= len(got):
            return None
        if seg.startswith("{") and seg.endswith("}"):
            if not got[i]:
                return None
            params[seg[1:-1]] = unquote(got[i])
        elif seg != got[i]:
            return None
    return params if len(got) == len(want) else None


class HTTPServer:
    def __init__(
        self,
        routes: dict[tuple[str, str], Handler | Route],
        *,
        header_deadline: float = HEADER_DEADLINE,
        body_deadline: float = BODY_DEADLINE,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        self.routes = routes
        self.header_deadline = header_deadline
        self.body_deadline = body_deadline
        self.max_connections = max_connections
        self.open = 0  # connections being served
        self.refused = 0  # connections turned away at the cap
        self._server: asyncio.AbstractServer | None = None
        self._streams: set[asyncio.Task] = set()
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
            streams = list(self._streams)
            for task in streams:  # a stream's aclose runs before stop returns
                task.cancel()
            await asyncio.gather(*streams, return_exceptions=True)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)
            self._server = None

    def resolve(self, method: str, path: str) -> tuple[Route | None, dict[str, str], Reply | None]:
        """The route of a request and its path parameters, or the 404/405 reply."""
        allowed = False
        for (m, pattern), target in self.routes.items():
            params = match(pattern, path)
            if params is None:
                continue
            if m != method:
                allowed = True
                continue
            route = target if isinstance(target, Route) else Route(target)
            return route, params, None
        if allowed:
            return None, {}, (405, {"error": f"{method} not allowed on {path}"})
        return None, {}, (404, {"error": f"no route {path}"})

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.open >= self.max_connections:
            self.refused += 1
            writer.write(_BUSY)
            writer.close()
            return
        self.open += 1
        try:
            await self._serve_one(reader, writer)
        finally:
            self.open -= 1

    async def _serve_one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER)
        try:
            head = await asyncio.wait_for(self._head(conn, reader), self.header_deadline)
            if head is None:
                return
            method = head.method.decode("ascii", "replace")
            path, _, qs = head.target.decode("ascii", "replace").partition("?")
            query = dict(reversed(parse_qsl(qs)))
            # header values are bytes; latin-1 maps each to one character and never fails
            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in head.headers}
            route, params, early = self.resolve(method, path)
            limit = route.max_body if route is not None else MAX_BODY
            declared = headers.get("content-length", "")
            if early is None and declared.isdigit() and int(declared) > limit:
                early = _too_large(limit)
            if conn.they_are_waiting_for_100_continue:
                if early is not None:  # the client has not sent the body: answer now
                    await self._send(conn, writer, early)
                    return
                writer.write(conn.send(h11.InformationalResponse(status_code=100, headers=[])))
            body, over = await asyncio.wait_for(self._body(conn, reader, limit), self.body_deadline)
            if body is None:
                return
            if early is None and over:
                early = _too_large(limit)
            if early is None:
                request = Request(method, path, headers, body, params, query)
                early = await self._call(route, request)
            if isinstance(early, Stream):
                await self._stream(conn, reader, writer, early)
            else:
                await self._send(conn, writer, early)
        except (h11.RemoteProtocolError, ConnectionError, asyncio.IncompleteReadError) as exc:
            log.debug("http: %s", exc)
        except TimeoutError:
            log.debug("http: client too slow")
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _next(self, conn: h11.Connection, reader: asyncio.StreamReader) -> Any:
        while True:
            event = conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            conn.receive_data(await asyncio.wait_for(reader.read(65536), 30))

    async def _head(self, conn: h11.Connection, reader: asyncio.StreamReader) -> h11.Request | None:
        event = await self._next(conn, reader)
        return event if isinstance(event, h11.Request) else None

    async def _body(
        self, conn: h11.Connection, reader: asyncio.StreamReader, limit: int
    ) -> tuple[bytes | None, bool]:
        """The body (None if the client went away) and whether it was over ``limit``; an
        oversized body is read and dropped up to ``DRAIN_MAX`` bytes."""
        body = bytearray()
        size = 0
        while True:
            event = await self._next(conn, reader)
            if isinstance(event, h11.Data):
                size += len(event.data)
                if size <= limit:
                    body += event.data
                elif size > max(limit, DRAIN_MAX):
                    return b"", True
            elif isinstance(event, h11.EndOfMessage):
                return bytes(body), size > limit
            elif isinstance(event, h11.ConnectionClosed):
                return None, False

    async def _call(self, route: Route, request: Request) -> Reply | Stream | Raw:
        try:
            return await route.handler(request)
        except Exception as exc:  # a handler bug is a 500, never a dead server
            log.exception("http handler %s failed", request.path)
            return 500, {"error": f"{type(exc).__name__}: {exc}"}

    async def _send(
        self, conn: h11.Connection, writer: asyncio.StreamWriter, reply: Reply | Raw
    ) -> None:
        if isinstance(reply, Raw):
            status, data, extra, kind = reply.status, reply.body, reply.headers, reply.content_type
        else:
            status, extra, kind = reply[0], reply[2] if len(reply) > 2 else {}, "application/json"
            data = json.dumps(reply[1], default=str).encode()
        headers = [
            ("content-type", kind),
            ("content-length", str(len(data))),
            ("connection", "close"),  # one request per connection: pooled clients reconnect
        ]
        headers += [(k, v) for k, v in extra.items()]
        writer.write(conn.send(h11.Response(status_code=status, headers=headers)))
        writer.write(conn.send(h11.Data(data=data)))
        writer.write(conn.send(h11.EndOfMessage()))
        await writer.drain()

    async def _stream(
        self, conn: h11.Connection, reader: asyncio.StreamReader, writer: Any, reply: Stream
    ) -> None:
        pump = asyncio.ensure_future(self._pump(conn, writer, reply))
        self._streams.add(pump)
        hangup = asyncio.ensure_future(reader.read(1))  # b"" when the client hangs up
        try:
            await asyncio.wait({pump, hangup}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            hangup.cancel()
            pump.cancel()
            done = await asyncio.gather(pump, hangup, return_exceptions=True)
            self._streams.discard(pump)
        if isinstance(done[0], Exception) and not isinstance(done[0], ConnectionError):
            log.warning("http stream %s", done[0])

    async def _pump(self, conn: h11.Connection, writer: Any, reply: Stream) -> None:
        try:
            headers = list(reply.headers.items())  # no length: h11 sends it chunked
            writer.write(conn.send(h11.Response(status_code=reply.status, headers=headers)))
            await writer.drain()
            async for chunk in reply.chunks:
                writer.write(conn.send(h11.Data(data=chunk)))
                await writer.drain()
            writer.write(conn.send(h11.EndOfMessage()))
            await writer.drain()
        finally:
            close = getattr(reply.chunks, "aclose", None)
            if close is not None:
                await close()


_BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
    b"content-length: 45\r\nconnection: close\r\n\r\n"
    b'{"error": "too many connections: try again"}\n'
)


def _too_large(limit: int) -> Reply:
    return 413, {"error": f"request body larger than {limit} bytes"}

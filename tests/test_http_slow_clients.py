"""Slow or many clients cannot hold the engine's HTTP server (issue 16, item 8): a request
head must arrive within the header deadline, its body within the body deadline, and the
connections beyond the cap are answered 503 and closed at once."""

from __future__ import annotations

import asyncio
import time

import httpx

import dagnats_nb as dn
from dagnats_nb.adapters.http.server import HTTPServer


async def _ok(request):
    return 200, {"ok": True}


async def _serve(**limits):
    server = HTTPServer({("GET", "/ok"): _ok, ("POST", "/ok"): _ok}, **limits)
    url = await server.start("127.0.0.1:0")
    host, port = url.removeprefix("http://").split(":")
    return server, host, int(port)


def test_a_client_that_sends_its_head_slowly_is_dropped_at_the_deadline():
    async def scenario():
        server, host, port = await _serve(header_deadline=0.5)
        try:
            reader, writer = await asyncio.open_connection(host, port)
            t0 = time.monotonic()
            writer.write(b"GET /ok HTTP/1.1\r\n")
            await writer.drain()
            for _ in range(10):  # one header line every 0.2 s, never the end of the head
                await asyncio.sleep(0.2)
                try:
                    writer.write(b"X-Slow: 1\r\n")
                    await writer.drain()
                except ConnectionError:
                    break
            try:
                data = await asyncio.wait_for(reader.read(), 5)
            except ConnectionError:  # reset by the server: closed, as asserted below
                data = b""
            held = time.monotonic() - t0
            writer.close()
            # a quick client is still served
            r2, w2 = await asyncio.open_connection(host, port)
            w2.write(b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n")
            reply = await asyncio.wait_for(r2.read(), 5)
            w2.close()
            return data, held, reply
        finally:
            await server.stop()

    data, held, reply = asyncio.run(scenario())
    assert data == b"" and held < 2.5  # closed at the deadline, nothing answered
    assert reply.startswith(b"HTTP/1.1 200")


def test_a_slow_body_is_dropped_at_its_deadline():
    async def scenario():
        server, host, port = await _serve(body_deadline=0.5)
        try:
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(b"POST /ok HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nab")
            await writer.drain()
            t0 = time.monotonic()
            try:
                data = await asyncio.wait_for(reader.read(), 5)
            except ConnectionError:
                data = b""
            writer.close()
            return data, time.monotonic() - t0
        finally:
            await server.stop()

    data, held = asyncio.run(scenario())
    assert data == b"" and held < 2.5


def test_connections_beyond_the_cap_get_503_at_once():
    async def scenario():
        server, host, port = await _serve(max_connections=2, header_deadline=5)
        try:
            idle = [await asyncio.open_connection(host, port) for _ in range(2)]
            await asyncio.sleep(0.1)  # both are being served (waiting for their heads)
            reader, writer = await asyncio.open_connection(host, port)
            busy = await asyncio.wait_for(reader.read(), 2)
            writer.close()
            for _, w in idle:
                w.close()
            return busy, server.refused
        finally:
            await server.stop()

    busy, refused = asyncio.run(scenario())
    assert busy.startswith(b"HTTP/1.1 503") and b"too many connections" in busy
    assert refused == 1


def test_the_engine_takes_its_limits_from_the_settings(tmp_path):
    """Through Engine.start: an idle connection is closed at http_header_timeout, and one
    past http_max_connections gets a 503 at once."""
    opts = dict(http_addr="127.0.0.1:0", http_header_timeout="1s", http_max_connections=1)
    with dn.Engine.start(data_dir=tmp_path / "e", llm_enabled=False, **opts) as eng:
        host, port = eng.http_url.removeprefix("http://").split(":")

        async def scenario():
            idle_reader, idle_writer = await asyncio.open_connection(host, int(port))
            await asyncio.sleep(0.2)  # served: it holds the one connection
            reader, writer = await asyncio.open_connection(host, int(port))
            refused = await asyncio.wait_for(reader.read(), 5)
            writer.close()
            t0 = time.monotonic()
            closed = await asyncio.wait_for(idle_reader.read(), 5)
            idle_writer.close()
            return refused, closed, time.monotonic() - t0

        refused, closed, after = asyncio.run(scenario())
        assert refused.startswith(b"HTTP/1.1 503") and b"too many connections" in refused
        assert b"200" not in closed[:12] and after < 3, (closed[:80], after)
        assert httpx.get(f"{eng.http_url}/health", timeout=5).status_code == 200

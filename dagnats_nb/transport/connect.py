"""Connecting to NATS and closing the connection, the same way for the engine, worker
processes and one-shot commands (backup, restore)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit, urlunsplit

import nats
from nats.aio.client import Client as NATS

from dagnats_nb.errors import DagnatsError, ServerError

log = logging.getLogger("dagnats_nb.transport")

Callback = Callable[[], Awaitable[None]]


def server_list(url: str) -> list[str]:
    """``nats://a:4222,nats://b:4222`` (``nats_url`` may list a cluster's servers) as a list."""
    return [u.strip() for u in url.split(",") if u.strip()]


def with_token(url: str, token: str) -> str:
    """``url`` (one server or a comma-separated list) with ``token`` as every server's
    credential (``nats://TOKEN@host:port``), the form nats-py and the Go clients read."""
    return ",".join(_with_userinfo(u, token) for u in server_list(url))


def without_credentials(url: str) -> str:
    """``url`` with any ``user:password@`` or ``token@`` removed: safe to show or log."""
    return ",".join(_with_userinfo(u, None) for u in server_list(url))


def _with_userinfo(url: str, userinfo: str | None) -> str:
    parts = urlsplit(url if "://" in url else f"nats://{url}")
    host = parts.netloc.rpartition("@")[2]
    netloc = f"{userinfo}@{host}" if userinfo else host
    return urlunsplit(parts._replace(netloc=netloc))


async def connect(
    url: str,
    *,
    name: str,
    persistent: bool = True,
    on_disconnect: Callback | None = None,
    on_reconnect: Callback | None = None,
    error: type[DagnatsError] = ServerError,
    hint: str = "",
) -> NATS:
    """A connection to ``url`` (one server or a comma-separated cluster).

    A dead URL fails fast (three attempts, 0.5 s apart) with one line: ``error("cannot
    connect to NATS at URL: why" + hint)``. Once connected, a ``persistent`` connection
    reconnects for ever (it rides out a server's loss); a one-shot command's does not."""
    seen: list[str] = []  # what the server said: nats-py reports only "no servers" at the end

    async def on_error(exc: Exception) -> None:
        seen.append(str(exc))
        del seen[:-5]
        await _on_error(exc)

    try:
        nc = await nats.connect(
            server_list(url),
            name=name,
            max_reconnect_attempts=3 if persistent else 1,  # 0 retries for ever in nats-py
            reconnect_time_wait=0.5 if persistent else 0.2,
            connect_timeout=5,
            allow_reconnect=True,
            error_cb=on_error,
            disconnected_cb=on_disconnect or _on_disconnect,
            reconnected_cb=on_reconnect or _on_reconnect,
        )
    except Exception as exc:
        why = str(exc) or type(exc).__name__
        where = without_credentials(url)
        if any("authorization violation" in text.lower() for text in [why, *seen]):
            why = "it refused the credentials (none, or not its own, were given)"
            hint = (
                ": the engine's URL with its token is `eng.connect_url` (`dagnats url`); "
                "our CLI and workers find it with --data-dir"
            )
        raise error(f"cannot connect to NATS at {where}: {why}{hint}") from None
    if persistent:
        nc.options["max_reconnect_attempts"] = -1
    return nc


async def close_connection(nc: NATS) -> None:
    """Drain a connection (pending publishes and acks go out), or close it at once when it
    is not connected (a drain would only wait)."""
    if nc.is_closed:
        return
    try:
        if not nc.is_connected:
            raise ConnectionError("not connected")
        await asyncio.wait_for(nc.drain(), 5)
    except Exception:
        await nc.close()


async def _on_error(exc: Exception) -> None:
    log.debug("nats: %s", exc)


async def _on_disconnect() -> None:
    log.info("disconnected from NATS; reconnecting")


async def _on_reconnect() -> None:
    log.info("reconnected to NATS")

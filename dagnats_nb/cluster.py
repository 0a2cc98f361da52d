"""Beyond one machine: a JetStream context that survives a server loss and crosses a leaf
node, and the leaf-node pieces of the embedded server's config.

Choices:

- **Publishes are retried** (:class:`ClusterJetStream`). In an R3 cluster a stream's leader
  can die with a publish in flight: nats-py's ``publish_async`` future then never resolves
  (it has no timeout), and the event would be lost without anyone knowing. A publish that
  carries ``Nats-Msg-Id`` (every history event and task does) is sent again, same id, when
  no ack came within ``ack_timeout`` seconds or the stream answered "no responders" / 503,
  until ``publish_deadline``; the stream's duplicate window makes the retry idempotent. A
  KV write (``$KV.``) is retried likewise. Other publishes are left as nats-py does them.
- **Across a leaf node, by JetStream domain.** A client of the hub addresses the engine's
  JetStream as ``nc.jetstream(domain=...)`` (``$JS.<domain>.API.>``). nats-server denies
  ``$KV.>`` across a leaf connection whose domains differ, and maps
  ``$JS.<domain>.API.$KV.>`` to ``$KV.>`` instead; nats-py's KV writes to ``$KV.`` as is,
  so with a domain :class:`ClusterJetStream` sends KV writes through the mapped subject.
- **Leaf credentials**: a path is used as is (it must exist); inline content (``-----BEGIN``)
  is written to a 0600 file in the data_dir, removed when the server stops and when a
  stale one is found at the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import nats.errors
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js import api as js_api
from nats.js.errors import APIError, NoStreamResponseError, ServiceUnavailableError

from .errors import ConfigError, ServerError

__all__ = [
    "ClusterJetStream",
    "jetstream",
    "server_list",
    "LEAF_CREDS_FILE",
    "DEFAULT_LEAF_DOMAIN",
    "check_leaf_remotes",
    "leaf_credentials_file",
    "leaf_block",
]

LEAF_CREDS_FILE = "leaf.creds"
DEFAULT_LEAF_DOMAIN = "dagnats"
_LEAF_SCHEMES = ("nats-leaf", "nats", "tls", "ws", "wss")
_RETRIABLE = (NoStreamResponseError, ServiceUnavailableError, nats.errors.NoRespondersError)
_RETRIABLE_CODES = (10158,)  # "duplicate message id is in process": the first send is pending


def jetstream(nc: NATS, domain: str | None = None, timeout: float = 10) -> ClusterJetStream:
    """The JetStream context dagnats uses: ``domain`` None is the server's own JetStream."""
    return ClusterJetStream(nc, domain=domain or None, timeout=timeout)


def _retriable(exc: BaseException) -> bool:
    """A publish error that a server loss causes and sending again (same id) fixes."""
    if isinstance(exc, _RETRIABLE | nats.errors.TimeoutError):
        return True
    return isinstance(exc, APIError) and exc.err_code in _RETRIABLE_CODES


def server_list(url: str) -> list[str]:
    """``nats://a:4222,nats://b:4222`` (``nats_url`` may list a cluster's servers) as a list."""
    return [u.strip() for u in url.split(",") if u.strip()]


class _Retry:
    """One publish that may be sent again: the caller's future and the current attempt."""

    __slots__ = ("outer", "inner", "args", "started", "sent")

    def __init__(self, outer: asyncio.Future, args: tuple) -> None:
        self.outer, self.args = outer, args
        self.inner: asyncio.Future | None = None
        self.started = self.sent = time.monotonic()


class ClusterJetStream(JetStreamContext):
    """nats-py's JetStream context, with publishes retried through a server loss and KV
    writes routed through the domain mapping (see the module docstring)."""

    ack_timeout = 3.0  # seconds without an ack before the same message is sent again
    publish_deadline = 60.0  # then the publish fails with a TimeoutError

    def __init__(self, conn: NATS, **kwargs: Any) -> None:
        super().__init__(conn, **kwargs)
        self._retries: set[_Retry] = set()
        self._sweeper: asyncio.Task | None = None

    def _kv_subject(self, subject: str) -> str:
        if subject.startswith("$KV.") and self._prefix != js_api.DEFAULT_PREFIX:
            return f"{self._prefix}.{subject}"
        return subject

    async def publish(
        self,
        subject: str,
        payload: bytes = b"",
        timeout: float | None = None,
        stream: str | None = None,
        headers: dict[str, Any] | None = None,
        msg_ttl: float | None = None,
    ) -> js_api.PubAck:
        kv = subject.startswith("$KV.")
        subject = self._kv_subject(subject)
        if not (kv or (headers and "Nats-Msg-Id" in headers)):
            return await super().publish(subject, payload, timeout, stream, headers, msg_ttl)
        deadline = time.monotonic() + self.publish_deadline
        each = min(timeout or self._timeout, self.ack_timeout)
        while True:
            try:
                return await super().publish(subject, payload, each, stream, headers, msg_ttl)
            except Exception as exc:
                if not _retriable(exc) or time.monotonic() + each > deadline:
                    raise
                await asyncio.sleep(0.2)

    async def publish_async(
        self,
        subject: str,
        payload: bytes = b"",
        wait_stall: float | None = None,
        stream: str | None = None,
        headers: dict | None = None,
        msg_ttl: float | None = None,
    ) -> asyncio.Future:
        kv = subject.startswith("$KV.")
        subject = self._kv_subject(subject)
        args = (subject, payload, wait_stall, stream, headers, msg_ttl)
        if not (kv or (headers and "Nats-Msg-Id" in headers)):
            return await super().publish_async(*args)
        entry = _Retry(asyncio.get_running_loop().create_future(), args)
        await self._send(entry)
        self._retries.add(entry)
        if self._sweeper is None or self._sweeper.done():
            self._sweeper = asyncio.create_task(self._sweep(), name="dagnats-publish-retry")
        return entry.outer

    async def _send(self, entry: _Retry) -> None:
        entry.sent = time.monotonic()
        inner = await super().publish_async(*entry.args)
        entry.inner = inner
        inner.add_done_callback(lambda fut: self._settle(entry, fut))

    def _settle(self, entry: _Retry, fut: asyncio.Future) -> None:
        if fut is not entry.inner or fut.cancelled() or entry.outer.done():
            return
        exc = fut.exception()
        if exc is None:
            entry.outer.set_result(fut.result())
        elif _retriable(exc):
            entry.sent = float("-inf")  # send again at the next sweep
            return
        else:
            entry.outer.set_exception(exc)
        self._retries.discard(entry)

    async def _sweep(self) -> None:
        """Every 0.5 s: send again the publishes left without an ack for ``ack_timeout``."""
        while self._retries:
            await asyncio.sleep(0.5)
            now = time.monotonic()
            for entry in list(self._retries):
                if entry.outer.done():  # answered, or the caller gave up (cancelled)
                    self._retries.discard(entry)
                    if entry.inner is not None and not entry.inner.done():
                        entry.inner.cancel()
                    continue
                if now - entry.started > self.publish_deadline:
                    self._retries.discard(entry)
                    if entry.inner is not None and not entry.inner.done():
                        entry.inner.cancel()
                    entry.outer.set_exception(
                        nats.errors.TimeoutError(f"no ack for {entry.args[0]} after retries")
                    )
                    continue
                if now - entry.sent < self.ack_timeout or self._nc.is_reconnecting:
                    continue
                if entry.inner is not None and not entry.inner.done():
                    entry.inner.cancel()
                try:
                    await self._send(entry)
                except Exception as exc:  # e.g. the connection closed: fail this publish
                    self._retries.discard(entry)
                    if not entry.outer.done():
                        entry.outer.set_exception(exc)


async def ensure_resources(js: JetStreamContext, streams: tuple, replicas: int, where: str) -> None:
    """``resources.ensure`` with ``replicas``; a replica count the server cannot place is one
    line naming ``nats_jetstream_replicas``."""
    from . import resources

    try:
        await resources.ensure(js, streams, replicas=replicas)
    except APIError as exc:
        if exc.err_code not in (10074, 10005):  # not clustered / no suitable peers
            raise
        raise ConfigError(
            f"nats_jetstream_replicas = {replicas}: NATS at {where} cannot place {replicas} "
            f"replicas ({exc.description}); use 1 on a single server, at most the number of "
            "servers of a cluster"
        ) from None


# -- leaf node mode -------------------------------------------------------------------------


def check_leaf_remotes(remotes: list[str]) -> list[str]:
    """The leaf remote URLs, checked: scheme, host and port (ServerError naming the bad one)."""
    out = []
    for url in remotes:
        parts = urlsplit(url.strip())
        try:
            port = parts.port
        except ValueError:  # not a number, or out of range
            raise ConfigError(
                f"leaf_remotes: {url!r} has a bad port: write {parts.scheme}://HOST:7422"
            ) from None
        if parts.scheme not in _LEAF_SCHEMES or not parts.hostname:
            raise ConfigError(
                f"leaf_remotes: {url!r} is not a leaf node URL: write "
                "nats-leaf://HOST:7422 (or tls://, ws://, wss://)"
            )
        if port is None and parts.scheme in ("nats-leaf", "nats", "tls"):
            raise ConfigError(
                f"leaf_remotes: {url!r} has no port: write {parts.scheme}://"
                f"{parts.hostname}:7422 (the hub's leafnodes port)"
            )
        out.append(url.strip())
    return out


def leaf_credentials_file(value: str | None, data_dir: Path) -> tuple[Path | None, bool]:
    """The creds file a leaf remote uses and whether dagnats wrote it (and must remove it).

    Inline content (``-----BEGIN``) goes to ``data_dir/leaf.creds`` with mode 0600."""
    if not value or not value.strip():
        return None, False
    if value.lstrip().startswith("-----BEGIN"):
        path = data_dir / LEAF_CREDS_FILE
        path.unlink(missing_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(value.strip() + "\n")
        return path, True
    path = Path(value).expanduser()
    if not path.is_file():
        raise ServerError(
            f"leaf_credentials: {path} is not a file: give the path of the hub's .creds file, "
            "or its content (-----BEGIN NATS USER JWT-----...)"
        )
    return path.resolve(), False


def remove_leaf_credentials(data_dir: Path) -> None:
    """Remove a credentials file dagnats wrote (at stop, and a stale one at start)."""
    with contextlib.suppress(OSError):
        (data_dir / LEAF_CREDS_FILE).unlink(missing_ok=True)


def leaf_block(remotes: list[str], creds: Path | None, quote) -> list[str]:
    """The ``leafnodes { remotes = [...] }`` lines of the server config."""
    lines = ["leafnodes {", "  remotes = ["]
    for url in remotes:
        entry = f"    {{ url: {quote(url)}"
        if creds is not None:
            entry += f", credentials: {quote(str(creds))}"
        lines.append(entry + " }")
    return [*lines, "  ]", "}"]


def unreachable(remotes: list[str], timeout: float = 1.0) -> list[str]:
    """The remotes no TCP connection reaches now (the server keeps retrying them)."""
    import socket

    out = []
    for url in remotes:
        parts = urlsplit(url)
        default = {"ws": 80, "wss": 443}.get(parts.scheme, 7422)
        try:
            socket.create_connection((parts.hostname, parts.port or default), timeout).close()
        except OSError:
            out.append(url)
    return out

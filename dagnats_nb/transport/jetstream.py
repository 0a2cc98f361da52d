"""Beyond one machine: a JetStream context that survives a server loss and crosses a leaf
node (the leaf node's server config is ``dagnats_nb.server.leaf``).

Choices:

- **Publishes are retried** (:class:`ClusterJetStream`). In an R3 cluster a stream's leader
  can die with a publish in flight: nats-py's ``publish_async`` future then never resolves
  (it has no timeout), and the event would be lost without anyone knowing. A publish that
  carries ``Nats-Msg-Id`` (every history event and task does) is sent again, same id, when
  no ack came within ``ack_timeout`` seconds or the stream answered "no responders" / 503,
  until ``publish_deadline``; the stream's duplicate window makes the retry idempotent. A
  KV write (``$KV.``) is retried likewise. Other publishes are left as nats-py does them.
  A refusal (a full store...) fails the future at once: nats-py 2.16 raises inside its
  reply callback there and leaves the future pending for ever.
- **Across a leaf node, by JetStream domain.** A client of the hub addresses the engine's
  JetStream as ``nc.jetstream(domain=...)`` (``$JS.<domain>.API.>``). nats-server denies
  ``$KV.>`` across a leaf connection whose domains differ, and maps
  ``$JS.<domain>.API.$KV.>`` to ``$KV.>`` instead; nats-py's KV writes to ``$KV.`` as is,
  so with a domain :class:`ClusterJetStream` sends KV writes through the mapped subject.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
from secrets import token_hex
from typing import Any

import nats.errors
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js import api as js_api
from nats.js.client import NO_RESPONDERS_STATUS
from nats.js.errors import (
    APIError,
    NoStreamResponseError,
    TooManyStalledMsgsError,
)

__all__ = [
    "ClusterJetStream",
    "jetstream",
    "server_list",
]

log = logging.getLogger("dagnats_nb.transport.jetstream")

_RETRIABLE = (NoStreamResponseError, nats.errors.NoRespondersError, nats.errors.TimeoutError)
# "duplicate message id is in process" (the first send is pending), "JetStream system
# temporarily unavailable"; a 503 with no code. Never a full store (503 + 10047 etc.).
_RETRIABLE_CODES = (10158, 10008)


def jetstream(nc: NATS, domain: str | None = None, timeout: float = 10) -> ClusterJetStream:
    """The JetStream context dagnats uses: ``domain`` None is the server's own JetStream."""
    return ClusterJetStream(nc, domain=domain or None, timeout=timeout)


def _retriable(exc: BaseException) -> bool:
    """A publish error that a server loss causes and sending again (same id) fixes."""
    if isinstance(exc, _RETRIABLE):
        return True
    if not isinstance(exc, APIError):
        return False
    return exc.err_code in _RETRIABLE_CODES or (exc.code == 503 and not exc.err_code)


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


def server_list(url: str) -> list[str]:
    """``nats://a:4222,nats://b:4222`` (``nats_url`` may list a cluster's servers) as a list."""
    return [u.strip() for u in url.split(",") if u.strip()]


class ClusterJetStream(JetStreamContext):
    """nats-py's JetStream context, with publishes retried through a server loss and KV
    writes routed through the domain mapping (see the module docstring).

    ``publish_async`` of a message with ``Nats-Msg-Id`` (or a KV write) is nats-py's, plus
    a note of what was sent: every 0.5 s a sweep sends again, with the same reply inbox,
    what has had no ack for ``ack_timeout``; a "no responders", 503 or "duplicate in
    process" reply triggers the same instead of failing the caller's future. The first ack
    resolves the future; later ones find it gone.
    """

    ack_timeout = 3.0  # seconds without an ack before the same message is sent again
    publish_deadline = 60.0  # then the publish fails with a TimeoutError

    def __init__(self, conn: NATS, **kwargs: Any) -> None:
        super().__init__(conn, **kwargs)
        # token -> [subject, payload, reply, headers, last sent, first sent]
        self._resend: dict[str, list] = {}
        self.resent = 0  # messages sent again so far
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
        if not (kv or (headers and "Nats-Msg-Id" in headers)):
            return await super().publish_async(
                subject, payload, wait_stall, stream, headers, msg_ttl
            )
        subject = self._kv_subject(subject)
        # nats-py's publish_async (2.9-2.16), keeping the token and reply to send again
        if not self._async_reply_prefix:
            await self._init_async_reply()
        hdr = headers
        if stream is not None:
            hdr = {**(hdr or {}), js_api.Header.EXPECTED_STREAM: stream}
        if msg_ttl is not None:
            hdr = {**(hdr or {}), js_api.Header.MSG_TTL: str(int(msg_ttl))}
        try:
            await asyncio.wait_for(
                self._publish_async_pending_semaphore.acquire(), timeout=wait_stall
            )
        except (TimeoutError, asyncio.CancelledError):
            raise TooManyStalledMsgsError from None
        token = self._nc._nuid.next()
        token.extend(token_hex(2).encode())
        inbox = self._async_reply_prefix[:]
        inbox.extend(token)
        key, reply = token.decode(), inbox.decode()
        future: asyncio.Future = asyncio.Future()
        future.add_done_callback(functools.partial(self._publish_done, key))
        self._publish_async_futures[key] = future
        if self._publish_async_completed_event.is_set():
            self._publish_async_completed_event.clear()
        now = time.monotonic()
        self._resend[key] = [subject, payload, reply, hdr, now, now]
        await self._nc.publish(subject, payload, reply=reply, headers=hdr)
        if self._sweeper is None:
            self._sweeper = asyncio.create_task(self._sweep(), name="dagnats-publish-retry")
        return future

    def _publish_done(self, key: str, _future: asyncio.Future) -> None:
        self._publish_async_futures.pop(key, None)
        self._resend.pop(key, None)
        if not self._publish_async_futures:
            self._publish_async_completed_event.set()
        self._publish_async_pending_semaphore.release()

    async def _handle_async_reply(self, msg) -> None:
        key = msg.subject[len(self._nc._inbox_prefix) + 22 + 2 :]
        entry = self._resend.get(key)
        if entry is None:
            await super()._handle_async_reply(msg)
            return
        future = self._publish_async_futures.get(key)
        if future is None or future.done():
            return
        if msg.headers and msg.headers.get(js_api.Header.STATUS) == NO_RESPONDERS_STATUS:
            entry[4] = float("-inf")  # no stream answers yet: send again at the next sweep
            return
        try:
            resp = json.loads(msg.data)
        except ValueError as exc:
            future.set_exception(exc)
            return
        error = resp.get("error")
        if error is None:
            future.set_result(js_api.PubAck.from_response(resp))
        elif _retriable_error(error):
            entry[4] = float("-inf")
        else:  # nats-py raises inside its callback here, leaving the future pending
            try:
                APIError.from_error(error)
            except APIError as exc:
                future.set_exception(exc)

    async def _sweep(self) -> None:
        """Every 0.5 s: send again what has had no ack for ``ack_timeout``; fail what has
        had none for ``publish_deadline``."""
        try:
            while not self._nc.is_closed:
                await asyncio.sleep(0.5)
                if not self._resend or not self._nc.is_connected:
                    continue
                now = time.monotonic()
                for key, entry in list(self._resend.items()):
                    future = self._publish_async_futures.get(key)
                    if future is None or future.done():
                        self._resend.pop(key, None)
                    elif now - entry[5] > self.publish_deadline:
                        future.set_exception(
                            nats.errors.TimeoutError(f"no ack for {entry[0]} after retries")
                        )
                    elif now - entry[4] >= self.ack_timeout:
                        entry[4] = now
                        self.resent += 1
                        subject, payload, reply, hdr = entry[:4]
                        await self._nc.publish(subject, payload, reply=reply, headers=hdr)
        except Exception as exc:  # the connection closed under us: nothing to retry on
            log.debug("publish retry sweep ended: %s", exc)
        finally:
            self._sweeper = None


def _retriable_error(error: dict) -> bool:
    """Not stored yet, send again: no responders, the same id still in process, JetStream
    temporarily unavailable; never a full store (a 503 with its own code)."""
    code = error.get("err_code")
    return code in _RETRIABLE_CODES or (error.get("code") == 503 and not code)

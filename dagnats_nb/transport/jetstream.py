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
- **Public nats-py API only.** The retried publishes have their own reply inbox
  (``nc.new_inbox()``), futures and in-flight limit; nats-py's ``publish_async``
  machinery (its private reply prefix, futures and semaphore) is not touched.
  ``publish_async_pending``/``publish_async_completed`` count both kinds.
- **Across a leaf node, by JetStream domain.** A client of the hub addresses the engine's
  JetStream as ``nc.jetstream(domain=...)`` (``$JS.<domain>.API.>``). nats-server denies
  ``$KV.>`` across a leaf connection whose domains differ, and maps
  ``$JS.<domain>.API.$KV.>`` to ``$KV.>`` instead; nats-py's KV writes to ``$KV.`` as is,
  so with a domain :class:`ClusterJetStream` sends KV writes through the mapped subject.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import time
from typing import Any

import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js import api as js_api
from nats.js.client import NO_RESPONDERS_STATUS
from nats.js.errors import (
    APIError,
    NoStreamResponseError,
    TooManyStalledMsgsError,
)

__all__ = ["ClusterJetStream", "jetstream"]

log = logging.getLogger("dagnats_nb.transport.jetstream")

# Publishes awaiting their ack at most (nats-py's default is 4,000): 10,000 timers due at one
# instant (sleeping runs) write their events at once instead of queueing behind the acks.
MAX_IN_FLIGHT = 16_384
_RETRIABLE = (NoStreamResponseError, nats.errors.NoRespondersError, nats.errors.TimeoutError)
# "duplicate message id is in process" (the first send is pending), "JetStream system
# temporarily unavailable"; a 503 with no code. Never a full store (503 + 10047 etc.).
_RETRIABLE_CODES = (10158, 10008)


def jetstream(nc: NATS, domain: str | None = None, timeout: float = 10) -> ClusterJetStream:
    """The JetStream context dagnats uses: ``domain`` None is the server's own JetStream."""
    return ClusterJetStream(
        nc, domain=domain or None, timeout=timeout, publish_async_max_pending=MAX_IN_FLIGHT
    )


_ACK_FIELDS = frozenset({"stream", "seq", "domain", "duplicate"})


def _pub_ack(resp: dict) -> js_api.PubAck:
    """The ack of a publish: built directly in the common case (nats-py's ``from_response``
    walks the dataclass's fields, on every publish)."""
    if resp.keys() <= _ACK_FIELDS:
        return js_api.PubAck(**resp)
    return js_api.PubAck.from_response(resp)


def _retriable(exc: BaseException) -> bool:
    """A publish error that a server loss causes and sending again (same id) fixes."""
    if isinstance(exc, _RETRIABLE):
        return True
    if not isinstance(exc, APIError):
        return False
    return exc.err_code in _RETRIABLE_CODES or (exc.code == 503 and not exc.err_code)


def _retriable_error(error: dict) -> bool:
    """Not stored yet, send again: no responders, the same id still in process, JetStream
    temporarily unavailable; never a full store (a 503 with its own code)."""
    code = error.get("err_code")
    return code in _RETRIABLE_CODES or (error.get("code") == 503 and not code)


class _Sent:
    """A retried publish in flight: what to send again, when it was sent, its future."""

    __slots__ = ("subject", "payload", "reply", "headers", "last", "first", "future")

    def __init__(self, subject: str, payload: bytes, reply: str, headers, future) -> None:
        self.subject, self.payload, self.reply, self.headers = subject, payload, reply, headers
        self.last = self.first = time.monotonic()
        self.future: asyncio.Future = future


class ClusterJetStream(JetStreamContext):
    """nats-py's JetStream context, with publishes retried through a server loss and KV
    writes routed through the domain mapping (see the module docstring).

    ``publish_async`` of a message with ``Nats-Msg-Id`` (or a KV write) sends it with a
    reply subject on this context's own inbox and keeps what was sent: every 0.5 s a sweep
    sends again, with the same reply subject, what has had no ack for ``ack_timeout``; a
    "no responders", 503 or "duplicate in process" reply triggers the same instead of
    failing the caller's future. The first ack resolves the future; later ones find it gone.
    """

    ack_timeout = 3.0  # seconds without an ack before the same message is sent again
    publish_deadline = 60.0  # then the publish fails with a TimeoutError

    def __init__(
        self,
        conn: NATS,
        prefix: str = js_api.DEFAULT_PREFIX,
        domain: str | None = None,
        timeout: float = 5,
        publish_async_max_pending: int = 4000,
    ) -> None:
        super().__init__(
            conn,
            prefix=prefix,
            domain=domain,
            timeout=timeout,
            publish_async_max_pending=publish_async_max_pending,
        )
        self.conn = conn
        self.api = f"$JS.{domain}.API" if domain is not None else prefix
        self.request_timeout = timeout
        self.resent = 0  # messages sent again so far
        self._sent: dict[str, _Sent] = {}  # reply token -> the publish in flight
        self._slots = asyncio.Semaphore(publish_async_max_pending)
        self._idle = asyncio.Event()  # set when nothing is in flight
        self._idle.set()
        self._tokens = itertools.count()
        self._reply_prefix: str | None = None  # "<inbox>." : replies come to <inbox>.<token>
        self._reply_lock = asyncio.Lock()
        self._sweeper: asyncio.Task | None = None

    def _kv_subject(self, subject: str) -> str:
        if subject.startswith("$KV.") and self.api != js_api.DEFAULT_PREFIX:
            return f"{self.api}.{subject}"
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
        each = min(timeout or self.request_timeout, self.ack_timeout)
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
        hdr = headers
        if stream is not None:
            hdr = {**(hdr or {}), js_api.Header.EXPECTED_STREAM: stream}
        if msg_ttl is not None:
            hdr = {**(hdr or {}), js_api.Header.MSG_TTL: str(int(msg_ttl))}
        if self._slots.locked():  # 16,384 sends await their acks: wait for one (rare)
            try:
                await asyncio.wait_for(self._slots.acquire(), timeout=wait_stall)
            except (TimeoutError, asyncio.CancelledError):
                raise TooManyStalledMsgsError from None
        else:  # a free slot: taken at once, without wait_for's task (Python 3.11)
            await self._slots.acquire()
        try:
            prefix = self._reply_prefix or await self._subscribe_replies()
        except BaseException:
            self._slots.release()
            raise
        token = format(next(self._tokens), "x")
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        sent = _Sent(subject, payload, prefix + token, hdr, future)
        self._sent[token] = sent
        self._idle.clear()
        future.add_done_callback(lambda _: self._done(token))
        await self.conn.publish(subject, payload, reply=sent.reply, headers=hdr)
        if self._sweeper is None:
            self._sweeper = asyncio.create_task(self._sweep(), name="dagnats-publish-retry")
        return future

    def publish_async_pending(self) -> int:
        return super().publish_async_pending() + len(self._sent)

    async def publish_async_completed(self) -> None:
        await super().publish_async_completed()
        await self._idle.wait()

    async def _subscribe_replies(self) -> str:
        async with self._reply_lock:
            if self._reply_prefix is None:
                inbox = self.conn.new_inbox()
                await self.conn.subscribe(f"{inbox}.*", cb=self._on_reply)
                self._reply_prefix = f"{inbox}."
        return self._reply_prefix

    def _done(self, token: str) -> None:
        self._sent.pop(token, None)
        if not self._sent:
            self._idle.set()
        self._slots.release()

    async def _on_reply(self, msg: Msg) -> None:
        sent = self._sent.get(msg.subject[len(self._reply_prefix or "") :])
        if sent is None or sent.future.done():
            return  # an ack of a send the first ack already resolved
        if msg.headers and msg.headers.get(js_api.Header.STATUS) == NO_RESPONDERS_STATUS:
            sent.last = float("-inf")  # no stream answers yet: send again at the next sweep
            return
        try:
            resp = json.loads(msg.data)
        except ValueError as exc:
            sent.future.set_exception(exc)
            return
        error = resp.get("error")
        if error is None:
            sent.future.set_result(_pub_ack(resp))
        elif _retriable_error(error):
            sent.last = float("-inf")
        else:
            try:
                APIError.from_error(error)
            except APIError as exc:
                sent.future.set_exception(exc)

    async def _sweep(self) -> None:
        """Every 0.5 s: send again what has had no ack for ``ack_timeout``; fail what has
        had none for ``publish_deadline``."""
        try:
            while not self.conn.is_closed:
                await asyncio.sleep(0.5)
                if not self._sent or not self.conn.is_connected:
                    continue
                now = time.monotonic()
                for sent in list(self._sent.values()):
                    if sent.future.done():
                        continue
                    if now - sent.first > self.publish_deadline:
                        sent.future.set_exception(
                            nats.errors.TimeoutError(f"no ack for {sent.subject} after retries")
                        )
                    elif now - sent.last >= self.ack_timeout:
                        sent.last = now
                        self.resent += 1
                        await self.conn.publish(
                            sent.subject, sent.payload, reply=sent.reply, headers=sent.headers
                        )
        except Exception as exc:  # the connection closed under us: nothing to retry on
            log.debug("publish retry sweep ended: %s", exc)
        finally:
            self._sweeper = None

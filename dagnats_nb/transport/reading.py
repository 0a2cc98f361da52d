"""Reading and trimming a stream by subject: every message a filter holds now, one
subject's messages by batched direct get, the last message of one subject, and a
subject's purge (it leaves no marker, unlike a KV delete)."""

from __future__ import annotations

import contextlib
import json
import time
import weakref
from typing import NamedTuple

import nats.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js import api as js_api
from nats.js.errors import NotFoundError

BATCH = 512  # messages a fetch asks for
DIRECT_BATCH = 256  # messages one batched direct get asks for
WAIT = 5.0  # seconds for the next message of a read before it fails
NO_DIRECT_FOR = 60.0  # seconds a stream that answered no direct get is read by consumer

# connection -> {stream: when it last answered no direct get}: a stream we adopted without
# allow_direct would otherwise cost every read one more round trip
_no_direct: weakref.WeakKeyDictionary[object, dict[str, float]] = weakref.WeakKeyDictionary()

# what a direct get adds to a stored message's own headers
_DIRECT_HEADERS = frozenset(
    {
        "Nats-Stream",
        "Nats-Subject",
        "Nats-Sequence",
        "Nats-Time-Stamp",
        "Nats-Num-Pending",
        "Nats-Last-Sequence",
    }
)


class Stored(NamedTuple):
    """A stored message as :func:`read_subject` returns it; ``headers`` are the message's
    own (None when it has none)."""

    seq: int
    subject: str
    data: bytes
    headers: dict[str, str] | None


class ReadTimeout(nats.errors.TimeoutError):
    """A read of a subject that stopped answering (a ``nats.errors.TimeoutError``)."""

    def __init__(self, stream: str, subject: str, seq: int) -> None:
        super().__init__()
        self.what = f"no answer in {WAIT:g}s reading {subject} of stream {stream} at {seq}"

    def __str__(self) -> str:
        return f"nats: timeout: {self.what}"


class _NoDirect(Exception):
    """The stream answers no direct get (no ``allow_direct``, or no such stream)."""


async def read_subject(
    js: JetStreamContext,
    stream: str,
    subject: str,
    start_seq: int = 0,
    limit: int | None = None,
) -> list[Stored]:
    """The messages of ``stream`` on one ``subject`` (no wildcards) from ``start_seq``
    (0: the first), in order, at most ``limit`` (None: all stored now and any appended
    while reading). Batched direct gets (nats-server >= 2.11): one request a
    ``DIRECT_BATCH`` messages, no consumer; a stream without ``allow_direct`` (one we
    adopted, never altered) is read by an ordered consumer instead. :class:`ReadTimeout`
    when the server stops answering."""
    seen = _no_direct.setdefault(js._nc, {})
    if time.monotonic() - seen.get(stream, -NO_DIRECT_FOR) >= NO_DIRECT_FOR:
        try:
            return await _direct(js, stream, subject, max(start_seq, 1), limit)
        except _NoDirect:
            seen[stream] = time.monotonic()
    return await _consumed(js, stream, subject, max(start_seq, 1), limit)


async def _consumed(
    js: JetStreamContext, stream: str, subject: str, seq: int, limit: int | None
) -> list[Stored]:
    """:func:`read_subject` by an ordered consumer from the subject's first message at or
    after ``seq`` (one message get finds it, or that there is none)."""
    try:
        first = await js.get_msg(stream, seq=seq, subject=subject, next=True)
    except NotFoundError:
        return []
    if limit == 1:
        return [Stored(first.seq, first.subject, first.data or b"", first.headers or None)]
    cfg = js_api.ConsumerConfig(
        deliver_policy=js_api.DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=first.seq
    )
    sub = await js.subscribe(subject, stream=stream, ordered_consumer=True, config=cfg)
    out: list[Stored] = []
    try:
        while limit is None or len(out) < limit:
            try:
                msg = await sub.next_msg(timeout=WAIT)
            except nats.errors.TimeoutError:
                raise ReadTimeout(stream, subject, seq) from None
            meta = msg.metadata
            out.append(Stored(meta.sequence.stream, msg.subject, msg.data, msg.headers or None))
            if meta.num_pending == 0:
                break
    finally:
        await sub.unsubscribe()
    return out


async def _direct(
    js: JetStreamContext, stream: str, subject: str, seq: int, limit: int | None
) -> list[Stored]:
    nc = js._nc
    api = f"{js._prefix}.DIRECT.GET.{stream}"
    out: list[Stored] = []
    while limit is None or len(out) < limit:
        want = DIRECT_BATCH if limit is None else min(DIRECT_BATCH, limit - len(out))
        inbox = nc.new_inbox()
        sub = await nc.subscribe(inbox)
        try:
            body = {"seq": seq, "next_by_subj": subject, "batch": want}
            await nc.publish(api, json.dumps(body).encode(), reply=inbox)
            pending = await _batch(sub, stream, subject, seq, out)
        finally:
            await sub.unsubscribe()
        if not pending:
            break  # nothing (left) on the subject
        if out and out[-1].seq >= seq:
            seq = out[-1].seq + 1
        else:  # an end of batch that moved nowhere: never ask the same again
            break
    return out


async def _batch(sub, stream: str, subject: str, seq: int, out: list[Stored]) -> int | None:
    """Read one batch's answers into ``out``: how many messages its end said are left
    after it, None when the subject had none from ``seq`` on."""
    while True:
        try:
            msg = await sub.next_msg(timeout=WAIT)
        except nats.errors.TimeoutError:
            raise ReadTimeout(stream, subject, seq) from None
        headers = msg.headers or {}
        status = headers.get("Status")
        if status is None:
            if "Nats-Num-Pending" not in headers:  # a server < 2.11: one message, no batch
                raise _NoDirect(stream)
            own = {k: v for k, v in headers.items() if k not in _DIRECT_HEADERS}
            out.append(
                Stored(
                    int(headers["Nats-Sequence"]),
                    headers.get("Nats-Subject", subject),
                    msg.data,
                    own or None,
                )
            )
            continue
        if status == "204":  # end of batch
            return int(headers.get("Nats-Num-Pending", 0))
        if status == "404":
            return None
        if status == "503":  # no responders: no direct get on this stream
            raise _NoDirect(stream)
        why = headers.get(js_api.Header.DESCRIPTION, "")
        raise nats.errors.Error(f"direct get of {subject} on stream {stream}: {status} {why}")


async def read_all(
    js: JetStreamContext, stream: str, subject: str, start_seq: int = 0
) -> list[Msg]:
    """Every message of ``stream`` on ``subject`` (wildcards allowed) stored now, from
    ``start_seq`` (0: the first), in stream order. One ephemeral consumer that acks nothing;
    it knows up front how many messages match, so a filter that matches none costs one
    request, not a timeout."""
    cfg = js_api.ConsumerConfig(
        ack_policy=js_api.AckPolicy.NONE,
        deliver_policy=(
            js_api.DeliverPolicy.BY_START_SEQUENCE if start_seq else js_api.DeliverPolicy.ALL
        ),
        opt_start_seq=start_seq or None,
        inactive_threshold=30.0,
        mem_storage=True,
        num_replicas=1,
    )
    psub = await js.pull_subscribe(subject, stream=stream, config=cfg)
    try:
        pending = (await psub.consumer_info()).num_pending
        out: list[Msg] = []
        while len(out) < pending:
            try:
                out += await psub.fetch(min(BATCH, pending - len(out)), timeout=5)
            except nats.errors.TimeoutError:
                break  # messages purged meanwhile: what is left has been read
        return out
    finally:
        await psub.unsubscribe()
        with contextlib.suppress(NotFoundError, nats.errors.Error):  # ephemeral: may be gone
            await js.delete_consumer(stream, psub._consumer)


async def last_data(js: JetStreamContext, stream: str, subject: str) -> bytes | None:
    """The body of the last message on ``subject``, or None when there is none."""
    try:
        return (await js.get_last_msg(stream, subject)).data
    except NotFoundError:
        return None


async def purge_subject(js: JetStreamContext, stream: str, subject: str) -> None:
    """Remove every message on ``subject`` from ``stream`` (no delete marker is left)."""
    req = json.dumps({"filter": subject}).encode()
    await js._api_request(f"{js._prefix}.STREAM.PURGE.{stream}", req, timeout=js._timeout)

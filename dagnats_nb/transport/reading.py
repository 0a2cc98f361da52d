"""Reading and trimming a stream by subject: every message a filter holds now, the last
message of one subject, and a subject's purge (it leaves no marker, unlike a KV delete)."""

from __future__ import annotations

import contextlib
import json

import nats.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js import api as js_api
from nats.js.errors import NotFoundError

BATCH = 512  # messages a fetch asks for


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

"""The durable pull consumers of task types on TASK_QUEUES, named and filtered as Go's
(``workers-{task}[-{group}]`` on ``task.{task}[.{group}].>``), with our ownership mark."""

from __future__ import annotations

import asyncio
import contextlib

from nats.js import JetStreamContext
from nats.js import api as js_api
from nats.js.errors import BadRequestError, NotFoundError, ServiceUnavailableError

from dagnats_nb.errors import DagnatsError
from dagnats_nb.transport.provision import OWNER, OWNER_KEY
from dagnats_nb.wire import protocol

OVERLAPPING_CONSUMER = 10100  # JetStream: a work queue's filters must not overlap
PLACEMENT_TRIES = 10  # a replicated stream's peers settling: 503 for a moment
PLACEMENT_WAIT = 0.5


async def add_consumer(js: JetStreamContext, stream: str, cfg: js_api.ConsumerConfig):
    """``js.add_consumer``, asked again for a few seconds while the server answers 503
    (insufficient resources), as a clustered stream does while its replicas settle (just
    after it went from one replica to three); the last answer otherwise."""
    for attempt in range(PLACEMENT_TRIES):
        try:
            return await js.add_consumer(stream, cfg)
        except ServiceUnavailableError:
            if attempt == PLACEMENT_TRIES - 1:
                raise
            await asyncio.sleep(PLACEMENT_WAIT)


async def ensure_task_consumer(
    js: JetStreamContext,
    task: str,
    ack_wait: float,
    max_ack_pending: int | None = None,
    group: str = "",
) -> str:
    """The durable pull consumer of a task type (Go's ``workers-{task}``, or
    ``workers-{task}-{group}`` on ``task.{task}.{group}.>`` for a worker group), created
    or updated; its name.

    ``max_ack_pending`` None keeps an existing consumer as it is (the engine creates the
    consumers of a workflow's task types at registration, so their lag shows before any
    worker exists; a worker then sets its concurrency). A consumer we did not create (no
    ``dagnats-nb.owner`` metadata: a Go worker's, whose ``CreateOrUpdateConsumer`` also
    rewrites ours) is used as it is, never updated. A ``worker-{task}`` consumer left by
    dagnats-nb < 0.2 on the same subjects is deleted first (a work queue allows one
    consumer per subject; its unacknowledged tasks stay in the stream for the new one).
    """
    durable = protocol.consumer_name(task, group)
    cfg = js_api.ConsumerConfig(
        durable_name=durable,
        filter_subject=protocol.task_filter(task, group),
        ack_policy=js_api.AckPolicy.EXPLICIT,
        ack_wait=ack_wait,
        max_ack_pending=max_ack_pending or 1,
        max_deliver=-1,
        metadata={OWNER_KEY: OWNER},
    )
    try:
        info = await js.consumer_info(protocol.TASK_STREAM, durable)
    except NotFoundError:
        with contextlib.suppress(NotFoundError):
            await js.delete_consumer(protocol.TASK_STREAM, f"worker-{task}")
        try:
            await add_consumer(js, protocol.TASK_STREAM, cfg)
        except BadRequestError as exc:
            if exc.err_code != OVERLAPPING_CONSUMER:
                raise
            raise DagnatsError(
                f"cannot make consumer {durable} on {cfg.filter_subject}: another consumer of "
                f"task '{task}' takes those subjects on {protocol.TASK_STREAM} (a work queue "
                "gives a subject to one consumer): serve a task type either by worker groups "
                "or without one"
            ) from None
        return durable
    c = info.config
    if (c.metadata or {}).get(OWNER_KEY) != OWNER:
        return durable  # not ours: adopted as it is
    if max_ack_pending is not None and (
        c.max_ack_pending != cfg.max_ack_pending or c.ack_wait != cfg.ack_wait
    ):
        await add_consumer(js, protocol.TASK_STREAM, cfg)  # updates in place
    return durable

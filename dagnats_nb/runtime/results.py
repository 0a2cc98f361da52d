"""What every kind of worker (in-kernel, worker process, the HTTP bridge) does with a task's
result: store the output (behind a ``$ref`` when too large for a message), record the result
event, and only then acknowledge the task, so a worker that dies in between loses nothing
(the task is delivered again; its second result is a duplicate the core ignores)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from nats.js import JetStreamContext

from dagnats_nb.transport.errors import store_error
from dagnats_nb.transport.stores import PayloadStore
from dagnats_nb.wire import protocol

RECORD_TIMEOUT = 30.0  # seconds to wait for the history stream's ack


async def output_payload(payloads: PayloadStore, task: protocol.TaskPayload, output: Any) -> Any:
    """``output`` as it goes into the result event: itself, or a ``$ref`` to the payload
    store when too large for one message. TypeError/ValueError when it is not JSON."""
    encoded = protocol.dumps(output)
    prefix = f"{task.run_id}/{task.step_id}/output"
    return await payloads.shrink(output, len(encoded), prefix)


async def record_result(
    js: JetStreamContext,
    msg: Any,
    event: protocol.Event,
    on_fault: Callable[[str], None] | None = None,
) -> str | None:
    """Store the result ``event`` of the task ``msg``, then acknowledge the task; None, or
    why the event could not be stored (the task is then left unacknowledged, and a full
    store is reported to ``on_fault``)."""
    try:
        ack = await js.publish_async(
            protocol.history_subject(event.run_id),
            event.encode(),
            headers={"Nats-Msg-Id": event.msg_id},
        )
        await asyncio.wait_for(ack, RECORD_TIMEOUT)
    except Exception as exc:
        full = store_error(exc)
        if full and on_fault is not None:
            on_fault(full)
        return full or f"cannot record {event.type} of run {event.run_id}: {exc}"
    await msg.ack()
    return None

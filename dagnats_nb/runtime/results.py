"""What every kind of worker (in-kernel, worker process, the HTTP bridge) does with a task's
result: store the output (behind a ``$ref`` when too large for a message), record the result
event, and only then acknowledge the task, so a worker that dies in between loses nothing
(the task is delivered again; its second result is a duplicate the core ignores).

When JetStream refuses to store (a full store, a full disk, a server that does not answer),
a task worker holds the result and stores it again with back-off, telling the server the
task is still in progress, so the step does not run again (:func:`deliver`); the workers
of its host fetch no new task meanwhile (:class:`StoreGate`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from nats.js import JetStreamContext

from dagnats_nb.transport.errors import store_error
from dagnats_nb.transport.stores import PayloadStore
from dagnats_nb.wire import protocol

log = logging.getLogger("dagnats_nb.runtime.workers")

RECORD_TIMEOUT = 30.0  # seconds to wait for the history stream's ack
PROBE_EVERY = 10.0  # seconds a closed StoreGate holds fetches before one probe task


class StoreGate:
    """Shared by a host's task workers: closed while JetStream refuses their results. They
    then fetch no new task (one every ``PROBE_EVERY`` seconds, to notice the store is back),
    and it opens at the first result stored."""

    def __init__(self) -> None:
        self._open = asyncio.Event()
        self._open.set()
        self.reason: str | None = None

    @property
    def refusing(self) -> bool:
        return not self._open.is_set()

    def refuse(self, reason: str) -> None:
        self.reason = reason
        self._open.clear()

    def accept(self) -> None:
        if self.refusing:
            log.warning("JetStream stores results again: fetching tasks again")
        self.reason = None
        self._open.set()

    async def wait(self) -> None:
        """Return when the gate is open, or after ``PROBE_EVERY`` seconds."""
        if not self._open.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._open.wait(), PROBE_EVERY)


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
    timeout: float = RECORD_TIMEOUT,
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
        await asyncio.wait_for(ack, timeout)
    except Exception as exc:
        full = store_error(exc)
        if full and on_fault is not None:
            on_fault(full)
        if full:
            return full
        if isinstance(exc, TimeoutError):
            why = f"JetStream did not acknowledge it within {timeout:g} s (a full disk?)"
        else:
            why = str(exc) or type(exc).__name__
        return f"cannot record {event.type} of run {event.run_id}: {why}"
    await msg.ack()
    return None


async def deliver(
    js: JetStreamContext,
    payloads: PayloadStore,
    msg: Any,
    task: protocol.TaskPayload,
    result: tuple[str, Any, int | None],
    make_event: Callable[[str, Any], protocol.Event],
    *,
    gate: StoreGate,
    ack_wait: float,
    on_fault: Callable[[str], None] | None,
    stopping: Callable[[], bool],
) -> bool:
    """Store ``result`` (kind, payload, and the encoded size when the payload is an output
    that may go to the object store), record its event and acknowledge ``msg``. When that
    fails, hold the result: tell the server the task is in progress, wait (0.5 s, doubling,
    at most 5 s) and try again, so the handler does not run twice. False when the worker
    stops first: the task is then released (NAK) and runs again elsewhere."""
    kind, payload, size = result
    delay, said = 0.5, False
    while True:
        try:
            if size is not None:
                prefix = f"{task.run_id}/{task.step_id}/output"
                payload, size = await payloads.shrink(payload, size, prefix), None
            problem = await record_result(
                js, msg, make_event(kind, payload), on_fault, timeout=max(1.0, ack_wait / 2)
            )
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await msg.nak()
            raise
        except Exception as exc:  # the object store, or the ack
            full = store_error(exc)
            if full and on_fault is not None:
                on_fault(full)
            why = full or str(exc) or type(exc).__name__
            problem = f"cannot store the output of step {task.step_id} of run {task.run_id}: {why}"
        if problem is None:
            gate.accept()
            return True
        gate.refuse(problem)
        if stopping():
            with contextlib.suppress(Exception):
                await msg.nak()
            return False
        if not said:
            log.error("%s; the worker holds the result and stores it again", problem)
            said = True
        with contextlib.suppress(Exception):
            await msg.in_progress()
        await asyncio.sleep(delay)
        delay = min(delay * 2, 5.0, max(0.2, ack_wait / 3))

"""A task type's capacity over every process: the task consumer's ``MaxAckPending`` is the
sum of the concurrencies the live workers declare for it in the ``workers`` KV, so two
processes of concurrency 4 run 8 tasks at once."""

from __future__ import annotations

from nats.js import JetStreamContext

from dagnats_nb.runtime.consumers import ensure_task_consumer
from dagnats_nb.transport.stores import json_values
from dagnats_nb.wire.workers import read_entry


async def share_capacity(js: JetStreamContext, task: str, ack_wait: float, group: str = "") -> int:
    """Set the task consumer's MaxAckPending to the sum of the concurrencies the live
    workers declare for ``task`` in the ``workers`` KV (the engine calls this when it adds
    a handler, so worker processes already running keep their share); the sum."""
    total = (await registered_concurrency(js)).get(task, 0)
    if total >= 1:
        await ensure_task_consumer(js, task, ack_wait, total, group)
    return total


async def registered_concurrency(
    js: JetStreamContext, exclude: str | None = None
) -> dict[str, int]:
    """Sum of the concurrency per task over the live entries of the ``workers`` KV."""
    totals: dict[str, int] = {}
    for key, body in (await json_values(js, "workers")).items():
        if key == exclude or not isinstance(body, dict):
            continue
        for task, concurrency in read_entry(body).tasks.items():
            # None: a Go worker, which pulls through its own consumer (workers-{task})
            totals[task] = totals.get(task, 0) + (concurrency or 0)
    return totals

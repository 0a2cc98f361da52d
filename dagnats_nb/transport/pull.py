"""Taking tasks from a pull consumer: what a pull subscription already holds, and a fetch
that returns as soon as there is one task.

Why not nats-py's ``fetch(n)`` (2.16): it asks with ``no_wait``; when other workers' pull
requests wait on the same consumer the server answers "408 Requests Pending", and fetch
then sends a lingering request and holds the tasks it receives until ``n`` arrived or its
timeout passed (5 s stalls with two worker processes on one consumer; tests/test_transport.py
reproduces it). Public alternatives measured (benchmarks/engine.py --quick, same sitting,
median of 3): ``fetch(1)`` then ``fetch(n - 1, timeout=0.005)`` for the rest: with nothing
else pending that request carries ``expires`` and the server holds it that long, so a lone
step's latency rose from 2.1 to 8.0 ms; ``fetch(1)`` alone, one request per task: 620
instead of 1,360 steps/s.

nats-py internals used here (``PullSubscription`` 2.x), each because the public API lacks it;
tests/test_transport.py fails naming the installed nats-py version if one changes:

- ``psub._sub``: the subscription of the pull inbox, with ``_pending_queue`` (the
  ``asyncio.Queue`` of received messages) and ``_pending_size`` (their bytes, counted
  against the slow-consumer limit). Public: ``pending_msgs``/``pending_bytes`` (read only);
  every ``fetch`` sends a pull request first, there is no way to take what is buffered
  without asking the server for more, or to read one message with a deadline.
- ``psub._nc``, ``psub._nms`` (``<api>.CONSUMER.MSG.NEXT.<stream>.<consumer>``) and
  ``psub._deliver`` (the inbox): to send a ``no_wait`` pull request without ``expires``.
  Public: only ``fetch``, which adds ``expires`` or a second lingering request.
"""

from __future__ import annotations

import json

from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeout
from nats.js import JetStreamContext

__all__ = ["fetch_available", "take_buffered"]

# Seconds to wait for each further message of a ``no_wait`` request (the server answers at
# once: messages, then a status ending the request).
REST_WAIT = 0.05


def take_buffered(psub: object, limit: int | None = None) -> list[Msg]:
    """Up to ``limit`` messages a pull subscription received and nobody read yet, without
    waiting (JetStream status messages of earlier pull requests are dropped).

    A worker that stops NAKs these (another worker takes them at once instead of after the
    ack wait); :func:`fetch_available` hands them out before asking the server for more."""
    sub = getattr(psub, "_sub", None)  # nats-py internal: the pull inbox's subscription
    queue = getattr(sub, "_pending_queue", None)  # nats-py internal: its received messages
    msgs: list[Msg] = []
    while queue is not None and not queue.empty() and (limit is None or len(msgs) < limit):
        msg = queue.get_nowait()
        sub._pending_size -= len(msg.data)  # nats-py internal: slow-consumer accounting
        if not JetStreamContext.is_status_msg(msg):
            msgs.append(msg)
    return msgs


async def fetch_available(psub, batch: int, timeout: float) -> list[Msg]:
    """Up to ``batch`` tasks as soon as there is one, never waiting for a full batch.

    Tasks already buffered, else a ``no_wait`` request for what is there (one round trip
    when tasks wait: a worker whose slots free up as its calls end takes the next ones at
    once), else a lingering request for one task (``fetch(1)``: no ``no_wait``) and a
    ``no_wait`` request for the rest; each ``no_wait`` read until its status (see the
    module docstring for why not ``fetch(n)``)."""
    msgs = take_buffered(psub, batch)
    if msgs or batch == 1:
        return msgs or await psub.fetch(1, timeout=timeout)
    msgs = await _no_wait(psub, batch)
    if msgs:
        return msgs
    msgs = await psub.fetch(1, timeout=timeout)
    return msgs + await _no_wait(psub, batch - 1)


async def _no_wait(psub, batch: int) -> list[Msg]:
    """The tasks a ``no_wait`` request for ``batch`` gets (none when the server answers
    with a status: no tasks, or requests of other workers waiting)."""
    more = json.dumps({"batch": batch, "no_wait": True}).encode()
    # nats-py internals: the connection, the consumer's next-message subject, the inbox
    await psub._nc.publish(psub._nms, more, psub._deliver)
    msgs: list[Msg] = []
    while len(msgs) < batch:
        try:
            msg = await psub._sub.next_msg(timeout=REST_WAIT)
        except (TimeoutError, NatsTimeout):
            break
        if JetStreamContext.is_status_msg(msg):
            break
        msgs.append(msg)
        if _take_until_status(psub, msgs, batch):
            break
    return msgs


def _take_until_status(psub, msgs: list[Msg], batch: int) -> bool:
    """Append to ``msgs`` what the pull inbox already holds, up to ``batch``, without
    waiting (``next_msg`` costs two asyncio tasks and a loop turn per message: a batch of
    200 read one by one waited behind every other callback of a busy loop 200 times).
    True when the request's closing status came."""
    sub = psub._sub  # nats-py internal: the pull inbox's subscription (see take_buffered)
    queue = sub._pending_queue
    while len(msgs) < batch and not queue.empty():
        msg = queue.get_nowait()
        sub._pending_size -= len(msg.data)
        if JetStreamContext.is_status_msg(msg):
            return True
        msgs.append(msg)
    return False

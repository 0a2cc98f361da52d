"""Messages a pull subscription has received but nobody has read yet.

nats-py keeps them in the subscription's pending queue and has no public way to take them
without waiting (``fetch`` sends a new pull request first). The engine needs them in two
places: a worker that stops releases (NAKs) the tasks it fetched but never started, so
another worker takes them at once instead of after the ack wait; and ``fetch_available``
hands out what is already buffered before asking the server for more.
"""

from __future__ import annotations

from nats.aio.msg import Msg
from nats.js import JetStreamContext


def take_buffered(psub: object, limit: int | None = None) -> list[Msg]:
    """Up to ``limit`` buffered messages of a pull subscription (JetStream status messages
    of earlier pull requests are dropped), without waiting."""
    sub = getattr(psub, "_sub", None)  # nats-py 2.x internals: the inbox subscription
    queue = getattr(sub, "_pending_queue", None)
    msgs: list[Msg] = []
    while queue is not None and not queue.empty() and (limit is None or len(msgs) < limit):
        msg = queue.get_nowait()
        sub._pending_size -= len(msg.data)  # nats-py's slow-consumer accounting
        if not JetStreamContext.is_status_msg(msg):
            msgs.append(msg)
    return msgs

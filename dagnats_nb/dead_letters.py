"""Reading the DEAD_LETTERS stream: steps that failed for good, newest last."""

from __future__ import annotations

import json
from typing import Any

import pandas as pd
from nats.js.errors import NotFoundError

from . import protocol as p

DLQ_COLUMNS = ["seq", "failed_at", "task", "run_id", "step_id", "map_index", "attempts", "error"]


async def read_dead_letters(js: Any, limit: int = 100) -> list[dict[str, Any]]:
    """The last ``limit`` dead letters (each the stored body plus its stream ``seq``)."""
    try:
        info = await js.stream_info(p.DEAD_STREAM)
    except NotFoundError:
        return []
    last, count = info.state.last_seq, info.state.messages
    if not count or limit <= 0:
        return []
    start = max(info.state.first_seq, last - limit + 1)
    sub = await js.subscribe(
        "dead.>",
        stream=p.DEAD_STREAM,
        ordered_consumer=True,
        config=_by_start_seq(start),
    )
    out: list[dict[str, Any]] = []
    try:
        while True:
            msg = await sub.next_msg(timeout=5)
            body = json.loads(msg.data)
            body["seq"] = msg.metadata.sequence.stream
            out.append(body)
            if msg.metadata.num_pending == 0:
                break
    finally:
        await sub.unsubscribe()
    return out[-limit:]


def _by_start_seq(seq: int) -> Any:
    from nats.js.api import ConsumerConfig, DeliverPolicy

    return ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=seq)


def dead_letters_frame(letters: list[dict[str, Any]]) -> pd.DataFrame:
    """Dead letters as a DataFrame with :data:`DLQ_COLUMNS`."""
    rows = []
    for d in letters:
        task = d.get("task") or {}
        failed = d.get("failed_at")
        rows.append(
            [
                d.get("seq"),
                pd.Timestamp(failed) if failed else None,
                task.get("task"),
                task.get("run_id"),
                task.get("step_id"),
                task.get("map_index"),
                d.get("attempts"),
                d.get("error"),
            ]
        )
    return pd.DataFrame(rows, columns=DLQ_COLUMNS)

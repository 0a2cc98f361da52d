"""The DEAD_LETTERS stream: steps that failed for good (newest last), and their replay.

Replaying a dead letter does not put its task straight back on TASK_QUEUES (the run is
``failed`` in its history, so a result would be ignored): it appends a ``step.replayed``
event to the run's history. The orchestrator then reopens the run, dispatches the failed
step again as a new attempt (and re-dispatches the steps the failure cancelled in flight),
and the run goes on. The event is idempotent per dead letter (its message id names the step
and the failed attempt), and a replay that no longer applies (the run is not failed any more)
changes nothing. The dead letter itself stays in DEAD_LETTERS (30 days) as a record.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pandas as pd
from nats.js.errors import NotFoundError

from dagnats_nb.errors import RunError
from dagnats_nb.wire import protocol

DLQ_COLUMNS = [
    "seq",
    "failed_at",
    "workflow",
    "task",
    "run_id",
    "step_id",
    "map_index",
    "attempts",
    "error",
]


async def read_dead_letters(js: Any, limit: int = 100) -> list[dict[str, Any]]:
    """The last ``limit`` dead letters (each the stored body plus its stream ``seq``)."""
    try:
        info = await js.stream_info(protocol.DEAD_STREAM)
    except NotFoundError:
        return []
    last, count = info.state.last_seq, info.state.messages
    if not count or limit <= 0:
        return []
    start = max(info.state.first_seq, last - limit + 1)
    sub = await js.subscribe(
        "dead.>",
        stream=protocol.DEAD_STREAM,
        ordered_consumer=True,
        config=_by_start_seq(start),
    )
    out: list[dict[str, Any]] = []
    try:
        while True:
            msg = await sub.next_msg(timeout=5)
            out.append(_letter(msg.data, msg.headers, msg.metadata.sequence.stream))
            if msg.metadata.num_pending == 0:
                break
    finally:
        await sub.unsubscribe()
    return out[-limit:]


def _letter(data: bytes, headers: dict[str, str] | None, seq: int) -> dict[str, Any]:
    """A dead letter as ``{"seq", "task", "error", "attempts", "failed_at"}``, from Go's form
    (the task as body, the rest in ``Dagnats-Dlq-*`` headers) or from dagnats-nb < 0.2's
    (all in a JSON body); the task's step id and map index apart."""
    try:
        body = json.loads(data)
    except ValueError:
        body = None
    h = headers or {}
    if isinstance(body, dict) and isinstance(body.get("task"), dict):  # dagnats-nb < 0.2
        letter = dict(body)
    else:
        try:
            attempts = int(h.get(protocol.DLQ_ATTEMPTS) or 0)
        except ValueError:
            attempts = 0
        letter = {
            "task": body if isinstance(body, dict) else {},
            "error": h.get(protocol.DLQ_ERROR),
            "attempts": attempts,
            "failed_at": h.get(protocol.DLQ_FAILED_AT),
        }
    task = letter["task"]
    if isinstance(task.get("step_id"), str):
        step_id, index = protocol.split_step_id(task["step_id"])
        if index is not None:
            letter["task"] = {**task, "step_id": step_id, "map_index": index}
    if not letter["task"].get("task") and h.get(protocol.DLQ_TASK):
        letter["task"] = {**letter["task"], "task": h[protocol.DLQ_TASK]}
    letter["seq"] = seq
    return letter


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
                task.get("workflow_name"),
                task.get("task"),
                task.get("run_id"),
                task.get("step_id"),
                task.get("map_index"),
                d.get("attempts"),
                d.get("error"),
            ]
        )
    return pd.DataFrame(rows, columns=DLQ_COLUMNS)


def select(
    letters: list[dict[str, Any]], workflow: str | None = None, run_id: str | None = None
) -> list[dict[str, Any]]:
    """The dead letters of ``workflow`` and/or ``run_id`` (None: any)."""
    return [
        d
        for d in letters
        if (workflow is None or (d.get("task") or {}).get("workflow_name") == workflow)
        and (run_id is None or (d.get("task") or {}).get("run_id") == run_id)
    ]


async def read_dead_letter(js: Any, seq: int) -> dict[str, Any]:
    """The dead letter stored at ``seq`` in DEAD_LETTERS (RunError when there is none)."""
    try:
        msg = await js.get_msg(protocol.DEAD_STREAM, seq)
    except NotFoundError:
        raise RunError(
            f"no dead letter with seq {seq}: list them with `dagnats dlq list` or eng.dlq()"
        ) from None
    body = _letter(msg.data, msg.headers, seq)
    if not isinstance(body.get("task"), dict) or not body["task"].get("run_id"):
        raise RunError(f"dead letter {seq} holds no task: it cannot be replayed")
    return body


def replay_event(letter: dict[str, Any]) -> protocol.Event:
    """The ``step.replayed`` event that resumes the run of ``letter`` at its failed step."""
    task = letter["task"]
    payload: dict[str, Any] = {"dead_letter_seq": letter["seq"]}
    if task.get("map_index") is not None:
        payload["map_index"] = task["map_index"]
    return protocol.Event(
        type=protocol.STEP_REPLAYED,
        run_id=task["run_id"],
        step_id=task["step_id"],
        map_index=task.get("map_index"),
        payload=payload,
        attempt_number=int(letter.get("attempts") or task.get("attempt") or 1),
    )


def describe_replay(letter: dict[str, Any]) -> str:
    task = letter["task"]
    item = f" item {task['map_index']}" if task.get("map_index") is not None else ""
    return (
        f"dead letter {letter['seq']}: run {task['run_id']} ({task.get('workflow_name')}) "
        f"step '{task['step_id']}'{item}, attempt {letter.get('attempts')}: {letter.get('error')}"
    )


async def replay(
    js: Any,
    run_status: Callable[[str], Awaitable[str | None]],
    seq: int | None,
    run: str | None,
    dry_run: bool = False,
    wait: float = 5.0,
) -> list[dict[str, Any]]:
    """Replay one dead letter (``seq``, or the newest of ``run``) of a failed run: append its
    ``step.replayed`` event, then wait up to ``wait`` s for the run to leave ``failed``.

    ``run_status(run_id)`` tells the run's status (the orchestrator's, else the KV summary).
    Returns one row: seq, run_id, workflow, step_id, map_index, attempt, replayed, status."""
    if (seq is None) == (run is None):
        raise RunError("name one dead letter to replay: its seq, or run=RUN_ID")
    if seq is not None:
        letter = await read_dead_letter(js, seq)
    else:
        letters = select(await read_dead_letters(js, 100_000), run_id=run)
        if not letters:
            raise RunError(f"run {run} has no dead letters: list them with eng.dlq()")
        letter = letters[-1]  # the newest: the failure that ended the run
    task = letter["task"]
    run_id = task["run_id"]
    status = await run_status(run_id)
    if status != "failed":
        raise RunError(
            f"run {run_id} is {status or 'unknown'}, not failed: "
            f"dead letter {letter['seq']} has nothing to resume"
        )
    row = {
        "seq": letter["seq"],
        "run_id": run_id,
        "workflow": task.get("workflow_name"),
        "step_id": task["step_id"],
        "map_index": task.get("map_index"),
        "attempt": int(letter.get("attempts") or 0) + 1,
        "replayed": False,
        "status": status,
    }
    if dry_run:
        return [row]
    event = replay_event(letter)
    await js.publish(
        protocol.history_subject(run_id), event.encode(), headers={"Nats-Msg-Id": event.msg_id}
    )
    row["replayed"] = True
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        row["status"] = await run_status(run_id)
        if row["status"] != "failed":
            break
        await asyncio.sleep(0.05)
    return [row]

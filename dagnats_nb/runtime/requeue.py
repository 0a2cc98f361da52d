"""Tasks lost before a restart: which queued steps' tasks no task queue holds.

The orchestrator sends a step's task and, right behind it, its ``step.queued`` event (not
after the task's ack: a fast worker's ``step.started`` would come first). When the server
refuses the task (a full disk or store) but takes the event, the orchestrator sends the
task again while it runs; an engine stopped or killed meanwhile leaves the step queued in
the history with its task in no queue, and the run would wait for ever. So after replay the
orchestrator asks :func:`lost` which queued steps' tasks are missing and sends them again,
with the message id they were first sent with.

Exact, not counted: a run's subject may hold messages that are not its steps' current
tasks (a workqueue stream that lost its deletes when the disk filled keeps acknowledged
tasks after a restart), so the message ids on the subjects of the runs with queued steps are
read, one request a message (0.3 ms; up to 64 at once). Nothing is read when no step is
queued, and a run whose subjects hold nothing needs no read.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from typing import Any

from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from dagnats_nb.dag.advance import queued_tasks
from dagnats_nb.wire import protocol

log = logging.getLogger("dagnats_nb.runtime.orchestrator")

_QUEUES = ((protocol.TASK_STREAM, "task.>"), (protocol.STICKY_STREAM, "sticky.>"))
READS_AT_ONCE = 64
CATCH_UP = 10.0  # seconds to apply the history to its end before sending a task again


def _queued(orch: Any, run_ids=None) -> list[protocol.TaskPayload]:
    out: list[protocol.TaskPayload] = []
    for run_id in orch.runs if run_ids is None else run_ids:
        state = orch.runs.get(run_id)
        if state is not None and not state.terminal:
            out += queued_tasks(orch.run_defs[run_id], state)
    return out


async def send_lost(orch: Any) -> None:
    """After replay: send again the tasks of queued steps that no queue holds (``orch``:
    the runtime.orchestrator.Orchestrator, which sends and re-sends tasks)."""
    try:
        missing = await lost(orch.js, _queued(orch))
        if not missing:
            return
        # A task acknowledged since replay ended has its result in the history (stored
        # before the ack): the history is applied to its end before deciding.
        end = (await orch.js.stream_info(protocol.HISTORY_STREAM)).state.last_seq
        loop = asyncio.get_running_loop()
        deadline = loop.time() + CATCH_UP
        while orch.last_seq < end and loop.time() < deadline and orch.reading:
            await asyncio.sleep(0.05)
        still = {task.msg_id for task in _queued(orch, {t.run_id for t in missing})}
    except Exception as exc:
        orch.report_fault(f"cannot check the task queues after replay: {exc}")
        return
    for task in missing:
        if task.msg_id not in still:
            continue
        log.warning("task %s in no queue (refused before a restart): sent again", task.task_id)
        orch.counters["tasks_requeued"] += 1
        try:
            subject, data = await orch._task_message(task)
        except Exception as exc:  # its large input could not be stored
            orch.report_fault(f"task {task.task_id} not sent again: {exc}")
            continue
        try:
            await orch.js.publish(subject, data, headers={"Nats-Msg-Id": task.msg_id})
        except Exception:  # still refused: again while its step waits for it
            orch._track(orch._send_again(task, subject, data))


async def lost(
    js: JetStreamContext, queued: list[protocol.TaskPayload]
) -> list[protocol.TaskPayload]:
    """Those of the ``queued`` tasks (``dag.advance.queued_tasks``) that neither TASK_QUEUES
    nor STICKY_TASKS holds."""
    if not queued:
        return []
    runs = {task.run_id for task in queued}
    places: dict[str, list[tuple[str, str, int]]] = defaultdict(list)  # by run
    for stream, subjects in _QUEUES:
        info = await js.stream_info(stream, subjects_filter=subjects)
        for subject, count in (info.state.subjects or {}).items():
            run_id = subject.rsplit(".", 1)[-1]  # {task|sticky}.{task}[.{group|worker}].{run}
            if run_id in runs:
                places[run_id].append((stream, subject, count))
    gate = asyncio.Semaphore(READS_AT_ONCE)

    async def held(stream: str, subject: str, count: int) -> set[str]:
        async with gate:
            return await _message_ids(js, stream, subject, count)

    reads = [held(*place) for run_places in places.values() for place in run_places]
    present = set().union(*await asyncio.gather(*reads))
    return [task for task in queued if task.msg_id not in present]


async def _message_ids(js: JetStreamContext, stream: str, subject: str, count: int) -> set[str]:
    """The ``Nats-Msg-Id`` of the ``count`` messages on ``subject`` (a task's own id, read
    from its body when the header is missing)."""
    out: set[str] = set()
    seq = 1
    for _ in range(count):
        try:
            msg = await js.get_msg(stream, seq=seq, subject=subject, next=True)
        except NotFoundError:  # taken meanwhile
            break
        msg_id = (msg.headers or {}).get("Nats-Msg-Id")
        if not msg_id:
            try:
                msg_id = protocol.TaskPayload.decode(msg.data, subject).msg_id
            except (ValueError, KeyError, TypeError, AttributeError):
                msg_id = ""
        out.add(msg_id)
        seq = msg.seq + 1
    return out

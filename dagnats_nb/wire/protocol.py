"""The wire format shared with dagnats: subjects, message ids, event envelope, task payload.

Every other module builds subjects and ids through this one (see WIRE.md). Choices where
WIRE.md is silent:

- Map instances carry ``map_index`` in the task payload and in their events' payload;
  their task id is ``{run_id}.{step_id}.{index}`` and their message ids insert ``i{index}``
  after the step id.
- Agent-loop iterations carry ``iteration`` in the task payload and ``.n{iteration}`` is
  appended to message ids of iteration-specific events.
- A value too large for one NATS message is stored in the ``payloads`` object store and
  replaced by ``{"$ref": "<object name>", "size": N}`` (see :func:`is_ref`).
"""

from __future__ import annotations

import re
from typing import Any

from dagnats_nb.dag.events import (
    AGENT_LOOP_ITERATION,
    MAP_COMPLETED,
    MAP_INSTANCE_COMPLETED,
    MAP_STARTED,
    NON_RETRIABLE,
    RETRIABLE,
    RETRY_AFTER,
    RUN_TERMINAL_EVENTS,
    STEP_CANCELLED,
    STEP_COMPLETED,
    STEP_CONTINUE,
    STEP_FAILED,
    STEP_QUEUED,
    STEP_REPLAYED,
    STEP_SKIPPED,
    STEP_STARTED,
    WORKFLOW_CANCELLED,
    WORKFLOW_COMPLETED,
    WORKFLOW_FAILED,
    WORKFLOW_STARTED,
    Event,
    TaskPayload,
    dumps,
    format_time,
    loads,
    now_rfc3339,
    parse_time,
    split_step_id,
    start_shape,
    started_input,
    started_workflow,
    wire_step_id,
)

HISTORY_STREAM = "WORKFLOW_HISTORY"
TASK_STREAM = "TASK_QUEUES"
DEAD_STREAM = "DEAD_LETTERS"
TELEMETRY_STREAM = "TELEMETRY"
STICKY_STREAM = "STICKY_TASKS"
EVENTS_STREAM = "EVENTS"  # what wait_for_event steps wait for: event.{type}
APPROVAL_BUCKET = "approval_tokens"  # Go's: {run}.{step} -> the open approval's token
SIGNAL_BUCKET = "signals"  # Go's: {run}.{name} -> a signal's payload
PAYLOAD_BUCKET = "payloads"
SNAPSHOT_STREAM = "DAGNATS_SNAPSHOTS"  # ours: active runs' snapshots (runtime.snapshots)

_BAD_TOKEN = re.compile(r"[.*>\s]")


def is_token(value: str) -> bool:
    """True when ``value`` can stand as one token of a NATS subject."""
    return bool(value) and not _BAD_TOKEN.search(value)


def history_subject(run_id: str) -> str:
    return f"history.{run_id}"


def history_event(data: bytes, subject: str, seq: int = 0) -> Event:
    """A history message as an event of the run its subject names; ValueError (KeyError,
    TypeError) when it is none: not an event, or forged or broken (a run id with a space,
    another run's subject)."""
    event = Event.decode(data, seq=seq)
    if subject != history_subject(event.run_id):
        raise ValueError(f"run id {event.run_id!r} does not match subject {subject}")
    return event


def stream_seq(msg: Any) -> int:
    """The stream sequence of a JetStream message, read from its reply subject without
    parsing the rest of the metadata (the orchestrator's hot path)."""
    tokens = msg.reply.split(".", 9)
    if len(tokens) == 9:  # $JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>
        return int(tokens[5])
    return msg.metadata.sequence.stream  # v2 form, with domain and account hash


def response_subject(run_id: str) -> str:
    """Where a respond step answers the HTTP request that started its run (core NATS)."""
    return f"dagnats.http.response.{run_id}"


def event_subject(event_type: str) -> str:
    """Where an external event of this type is published (Go's EVENTS stream)."""
    return f"event.{event_type}"


def task_subject(task: str, run_id: str, group: str = "") -> str:
    """A task's subject: ``task.{task}.{run_id}``, or ``task.{task}.{group}.{run_id}`` for
    a step with a ``worker_group`` (Go's)."""
    return f"task.{task}.{group}.{run_id}" if group else f"task.{task}.{run_id}"


def task_filter(task: str, group: str = "") -> str:
    """The subjects of a task type's consumer (of one worker group's, when given)."""
    return f"task.{task}.{group}.>" if group else f"task.{task}.>"


def sticky_subject(task: str, worker_id: str, run_id: str) -> str:
    """A task of a sticky run, for the worker the run is bound to (STICKY_TASKS)."""
    return f"sticky.{task}.{worker_id}.{run_id}"


def sticky_filter(task: str, worker_id: str) -> str:
    return f"sticky.{task}.{worker_id}.>"


def sticky_consumer_name(task: str, worker_id: str) -> str:
    """One worker's durable consumer of its sticky tasks of one type (kept while idle for
    STICKY_TASKS' max age, so a worker restarted with the same id finds its tasks)."""
    return f"sticky-{task}-{worker_id}"


def dead_subject(task: str, run_id: str, step_id: str) -> str:
    """A dead letter's subject, as Go writes it: ``dead.{task}.{run_id}.{step_id}``."""
    return f"dead.{task}.{run_id}.{step_id}"


# Headers of a dead letter (Go's ``Dagnats-Dlq-*``); its body is the task as it was sent.
DLQ_HEADER_PREFIX = "Dagnats-Dlq-"  # a task carrying one is a dead letter sent back
DLQ_RUN_ID = "Dagnats-Dlq-Run-Id"
DLQ_STEP_ID = "Dagnats-Dlq-Step-Id"
DLQ_TASK = "Dagnats-Dlq-Task"
DLQ_ERROR = "Dagnats-Dlq-Error"
DLQ_ATTEMPTS = "Dagnats-Dlq-Attempts"
DLQ_DELIVERY_COUNT = "Dagnats-Dlq-Delivery-Count"
DLQ_CONSUMER = "Dagnats-Dlq-Consumer"
DLQ_TASK_SUBJECT = "Dagnats-Dlq-Task-Subject"
DLQ_FAILED_AT = "Dagnats-Dlq-Failed-At"  # ours: Go reads the message's own timestamp


def dead_letter_headers(task: TaskPayload, error: str, attempts: int, failed_at: str) -> dict:
    """The headers of a dead letter of ``task`` (Go's, plus the time it failed)."""
    step = wire_step_id(task.step_id, task.map_index)
    one_line = " ".join(error.split()) or "failed"  # a header value holds no line breaks
    return {
        "Nats-Msg-Id": f"dlq:{task.run_id}:{step}:{attempts}",
        DLQ_RUN_ID: task.run_id,
        DLQ_STEP_ID: step,
        DLQ_TASK: task.task,
        DLQ_ERROR: one_line,
        DLQ_ATTEMPTS: str(attempts),
        DLQ_DELIVERY_COUNT: str(attempts),
        DLQ_CONSUMER: TASK_STREAM,
        DLQ_TASK_SUBJECT: task_subject(task.task, task.run_id, task.group),
        DLQ_FAILED_AT: failed_at,
    }


def stream_subject(run_id: str, step_id: str) -> str:
    return f"stream.{run_id}.{step_id}"


def telemetry_metric_subject(service: str, name: str) -> str:
    return f"telemetry.metrics.{service}.{name}"


def sanitize_consumer_part(value: str) -> str:
    """A task type or group as Go's ``consumername.Sanitize`` puts it in a consumer name:
    dots become ``-``, anything but ``[A-Za-z0-9_-]`` becomes ``_``."""
    return "".join(
        c if (c.isascii() and c.isalnum()) or c in "-_" else "-" if c == "." else "_" for c in value
    )


def consumer_name(task: str, group: str = "") -> str:
    """Durable consumer shared by every worker of one task type (and worker group): Go's
    ``workers-{task}[-{group}]``, so our workers and Go's share one consumer."""
    name = f"workers-{sanitize_consumer_part(task)}"
    return f"{name}-{sanitize_consumer_part(group)}" if group else name


def make_ref(name: str, size: int) -> dict[str, Any]:
    return {"$ref": name, "size": size}


def is_ref(value: Any) -> bool:
    """True for a stand-in of a value kept in the ``payloads`` object store."""
    return isinstance(value, dict) and "$ref" in value and len(value) == 2 and "size" in value


__all__ = [
    "AGENT_LOOP_ITERATION",
    "DEAD_STREAM",
    "Event",
    "HISTORY_STREAM",
    "MAP_COMPLETED",
    "MAP_INSTANCE_COMPLETED",
    "MAP_STARTED",
    "NON_RETRIABLE",
    "PAYLOAD_BUCKET",
    "SNAPSHOT_STREAM",
    "RETRIABLE",
    "RETRY_AFTER",
    "RUN_TERMINAL_EVENTS",
    "STEP_CANCELLED",
    "STEP_COMPLETED",
    "STEP_CONTINUE",
    "STEP_FAILED",
    "STEP_QUEUED",
    "STEP_REPLAYED",
    "STEP_SKIPPED",
    "STEP_STARTED",
    "STICKY_STREAM",
    "EVENTS_STREAM",
    "APPROVAL_BUCKET",
    "SIGNAL_BUCKET",
    "event_subject",
    "response_subject",
    "TASK_STREAM",
    "TELEMETRY_STREAM",
    "TaskPayload",
    "WORKFLOW_CANCELLED",
    "WORKFLOW_COMPLETED",
    "WORKFLOW_FAILED",
    "WORKFLOW_STARTED",
    "_BAD_TOKEN",
    "consumer_name",
    "sanitize_consumer_part",
    "start_shape",
    "started_input",
    "started_workflow",
    "split_step_id",
    "wire_step_id",
    "dead_letter_headers",
    "dead_subject",
    "dumps",
    "format_time",
    "loads",
    "history_event",
    "history_subject",
    "is_ref",
    "is_token",
    "make_ref",
    "now_rfc3339",
    "parse_time",
    "sticky_consumer_name",
    "sticky_filter",
    "sticky_subject",
    "stream_subject",
    "task_filter",
    "task_subject",
    "telemetry_metric_subject",
]

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
)

HISTORY_STREAM = "WORKFLOW_HISTORY"
TASK_STREAM = "TASK_QUEUES"
DEAD_STREAM = "DEAD_LETTERS"
TELEMETRY_STREAM = "TELEMETRY"
STICKY_STREAM = "STICKY_TASKS"
PAYLOAD_BUCKET = "payloads"

_BAD_TOKEN = re.compile(r"[.*>\s]")


def is_token(value: str) -> bool:
    """True when ``value`` can stand as one token of a NATS subject."""
    return bool(value) and not _BAD_TOKEN.search(value)


def history_subject(run_id: str) -> str:
    return f"history.{run_id}"


def task_subject(task: str, run_id: str) -> str:
    return f"task.{task}.{run_id}"


def task_filter(task: str) -> str:
    return f"task.{task}.>"


def sticky_subject(task: str, worker_id: str, run_id: str) -> str:
    """A task of a sticky run, for the worker the run is bound to (STICKY_TASKS)."""
    return f"sticky.{task}.{worker_id}.{run_id}"


def sticky_filter(task: str, worker_id: str) -> str:
    return f"sticky.{task}.{worker_id}.>"


def sticky_consumer_name(task: str, worker_id: str) -> str:
    """One worker's durable consumer of its sticky tasks of one type (kept while idle for
    STICKY_TASKS' max age, so a worker restarted with the same id finds its tasks)."""
    return f"sticky-{task}-{worker_id}"


def dead_subject(task: str, run_id: str) -> str:
    return f"dead.{task}.{run_id}"


def stream_subject(run_id: str, step_id: str) -> str:
    return f"stream.{run_id}.{step_id}"


def telemetry_metric_subject(service: str, name: str) -> str:
    return f"telemetry.metrics.{service}.{name}"


def consumer_name(task: str) -> str:
    """Durable consumer shared by every worker of one task type."""
    return f"worker-{task}"


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
    "TASK_STREAM",
    "TELEMETRY_STREAM",
    "TaskPayload",
    "WORKFLOW_CANCELLED",
    "WORKFLOW_COMPLETED",
    "WORKFLOW_FAILED",
    "WORKFLOW_STARTED",
    "_BAD_TOKEN",
    "consumer_name",
    "dead_subject",
    "dumps",
    "format_time",
    "loads",
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

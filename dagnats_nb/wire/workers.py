"""Entries of the ``workers`` KV bucket, as dagnats-nb and the Go dagnats write them.

dagnats-nb: ``{"worker_id", "host", "pid", "tasks": {task: {"concurrency", "inflight",
"completed", "failed"}}, "started_at", "heartbeat_at"}``. Go dagnats (``worker`` package):
``{"worker_id", "task_types": [...], "language", "transport", "max_tasks", "pid",
"hostname", "version", "last_seen"}``. Readers use :func:`read_entry`, which understands
both; what it cannot tell (a Go worker's concurrency per task) is None.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dagnats_nb.wire.protocol import parse_time


@dataclass(frozen=True, slots=True)
class WorkerEntry:
    worker_id: str
    tasks: dict[str, int | None] = field(default_factory=dict)  # task -> concurrency
    heartbeat_at: float | None = None  # POSIX seconds of the last heartbeat
    pid: int | None = None
    host: str = ""
    language: str = "python"


def read_entry(body: dict[str, Any]) -> WorkerEntry:
    """One ``workers`` KV value, in either form (see the module docstring); a field of the
    wrong type (any client may write there) is read as missing."""
    if not isinstance(body, dict):
        body = {}
    tasks: dict[str, int | None] = {}
    listed = body.get("tasks")
    for task, info in (listed if isinstance(listed, dict) else {}).items():
        tasks[task] = _concurrency(info.get("concurrency")) if isinstance(info, dict) else None
    types = body.get("task_types")
    for task in types if isinstance(types, list) else ():
        tasks.setdefault(str(task), None)
    seen = body.get("heartbeat_at") or body.get("last_seen")
    try:
        heartbeat = parse_time(seen) if seen else None
    except (TypeError, ValueError, AttributeError):  # not an RFC 3339 string
        heartbeat = None
    return WorkerEntry(
        worker_id=str(body.get("worker_id") or body.get("id") or "?"),
        tasks=tasks,
        heartbeat_at=heartbeat,
        pid=body.get("pid"),
        host=str(body.get("host") or body.get("hostname") or ""),
        language=str(body.get("language") or "python"),
    )


def _concurrency(value: Any) -> int:
    try:
        return max(0, int(value or 0))
    except (TypeError, ValueError, OverflowError):
        return 0

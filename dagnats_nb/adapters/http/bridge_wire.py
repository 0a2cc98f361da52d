"""The worker bridge's requests and answers on the wire, as dagnats' Go bridge reads and
writes them (``bridge/connect.go``, ``poll.go``, ``resolve.go``; ``protocol.TaskResolution``;
``worker.WorkerRegistration``): parsing, with one-line errors naming the field, and the JSON
the bridge stores or answers. No I/O here; :mod:`dagnats_nb.adapters.http.bridge` does it.
"""

from __future__ import annotations

import hmac
import re
from dataclasses import dataclass
from typing import Any

from dagnats_nb.adapters.http.server import BodyError, read_json
from dagnats_nb.errors import DagnatsError
from dagnats_nb.wire import protocol

MAX_TASKS = 256
DEFAULT_TIMEOUT_MS = 5000  # Go: a timeout_ms <= 0 is this
MAX_TIMEOUT_MS = 60000
MAX_PAUSE_MS = 3_600_000  # Go's pauseDurationMaxMs
# Go's engine reads a retry_after_ms <= 0 as 100 ms and caps it at an hour
# (internal/engine/retry_handlers.go scheduleRetryAfter): the bridge writes what it means.
RETRY_AFTER_MIN_MS, RETRY_AFTER_MAX_MS = 100, 3_600_000
ACTIONS = ("complete", "fail", "pause", "checkpoint", "heartbeat", "continue", "stream")
# Go's bridge has these too; they need its "signals" KV bucket, which this engine has not.
UNSUPPORTED = ("send_signal", "wait_signal")
KNOWN_FAILURE_TYPES = (protocol.RETRIABLE, protocol.NON_RETRIABLE, protocol.RETRY_AFTER)
HEARTBEAT = b"event: heartbeat\ndata: ok\n\n"  # Go's SSE heartbeat event, every 25 s
SSE_HEADERS = {
    "content-type": "text/event-stream",
    "cache-control": "no-cache",
    "connection": "keep-alive",
}
_KV_KEY = re.compile(r"^[-/_=.a-zA-Z0-9]+$")


class BridgeError(DagnatsError):
    """A bridge request the engine cannot use (answered with 400)."""


@dataclass(frozen=True, slots=True)
class PollRequest:
    task_types: tuple[str, ...]
    max_tasks: int = 1
    timeout_ms: int = DEFAULT_TIMEOUT_MS
    worker_id: str | None = None


@dataclass(frozen=True, slots=True)
class ConnectRequest:
    worker_id: str
    task_types: tuple[str, ...]
    max_tasks: int = 1


@dataclass(frozen=True, slots=True)
class Resolution:
    action: str
    output: Any = None
    error: str | None = None
    failure_type: str = protocol.RETRIABLE
    retry_after_ms: int | None = None
    duration_ms: float | None = None
    # pause: its "checkpoint"; checkpoint and stream: their "data"; as stored or published
    # (compact JSON; b"" when the field is absent, as Go stores a missing one)
    data: bytes = b""
    name: str | None = None  # pause: carried on the wire, unused (as in Go)


def bearer_ok(header: str | None, token: str | None) -> bool:
    """True when ``header`` is ``Bearer <token>`` (constant-time compare)."""
    if not header or not token:
        return False
    scheme, _, given = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(given.strip().encode(), token.encode())


def _object(body: bytes, what: str) -> dict[str, Any]:
    try:
        value = read_json(body, f"{what} body", "send a JSON object") if body.strip() else {}
    except BodyError as exc:
        raise BridgeError(str(exc)) from None
    if not isinstance(value, dict):
        raise BridgeError(f"{what} body must be a JSON object, got {type(value).__name__}")
    return value


def _integer(raw: dict, key: str, what: str) -> int | None:
    value = raw.get(key)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
        raise BridgeError(f"{what}: field '{key}' must be an integer, got {value!r}")
    return value


def _string(raw: dict, key: str, what: str) -> str | None:
    value = raw.get(key)
    if value is not None and not isinstance(value, str):
        raise BridgeError(f"{what}: field '{key}' must be a string, got {value!r}")
    return value


def _task_types(raw: dict, what: str) -> tuple[str, ...]:
    types = raw.get("task_types")
    if (
        not isinstance(types, list)
        or not types
        or not all(isinstance(t, str) and protocol.is_token(t) for t in types)
    ):
        raise BridgeError(
            f"{what}: field 'task_types' must be a non-empty list of task names, got {types!r}"
        )
    return tuple(dict.fromkeys(types))


def _at_least_one(value: int | None, default: int) -> int:
    """Go's reading of ``max_tasks`` and ``timeout_ms``: absent, 0 or less is the default."""
    return default if value is None or value <= 0 else value


def parse_poll(body: bytes) -> PollRequest:
    """A poll request; ``max_tasks`` and ``timeout_ms`` are capped, not refused, and 0 or
    less is the default (1 task, 5000 ms), as Go reads them."""
    raw = _object(body, "poll")
    types = _task_types(raw, "poll")
    n = _at_least_one(_integer(raw, "max_tasks", "poll"), 1)
    timeout = _at_least_one(_integer(raw, "timeout_ms", "poll"), DEFAULT_TIMEOUT_MS)
    worker = _string(raw, "worker_id", "poll")
    return PollRequest(types, min(n, MAX_TASKS), min(timeout, MAX_TIMEOUT_MS), worker)


def parse_connect(body: bytes) -> ConnectRequest:
    """A connect request ``{"worker_id", "task_types", "max_tasks"}`` (``max_tasks`` 0 or
    less is 1, as in Go)."""
    raw = _object(body, "connect")
    worker = raw.get("worker_id")
    if (
        not isinstance(worker, str)
        or not _KV_KEY.match(worker)
        or worker.startswith(".")
        or worker.endswith(".")
    ):
        raise BridgeError(
            "connect: field 'worker_id' must be a non-empty string of letters, digits and "
            f"- _ = / . (it keys the workers bucket), got {worker!r}"
        )
    types = _task_types(raw, "connect")
    return ConnectRequest(worker, types, _at_least_one(_integer(raw, "max_tasks", "connect"), 1))


def _json_bytes(raw: dict, key: str) -> bytes:
    return protocol.dumps(raw[key]) if key in raw else b""


def parse_resolve(body: bytes) -> Resolution:
    """A resolve request: ``complete`` and ``continue`` (``output``), ``fail`` (``error``,
    ``failure_type``, ``retry_after_ms``), ``pause`` (``duration_ms``, ``checkpoint``),
    ``checkpoint`` and ``stream`` (``data``), ``heartbeat``."""
    raw = _object(body, "resolve")
    action = raw.get("action")
    if action in UNSUPPORTED:
        raise BridgeError(
            f"action {action} is not supported by dagnats-nb (it has no signals bucket): "
            f"use {', '.join(ACTIONS)}"
        )
    if not isinstance(action, str) or action not in ACTIONS:
        raise BridgeError(
            f"resolve: field 'action' must be one of {', '.join(ACTIONS)}, got {action!r}"
        )
    error = _string(raw, "error", "resolve")
    # Go passes any failure type on; its engine (and ours) retries all but non_retriable
    # and retry_after as retriable.
    kind = _string(raw, "failure_type", "resolve") or protocol.RETRIABLE
    retry_after = _integer(raw, "retry_after_ms", "resolve")
    if kind == protocol.RETRY_AFTER:
        wait = retry_after if retry_after is not None and retry_after > 0 else RETRY_AFTER_MIN_MS
        retry_after = min(wait, RETRY_AFTER_MAX_MS)
    duration = raw.get("duration_ms")
    if action == "pause":
        if (
            isinstance(duration, bool)
            or not isinstance(duration, int)
            or not 0 < duration <= MAX_PAUSE_MS
        ):
            raise BridgeError(
                f"resolve: pause needs field 'duration_ms', an integer in (0, {MAX_PAUSE_MS}] "
                f"(when the task is delivered again), got {duration!r}"
            )
    elif duration is not None and (
        isinstance(duration, bool) or not isinstance(duration, int | float) or duration < 0
    ):
        raise BridgeError(f"resolve: field 'duration_ms' must be a number >= 0, got {duration!r}")
    data = _json_bytes(raw, "checkpoint" if action == "pause" else "data")
    name = _string(raw, "name", "resolve")
    return Resolution(action, raw.get("output"), error, kind, retry_after, duration, data, name)


def task_view(task: protocol.TaskPayload, value: Any) -> dict[str, Any]:
    """A polled task as a bridge worker sees it (``value``: the input, references expanded)."""
    out: dict[str, Any] = {
        "task_id": task.task_id,
        "run_id": task.run_id,
        "step_id": task.step_id,
        "iteration": task.iteration or 0,
        "attempt": task.attempt,
        "input": value,
    }
    if task.task:
        out["task"] = task.task
    if task.workflow_name:
        out["workflow_name"] = task.workflow_name
    if task.map_index is not None:
        out["map_index"] = task.map_index
    if task.metadata:
        out["metadata"] = task.metadata
    return out


def failure_payload(res: Resolution) -> dict[str, Any]:
    """The ``step.failed`` payload of a ``fail`` resolution: Go's ``StepFailedPayload``
    ``{error, failure_type, retry_after_ms}`` (the last when not 0)."""
    payload: dict[str, Any] = {
        "error": res.error or "failed by a bridge worker",
        "failure_type": res.failure_type,
    }
    if res.retry_after_ms:
        payload["retry_after_ms"] = res.retry_after_ms
    return payload


def registration(req: ConnectRequest) -> dict[str, Any]:
    """A connected worker's ``workers`` KV entry, as Go's bridge writes it: a
    ``worker.WorkerRegistration`` with language ``http``, transport ``bridge`` and a fresh
    ``last_seen`` (Go leaves ``pid``, ``hostname``, ``version`` out: the worker is not in
    the bridge's process)."""
    return {
        "worker_id": req.worker_id,
        "task_types": list(req.task_types),
        "language": "http",
        "transport": "bridge",
        "max_tasks": req.max_tasks,
        "last_seen": protocol.now_rfc3339(),
    }

"""Event envelope and task payload of WIRE.md as plain data (pure: no I/O).

Message-id rules where WIRE.md is silent: map instances insert ``i{index}`` after the step
id, agent-loop iterations append ``n{iteration}``; a map instance's task id is
``{run_id}.{step_id}.{index}``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson

_JSON_OPTIONS = orjson.OPT_NON_STR_KEYS


def dumps(value: Any) -> bytes:
    """Compact JSON (orjson: several times faster than the stdlib on the hot path).

    Differences from ``json.dumps`` a handler may notice: NaN and infinities become ``null``,
    integers beyond 64 bits are refused.
    """
    return orjson.dumps(value, option=_JSON_OPTIONS)


loads = orjson.loads

# Event types (WIRE.md) plus ours, in the same envelope: step.skipped, and step.replayed
# (a dead letter replayed: the failed run resumes at that step).
WORKFLOW_STARTED = "workflow.started"
WORKFLOW_COMPLETED = "workflow.completed"
WORKFLOW_FAILED = "workflow.failed"
WORKFLOW_CANCELLED = "workflow.cancelled"
STEP_QUEUED = "step.queued"
STEP_STARTED = "step.started"
STEP_COMPLETED = "step.completed"
STEP_FAILED = "step.failed"
STEP_CONTINUE = "step.continue"
STEP_CANCELLED = "step.cancelled"
STEP_SKIPPED = "step.skipped"
AGENT_LOOP_ITERATION = "agent.loop.iteration"
MAP_STARTED = "step.map.started"
MAP_INSTANCE_COMPLETED = "step.map.instance.completed"
MAP_COMPLETED = "step.map.completed"
STEP_REPLAYED = "step.replayed"

RUN_TERMINAL_EVENTS = frozenset({WORKFLOW_COMPLETED, WORKFLOW_FAILED, WORKFLOW_CANCELLED})

# Failure types of a failed step's payload.
RETRIABLE = "retriable"
NON_RETRIABLE = "non_retriable"
RETRY_AFTER = "retry_after"


def now_rfc3339() -> str:
    """The current time as RFC 3339 UTC with microseconds (``2026-11-26T11:25:32.945335Z``)."""
    return format_time(time.time())


def parse_time(value: str) -> float:
    """RFC 3339 timestamp -> POSIX seconds."""
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


_second: tuple[int, str] = (-1, "")  # the last whole second formatted, shared by threads


def format_time(ts: float) -> str:
    """POSIX seconds -> RFC 3339 UTC with microseconds. Called for every event: the
    formatted second is cached, so most calls are one f-string."""
    global _second
    secs = int(ts // 1)
    micros = round((ts - secs) * 1_000_000)
    if micros == 1_000_000:
        secs, micros = secs + 1, 0
    cached = _second
    if cached[0] != secs:
        cached = (secs, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)))
        _second = cached
    return f"{cached[1]}.{micros:06d}Z"


@dataclass(slots=True)
class Event:
    """One entry of a run's history (the event envelope of WIRE.md)."""

    type: str
    run_id: str
    timestamp: str = field(default_factory=now_rfc3339)
    step_id: str = ""
    payload: dict[str, Any] | None = None
    worker_id: str = ""
    attempt_number: int = 0
    seq: int = 0  # stream sequence, set when read back; not on the wire

    @property
    def time(self) -> float:
        return parse_time(self.timestamp)

    @property
    def map_index(self) -> int | None:
        return self.payload.get("map_index") if self.payload else None

    @property
    def iteration(self) -> int | None:
        return self.payload.get("iteration") if self.payload else None

    def to_wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type, "run_id": self.run_id}
        if self.step_id:
            out["step_id"] = self.step_id
        out["timestamp"] = self.timestamp
        if self.payload:
            out["payload"] = self.payload
        if self.worker_id:
            out["worker_id"] = self.worker_id
        if self.attempt_number:
            out["attempt_number"] = self.attempt_number
        return out

    def encode(self) -> bytes:
        return dumps(self.to_wire())

    @classmethod
    def decode(cls, data: bytes, seq: int = 0) -> Event:
        raw = loads(data)
        return cls(
            type=raw["type"],
            run_id=raw["run_id"],
            timestamp=raw.get("timestamp", ""),
            step_id=raw.get("step_id", ""),
            payload=raw.get("payload"),
            worker_id=raw.get("worker_id", ""),
            attempt_number=raw.get("attempt_number", 0),
            seq=seq,
        )

    @property
    def msg_id(self) -> str:
        """``Nats-Msg-Id`` of this event (WIRE.md), extended for map instances and loops."""
        if not self.step_id:  # a run reopened by a replay numbers its later run events
            if self.attempt_number:
                return f"{self.run_id}.{self.type}.{self.attempt_number}"
            return f"{self.run_id}.{self.type}"
        parts = [self.run_id, self.step_id]
        if self.map_index is not None:
            parts.append(f"i{self.map_index}")
        parts.append(self.type)
        if self.attempt_number:
            parts.append(str(self.attempt_number))
        if self.iteration:
            parts.append(f"n{self.iteration}")
        return ".".join(parts)


@dataclass(slots=True)
class TaskPayload:
    """One unit of work on ``task.{task}.{run_id}``."""

    run_id: str
    step_id: str
    task: str
    input: Any
    workflow_name: str
    attempt: int = 1
    iteration: int = 0
    map_index: int | None = None
    timeout_s: float | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    def_hash: str = ""  # the definition version the run follows (KV workflow_defs)

    @property
    def task_id(self) -> str:
        base = f"{self.run_id}.{self.step_id}"
        return base if self.map_index is None else f"{base}.{self.map_index}"

    @property
    def msg_id(self) -> str:
        return f"{self.task_id}.task.{self.attempt}.n{self.iteration}"

    def to_wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "task_id": self.task_id,
            "run_id": self.run_id,
            "step_id": self.step_id,
            "task": self.task,
            "iteration": self.iteration,
            "attempt": self.attempt,
            "input": self.input,
            "workflow_name": self.workflow_name,
        }
        if self.map_index is not None:
            out["map_index"] = self.map_index
        if self.timeout_s is not None:
            out["timeout_s"] = self.timeout_s
        if self.metadata:
            out["metadata"] = self.metadata
        if self.def_hash:
            out["def_hash"] = self.def_hash
        return out

    def encode(self) -> bytes:
        return dumps(self.to_wire())

    @classmethod
    def decode(cls, data: bytes) -> TaskPayload:
        raw = loads(data)
        return cls(
            run_id=raw["run_id"],
            step_id=raw["step_id"],
            task=raw.get("task", ""),
            input=raw.get("input"),
            workflow_name=raw.get("workflow_name", ""),
            attempt=raw.get("attempt", 1),
            iteration=raw.get("iteration", 0),
            map_index=raw.get("map_index"),
            timeout_s=raw.get("timeout_s"),
            metadata=raw.get("metadata") or {},
            def_hash=raw.get("def_hash", ""),
        )

"""Event envelope and task payload of WIRE.md as plain data (pure: no I/O).

Message-id rules where WIRE.md is silent: map instances insert ``i{index}`` after the step
id, agent-loop iterations append ``n{iteration}``; a map instance's task id is
``{run_id}.{step_id}.{index}``.
"""

from __future__ import annotations

import re
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
# Steps that wait without a worker (Go protocol.go): a durable timer, an event, a person.
STEP_SLEEP_STARTED = "step.sleep.started"
STEP_SLEEP_COMPLETED = "step.sleep.completed"
STEP_WAIT_STARTED = "step.wait.started"
STEP_WAIT_MATCHED = "step.wait.matched"
STEP_WAIT_TIMEOUT = "step.wait.timeout"
APPROVAL_REQUESTED = "approval.requested"
APPROVAL_GRANTED = "approval.granted"
APPROVAL_REJECTED = "approval.rejected"
APPROVAL_EXPIRED = "approval.expired"
# A sub_workflow step's child run: spawned on the parent's history, which hears of its end.
WORKFLOW_SPAWN = "workflow.spawn"
WORKFLOW_CHILD_COMPLETED = "workflow.child.completed"
WORKFLOW_CHILD_FAILED = "workflow.child.failed"
PLANNER_MATERIALIZED = "planner.materialized"  # a planner's steps joined the run
# Ours: a run that waited for concurrency.max_runs may start (Go writes no event for it).
WORKFLOW_ADMITTED = "workflow.admitted"
# A saga undone: Go declares these (and never writes them); we write them.
COMPENSATE_STARTED = "compensate.started"
COMPENSATE_STEP_COMPLETED = "compensate.step.completed"
COMPENSATE_COMPLETED = "compensate.completed"
COMPENSATE_FAILED = "compensate.failed"

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


MAP_INSTANCE = ".map."
_NOT_TOKEN = re.compile(r"[.*>\s]")  # what one token of a NATS subject cannot hold
_NOT_STEP = re.compile(r"[*>\s]")  # a step id may hold dots (a planner's `plan.step1`)


def _is_token(value: Any, refuse: re.Pattern[str] = _NOT_TOKEN) -> bool:
    """A non-empty string that can stand as one token of a NATS subject."""
    return isinstance(value, str) and value != "" and not refuse.search(value)


# The keys a step event's payload had before step events carried the raw output (runs
# started by dagnats-nb < 0.2; see ``upgrade_legacy``).
_LEGACY_KEYS = frozenset({"output", "duration_ms", "iteration", "map_index", "stopped"})
_LEGACY_STEP_EVENTS = frozenset(
    {STEP_QUEUED, STEP_STARTED, STEP_COMPLETED, STEP_CONTINUE, STEP_FAILED, MAP_INSTANCE_COMPLETED}
)


def start_shape(payload: Any) -> str:
    """Which of the ``workflow.started`` payloads Go's orchestrator accepts this is:
    ``"def"`` ``{workflow_def, input}`` (what both engines write), ``"trigger"`` (a Go
    trigger's envelope ``{trigger, workflow_id, ...}``: the definition is the registered
    one, the envelope is the input), ``"legacy"`` (dagnats-nb < 0.2: ``{workflow,
    def_hash, input}``), ``"bare"`` (a bare definition, no input)."""
    if not isinstance(payload, dict):
        return "bare"
    if "workflow_def" in payload:
        return "def"
    if payload.get("trigger") and payload.get("workflow_id"):
        return "trigger"
    if "def_hash" in payload and "workflow" in payload:
        return "legacy"
    return "bare"


def started_input(payload: Any) -> Any:
    """The run input a ``workflow.started`` payload carries (see ``start_shape``)."""
    shape = start_shape(payload)
    if shape in ("def", "legacy"):
        return payload.get("input")
    return payload if shape == "trigger" else None


def started_workflow(payload: Any) -> str:
    """The workflow name a ``workflow.started`` payload names (see ``start_shape``)."""
    shape = start_shape(payload)
    if shape == "def":
        d = payload["workflow_def"]
        return str(d.get("name", "")) if isinstance(d, dict) else ""
    if shape == "trigger":
        return str(payload["workflow_id"])
    if shape == "legacy":
        return str(payload["workflow"])
    return str(payload.get("name", "")) if isinstance(payload, dict) else ""


def split_step_id(wire_id: str) -> tuple[str, int | None]:
    """``"{step}.map.{i}"`` (a map instance, as Go writes it) -> ``(step, i)``; any other
    step id -> ``(step_id, None)``. Our step ids are NATS tokens, so never hold a dot."""
    base, sep, index = wire_id.partition(MAP_INSTANCE)
    if sep and index.isdigit():
        return base, int(index)
    return wire_id, None


def wire_step_id(step_id: str, map_index: int | None) -> str:
    return step_id if map_index is None else f"{step_id}{MAP_INSTANCE}{map_index}"


@dataclass(slots=True)
class Event:
    """One entry of a run's history, in the Go engine's envelope (``protocol.Event``).

    A map instance's events carry ``{step}.map.{i}`` as their step id on the wire (read
    back into ``step_id`` and ``map_index``). ``iteration`` is ours, an extra envelope
    field Go ignores: written for agent-loop steps only; None when the writer did not say
    (a Go worker), which the core takes as the step's current iteration. A step event's
    payload is what Go puts there: the raw output for ``step.completed`` and
    ``step.continue``, ``{error, failure_type, retry_after_ms}`` for ``step.failed``.
    Also ours: ``cache`` on a result our workers served from the cache (``{"hit": true,
    "key", "run_id", "step_id"}``: the run and step that stored it) or stored in it
    (``{"hit": false, "key"}``), and ``handler_version``, the version of the handler that
    ran (``dag.cachekey.code_version``, or the one its author gave).
    """

    type: str
    run_id: str
    timestamp: str = field(default_factory=now_rfc3339)
    step_id: str = ""
    payload: Any = None
    worker_id: str = ""
    attempt_number: int = 0
    map_index: int | None = None
    iteration: int | None = None
    seq: int = 0  # stream sequence, set when read back; not on the wire
    cache: dict[str, Any] | None = None
    handler_version: str = ""

    @property
    def time(self) -> float:
        return parse_time(self.timestamp)

    def to_wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type, "run_id": self.run_id}
        if self.step_id:
            out["step_id"] = wire_step_id(self.step_id, self.map_index)
        out["timestamp"] = self.timestamp
        if self.payload is not None:
            out["payload"] = self.payload
        if self.worker_id:
            out["worker_id"] = self.worker_id
        if self.attempt_number:
            out["attempt_number"] = self.attempt_number
        if self.iteration is not None:
            out["iteration"] = self.iteration
        if self.cache is not None:
            out["cache"] = self.cache
        if self.handler_version:
            out["handler_version"] = self.handler_version
        return out

    def encode(self) -> bytes:
        return dumps(self.to_wire())

    @classmethod
    def decode(cls, data: bytes, seq: int = 0) -> Event:
        raw = loads(data)
        step_id, index = split_step_id(raw.get("step_id") or "")
        iteration = raw.get("iteration")
        cache, version = raw.get("cache"), raw.get("handler_version")
        return cls(
            type=raw["type"],
            run_id=raw["run_id"],
            timestamp=raw.get("timestamp", ""),
            step_id=step_id,
            payload=raw.get("payload"),
            worker_id=raw.get("worker_id") or "",
            attempt_number=raw.get("attempt_number") or 0,
            map_index=index,
            iteration=iteration if isinstance(iteration, int) else None,
            seq=seq,
            cache=cache if isinstance(cache, dict) else None,
            handler_version=version if isinstance(version, str) else "",
        )

    @property
    def msg_id(self) -> str:
        """``Nats-Msg-Id`` of this event: Go's ``{run}[.{step}].{type}[.{attempt}]``, with
        ``.n{iteration}`` for later agent-loop iterations (so they are not deduplicated)."""
        if not self.step_id:  # a run reopened by a replay numbers its later run events
            if self.attempt_number:
                return f"{self.run_id}.{self.type}.{self.attempt_number}"
            return f"{self.run_id}.{self.type}"
        step = wire_step_id(self.step_id, self.map_index)
        base = f"{self.run_id}.{step}.{self.type}"
        if self.attempt_number:
            base = f"{base}.{self.attempt_number}"
        if self.iteration:
            base = f"{base}.n{self.iteration}"
        return base


def upgrade_legacy(e: Event) -> Event:
    """A step event of a run started by dagnats-nb < 0.2 in today's form: its payload was
    ``{"output": ..., "duration_ms", "iteration", "map_index", "stopped"}`` and map
    instances kept the plain step id. Applied only to such runs (their workflow.started
    has no ``workflow_def``); a payload that is not that wrapper (a newer worker's raw
    output) is left as it is."""
    p = e.payload
    if e.type not in _LEGACY_STEP_EVENTS or not isinstance(p, dict):
        return e
    if e.type == STEP_FAILED:
        payload: Any = {k: v for k, v in p.items() if k not in _LEGACY_KEYS}
    elif not p.keys() <= _LEGACY_KEYS:
        return e
    elif e.type == STEP_QUEUED or e.type == STEP_STARTED:
        payload = None
    elif "output" in p:
        payload = p["output"]
    else:
        return e
    index = p.get("map_index")
    iteration = p.get("iteration")
    return Event(
        type=STEP_COMPLETED if e.type == MAP_INSTANCE_COMPLETED else e.type,
        run_id=e.run_id,
        timestamp=e.timestamp,
        step_id=e.step_id,
        payload=payload,
        worker_id=e.worker_id,
        attempt_number=e.attempt_number,
        map_index=index if isinstance(index, int) else e.map_index,
        iteration=iteration if isinstance(iteration, int) else (e.iteration or 0),
        seq=e.seq,
    )


@dataclass(slots=True)
class TaskPayload:
    """One unit of work on ``task.{task}.{run_id}``: Go's ``protocol.TaskPayload`` plus our
    fields (``task``, ``timeout_s``, ``def_hash``), which Go's workers ignore.

    A map instance's ``step_id`` on the wire is ``{step}.map.{i}`` (its task id
    ``{run}.{step}.map.{i}``), as the Go engine sends it. ``iteration`` is None for steps
    that are not agent loops (and then left off the wire, as Go leaves a zero off)."""

    run_id: str
    step_id: str
    task: str
    input: Any
    workflow_name: str
    attempt: int = 1
    iteration: int | None = None
    map_index: int | None = None
    timeout_s: float | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    def_hash: str = ""  # the definition version the run follows
    from_go: bool = False  # sent by the Go engine (no ``task`` field): not on the wire
    group: str = ""  # the step's worker_group: in the task's subject, not in its body
    required_capabilities: list[str] = field(default_factory=list)  # Go's field

    @property
    def task_id(self) -> str:
        return f"{self.run_id}.{wire_step_id(self.step_id, self.map_index)}"

    @property
    def msg_id(self) -> str:
        return f"{self.task_id}.task.{self.attempt}.n{self.iteration or 0}"

    def to_wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "task_id": self.task_id,
            "run_id": self.run_id,
            "step_id": wire_step_id(self.step_id, self.map_index),
            "task": self.task,
            "attempt": self.attempt,
            "input": self.input,
            "workflow_name": self.workflow_name,
        }
        if self.iteration is not None:
            out["iteration"] = self.iteration
        if self.timeout_s is not None:
            out["timeout_s"] = self.timeout_s
        if self.metadata:
            out["metadata"] = self.metadata
        if self.def_hash:
            out["def_hash"] = self.def_hash
        if self.required_capabilities:
            out["required_capabilities"] = self.required_capabilities
        return out

    def encode(self) -> bytes:
        return dumps(self.to_wire())

    @classmethod
    def decode(cls, data: bytes, subject: str = "") -> TaskPayload:
        """A task as our engine or Go's writes it (``subject`` names the task type when the
        payload does not: ``task.{task}[.{group}].{run}``)."""
        raw = loads(data)
        if not isinstance(raw, dict):
            raise ValueError(f"a task must be a JSON object, got {type(raw).__name__}")
        run_id, wire_id, attempt = raw["run_id"], raw["step_id"], raw.get("attempt") or 1
        step_id, index = split_step_id(wire_id) if isinstance(wire_id, str) else ("", None)
        if not (_is_token(run_id) and _is_token(step_id, _NOT_STEP)):  # subjects, message ids
            why = f"a task's run_id and step_id must be names, got {run_id!r}, {wire_id!r}"
            raise ValueError(why[:200])
        if type(attempt) is not int or attempt < 1:
            raise ValueError(f"a task's attempt must be a positive integer, got {attempt!r}")
        timeout = raw.get("timeout_s")
        if timeout is not None and type(timeout) not in (int, float):
            raise ValueError(f"a task's timeout_s must be a number, got {timeout!r}")
        if index is None and isinstance(raw.get("map_index"), int):  # written before 0.2
            index = raw["map_index"]
        tokens = subject.split(".")  # task.{task}[.{group}].{run_id}
        task = raw.get("task") or (tokens[1] if len(tokens) >= 3 else "")
        iteration = raw.get("iteration")
        caps = raw.get("required_capabilities")
        return cls(
            run_id=run_id,
            step_id=step_id,
            task=task,
            input=raw.get("input"),
            workflow_name=raw.get("workflow_name") or "",
            attempt=attempt,
            iteration=iteration if isinstance(iteration, int) else None,
            map_index=index,
            timeout_s=timeout,
            metadata=raw.get("metadata") or {},
            def_hash=raw.get("def_hash") or "",
            from_go="task" not in raw,
            group=tokens[2] if len(tokens) == 4 else "",
            required_capabilities=[str(c) for c in caps] if isinstance(caps, list) else [],
        )

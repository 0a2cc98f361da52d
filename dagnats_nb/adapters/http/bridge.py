"""The HTTP worker bridge: workers in any language take tasks over HTTP.

``POST /v1/tasks/poll`` with ``{"task_types": [...], "max_tasks": N, "timeout_ms": T}``
(N default 1, at most 256; T default 5000, at most 60000) long-polls the same durable
consumers ``workers-{task}`` on TASK_QUEUES as in-kernel workers, so both share the queue. It
answers a JSON list of ``{"task_id", "run_id", "step_id", "iteration", "attempt", "input"}``
(plus ``task``, ``workflow_name``, ``map_index``, ``metadata`` when set); an empty list when
nothing came within T.

``POST /v1/tasks/{task_id}/resolve`` with ``{"action": "complete", "output": ...}``,
``{"action": "fail", "error": "...", "failure_type": "retriable" | "non_retriable" |
"retry_after", "retry_after_ms": N}`` or ``{"action": "heartbeat"}``. The result event is
stored in the run's history (with ``Nats-Msg-Id``) before the task is acknowledged, as an
in-kernel worker does. Unknown task id: 404; other actions: 400.

Every request needs ``Authorization: Bearer <bridge_token>`` (``DAGNATS_BRIDGE_TOKEN``),
compared in constant time (401 otherwise); with no token the routes do not exist (404).

The bridge keeps each polled task's message in memory until it is resolved. A task not
resolved within the ack wait (the ``ack_wait`` setting) is delivered again by JetStream, to
any worker: send ``heartbeat`` more often than that to keep it. A resolve that comes after
the redelivery still records its result (the message id makes a second result a duplicate).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from nats.errors import TimeoutError as NatsTimeout
from nats.js.errors import FetchTimeoutError

from dagnats_nb.adapters.http.server import Reply, Request, Route
from dagnats_nb.errors import DagnatsError
from dagnats_nb.runtime.results import output_payload, record_result
from dagnats_nb.runtime.workers import ensure_task_consumer, task_event
from dagnats_nb.transport.errors import STORE_FULL
from dagnats_nb.wire import protocol

if TYPE_CHECKING:
    from dagnats_nb.facade.engine import Engine

log = logging.getLogger("dagnats_nb.adapters.http.bridge")

MAX_TASKS = 256
DEFAULT_TIMEOUT_MS = 5000
MAX_TIMEOUT_MS = 60000
# MaxAckPending the bridge gives a task type no in-kernel worker of this engine serves (the
# consumer is created with 1 at registration; an in-kernel worker sets its concurrency).
BRIDGE_ACK_PENDING = 1024
ACTIONS = ("complete", "fail", "heartbeat")
FAILURE_TYPES = (protocol.RETRIABLE, protocol.NON_RETRIABLE, protocol.RETRY_AFTER)
SLICE = 0.25  # seconds each task type is waited on in turn when a poll names several


class BridgeError(DagnatsError):
    """A bridge request the engine cannot use (answered with 400)."""


@dataclass(frozen=True, slots=True)
class PollRequest:
    task_types: tuple[str, ...]
    max_tasks: int = 1
    timeout_ms: int = DEFAULT_TIMEOUT_MS
    worker_id: str | None = None


@dataclass(frozen=True, slots=True)
class Resolution:
    action: str
    output: Any = None
    error: str | None = None
    failure_type: str = protocol.RETRIABLE
    retry_after_ms: int | None = None
    duration_ms: float | None = None


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
        value = json.loads(body) if body.strip() else {}
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BridgeError(f"{what} body is not JSON ({exc}): send a JSON object") from None
    if not isinstance(value, dict):
        raise BridgeError(f"{what} body must be a JSON object, got {type(value).__name__}")
    return value


def _int(raw: dict, key: str, default: int | None, low: int, what: str) -> int | None:
    value = raw.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise BridgeError(f"{what}: field '{key}' must be an integer >= {low}, got {value!r}")
    return value


def parse_poll(body: bytes) -> PollRequest:
    """A poll request; ``max_tasks`` and ``timeout_ms`` are capped, not refused."""
    raw = _object(body, "poll")
    types = raw.get("task_types")
    if (
        not isinstance(types, list)
        or not types
        or not all(isinstance(t, str) and protocol.is_token(t) for t in types)
    ):
        raise BridgeError(
            f"poll: field 'task_types' must be a non-empty list of task names, got {types!r}"
        )
    n = _int(raw, "max_tasks", 1, 1, "poll")
    timeout = _int(raw, "timeout_ms", DEFAULT_TIMEOUT_MS, 0, "poll")
    worker = raw.get("worker_id")
    if worker is not None and not isinstance(worker, str):
        raise BridgeError(f"poll: field 'worker_id' must be a string, got {worker!r}")
    return PollRequest(
        tuple(dict.fromkeys(types)), min(n, MAX_TASKS), min(timeout, MAX_TIMEOUT_MS), worker
    )


def parse_resolve(body: bytes) -> Resolution:
    """A resolve request: complete (with output), fail (with error and failure type) or
    heartbeat."""
    raw = _object(body, "resolve")
    action = raw.get("action")
    if not isinstance(action, str) or not action:
        raise BridgeError(f"resolve: field 'action' must be one of {', '.join(ACTIONS)}")
    if action not in ACTIONS:
        raise BridgeError(
            f"action {action} is not supported by dagnats-nb: use {', '.join(ACTIONS)}"
        )
    error = raw.get("error")
    if error is not None and not isinstance(error, str):
        raise BridgeError(f"resolve: field 'error' must be a string, got {error!r}")
    kind = raw.get("failure_type") or protocol.RETRIABLE
    if kind not in FAILURE_TYPES:
        raise BridgeError(
            f"resolve: field 'failure_type' must be one of {', '.join(FAILURE_TYPES)}, got {kind!r}"
        )
    retry_after = _int(raw, "retry_after_ms", None, 0, "resolve")
    if action == "fail" and kind == protocol.RETRY_AFTER and retry_after is None:
        raise BridgeError("resolve: failure_type retry_after needs field 'retry_after_ms'")
    duration = raw.get("duration_ms")
    if duration is not None and (
        isinstance(duration, bool) or not isinstance(duration, int | float) or duration < 0
    ):
        raise BridgeError(f"resolve: field 'duration_ms' must be a number >= 0, got {duration!r}")
    return Resolution(action, raw.get("output"), error, kind, retry_after, duration)


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
    """The ``step.failed`` payload of a ``fail`` resolution."""
    payload: dict[str, Any] = {
        "error": res.error or "failed by a bridge worker",
        "failure_type": res.failure_type,
    }
    if res.failure_type == protocol.RETRY_AFTER:
        payload["retry_after_ms"] = res.retry_after_ms
    return payload


@dataclass(slots=True)
class Held:
    """A polled task waiting for its resolution."""

    msg: Any
    task: protocol.TaskPayload
    worker_id: str
    polled_at: float
    touched_at: float


def _error(status: int, message: str) -> Reply:
    return status, {"error": message}


_UNAUTHORIZED: Reply = (
    401,
    {"error": "missing or wrong bearer token: send Authorization: Bearer $DAGNATS_BRIDGE_TOKEN"},
    {"www-authenticate": 'Bearer realm="dagnats"'},
)


class Bridge:
    """The bridge's routes on an engine, and the tasks polled and not yet resolved."""

    def __init__(self, engine: Engine) -> None:
        self.eng = engine
        self.held: dict[str, Held] = {}
        self._subs: dict[str, Any] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._widened: set[str] = set()

    def routes(self) -> dict[tuple[str, str], Route]:
        return {
            ("POST", "/v1/tasks/poll"): Route(self.poll),
            ("POST", "/v1/tasks/{task_id}/resolve"): Route(self.resolve),
        }

    @property
    def ack_wait(self) -> float:
        return self.eng.settings.ack_wait.total_seconds()

    def _refuse(self, request: Request) -> Reply | None:
        if not bearer_ok(request.headers.get("authorization"), self.eng.settings.bridge_token):
            return _UNAUTHORIZED
        if self.eng.orchestrator is None or not self.eng._started.get("resources"):
            return _error(503, "the engine is starting: try again in a moment")
        return None

    # -- poll ----------------------------------------------------------------------------

    async def poll(self, request: Request) -> Reply:
        refused = self._refuse(request)
        if refused is not None:
            return refused
        try:
            req = parse_poll(request.body)
        except BridgeError as exc:
            return _error(400, str(exc))
        self._prune()
        worker_id = req.worker_id or f"bridge-{self.eng.worker_id}"
        msgs = await self._fetch(req)
        out = []
        for msg in msgs:
            view = await self._take(msg, worker_id)
            if view is not None:
                out.append(view)
        return 200, out  # type: ignore[return-value]  # a JSON list

    async def _sub(self, task: str) -> Any:
        sub = self._subs.get(task)
        if sub is None:
            js = self.eng._js
            durable = await ensure_task_consumer(js, task, self.ack_wait)
            if task not in self._widened and task not in self.eng.workers:
                info = await js.consumer_info(protocol.TASK_STREAM, durable)
                if (info.config.max_ack_pending or 0) < BRIDGE_ACK_PENDING:
                    await ensure_task_consumer(js, task, self.ack_wait, BRIDGE_ACK_PENDING)
            self._widened.add(task)
            sub = await js.pull_subscribe_bind(durable, stream=protocol.TASK_STREAM)
            self._subs[task] = sub
            self._locks[task] = asyncio.Lock()
        return sub

    async def _fetch(self, req: PollRequest) -> list[Any]:
        """Up to ``max_tasks`` messages of the task types; returns once any came or at the
        timeout. Several types are waited on in turn, ``SLICE`` seconds each."""
        deadline = time.monotonic() + req.timeout_ms / 1000
        got: list[Any] = []
        while True:
            for task in req.task_types:
                want = req.max_tasks - len(got)
                if want <= 0:
                    break
                sub = await self._sub(task)
                try:  # polls of one type take turns on its subscription
                    async with asyncio.timeout(max(deadline - time.monotonic(), 0) + 1):
                        async with self._locks[task]:
                            left = deadline - time.monotonic()
                            if got or left <= 0:
                                wait = 0.02  # only what is there now
                            elif len(req.task_types) == 1:
                                wait = left
                            else:
                                wait = min(left, SLICE)
                            got += await sub.fetch(want, timeout=max(wait, 0.01))
                except (TimeoutError, FetchTimeoutError, NatsTimeout):
                    pass
            if got or time.monotonic() >= deadline:
                return got

    async def _take(self, msg: Any, worker_id: str) -> dict[str, Any] | None:
        try:
            task = protocol.TaskPayload.decode(msg.data, msg.subject)
        except (ValueError, KeyError, TypeError) as exc:
            log.error("bridge: dropping malformed task on %s: %s", msg.subject, exc)
            await msg.term()
            return None
        now = time.monotonic()
        held = Held(msg, task, worker_id, now, now)
        try:
            value = await self.eng.payloads.expand(task.input)
        except Exception as exc:
            await self._report(
                held, protocol.STEP_FAILED, {"error": str(exc), "failure_type": protocol.RETRIABLE}
            )
            return None
        self.held[task.task_id] = held
        started = task_event(task, protocol.STEP_STARTED, {}, worker_id)
        with contextlib.suppress(Exception):  # shows the step as running; not needed
            fut = await self.eng._js.publish_async(
                protocol.history_subject(task.run_id),
                started.encode(),
                headers={"Nats-Msg-Id": started.msg_id},
            )
            fut.add_done_callback(_ignore)
        return task_view(task, value)

    def _prune(self) -> None:
        """Forget tasks untouched for twice the ack wait plus a minute (JetStream has
        delivered them again long since)."""
        cutoff = time.monotonic() - 2 * self.ack_wait - 60
        for task_id in [k for k, h in self.held.items() if h.touched_at < cutoff]:
            del self.held[task_id]

    # -- resolve -------------------------------------------------------------------------

    async def resolve(self, request: Request) -> Reply:
        refused = self._refuse(request)
        if refused is not None:
            return refused
        task_id = request.params.get("task_id", "")
        try:
            res = parse_resolve(request.body)
        except BridgeError as exc:
            return _error(400, str(exc))
        held = self.held.get(task_id)
        if held is None:
            return _error(
                404,
                f"no polled task {task_id}: it was resolved already, never polled, or "
                "held past the ack wait and forgotten; poll again",
            )
        if res.action == "heartbeat":
            await held.msg.in_progress()
            held.touched_at = time.monotonic()
            return 200, {"task_id": task_id, "status": "in_progress"}
        if res.action == "fail":
            kind, payload = protocol.STEP_FAILED, failure_payload(res)
        else:
            try:
                kind, payload = protocol.STEP_COMPLETED, await self._output(held.task, res.output)
            except BridgeError as exc:
                return _error(400, str(exc))
        del self.held[task_id]
        problem = await self._report(held, kind, payload)
        if problem is not None:
            self.held.setdefault(task_id, held)  # the worker may resolve it again
            return _error(503, problem)
        status = "failed" if kind == protocol.STEP_FAILED else "completed"
        return 200, {"task_id": task_id, "status": status}

    async def _output(self, task: protocol.TaskPayload, output: Any) -> Any:
        try:
            return await output_payload(self.eng.payloads, task, output)
        except (TypeError, ValueError) as exc:
            raise BridgeError(f"resolve: field 'output' cannot be stored ({exc})") from None

    async def _report(self, held: Held, kind: str, payload: Any) -> str | None:
        """Store the result event, then acknowledge the task; the problem, if any."""
        event = task_event(held.task, kind, payload, held.worker_id)
        try:
            problem = await record_result(self.eng._js, held.msg, event, self.eng._store_full)
        except Exception as exc:  # the ack: delivered again later, its result a duplicate
            log.warning("bridge: cannot acknowledge %s: %s", held.task.task_id, exc)
            return None
        if problem is not None:
            log.error("bridge: %s", problem)
            if not problem.startswith(STORE_FULL):
                problem += "; retry"
        return problem

    async def stop(self) -> None:
        """Give the held tasks back (delivered again at once) and unsubscribe."""
        for held in list(self.held.values()):
            with contextlib.suppress(Exception):
                await held.msg.nak()
        self.held.clear()
        for sub in self._subs.values():
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        self._subs.clear()


def _ignore(fut: asyncio.Future) -> None:
    if not fut.cancelled():
        fut.exception()


__all__ = [
    "Bridge",
    "BridgeError",
    "PollRequest",
    "Resolution",
    "bearer_ok",
    "parse_poll",
    "parse_resolve",
    "task_view",
]

"""The HTTP worker bridge: workers in any language take tasks over HTTP, speaking dagnats'
bridge protocol as its Go server does (``bridge/`` in the Go repository; requests are
parsed in :mod:`~dagnats_nb.adapters.http.bridge_wire`, connected workers kept in
:mod:`~dagnats_nb.adapters.http.bridge_connect`).

``POST /v1/workers/connect`` with ``{"worker_id", "task_types": [...], "max_tasks": N}``
registers the worker in the ``workers`` KV bucket under its id, in Go's registration form
(language ``http``, transport ``bridge``, ``last_seen``), and answers a server-sent-events
stream: an ``event: heartbeat`` every 25 s, each followed by a fresh put of the entry. When
the worker hangs up (or the engine stops) the entry is deleted; if the bridge dies instead,
the bucket's 60 s TTL removes it. Go's own client (``sdk/httpclient``) drops the stream
when its 30 s HTTP timeout ends, and is deregistered then, here as on Go's server.

``POST /v1/tasks/poll`` with ``{"task_types": [...], "max_tasks": N, "timeout_ms": T}``
(N default 1, at most 256; T default 5000, at most 60000; 0 or less is the default, as in
Go) long-polls the same durable consumers ``workers-{task}`` on TASK_QUEUES as in-kernel
workers, so both share the queue. It answers a JSON list of ``{"task_id", "run_id",
"step_id", "iteration", "attempt", "input"}`` (plus ``task``, ``workflow_name``,
``map_index``, ``metadata`` when set); an empty list when nothing came within T.

``POST /v1/tasks/{task_id}/resolve`` with an ``action``:

- ``complete`` (``output``), ``continue`` (``output``: the next agent-loop iteration) and
  ``fail``: the result event is stored in the run's history (with ``Nats-Msg-Id``), then
  the task is acknowledged, as an in-kernel worker does. ``fail`` writes Go's
  ``{error, failure_type, retry_after_ms}``: ``non_retriable`` fails the step at once,
  ``retry_after`` retries after ``retry_after_ms`` (absent or 0: 100 ms; at most an hour;
  as Go's engine reads it), anything else (absent: ``retriable``) by the retry policy.
- ``pause`` (``duration_ms`` in (0, 3600000], ``checkpoint``): the checkpoint is put in KV
  ``checkpoints`` under the task id (``{run_id}.{step_id}``, what Go's workers read with
  ``LoadCheckpoint``; an absent one is stored empty, as Go does) and the task is given back
  to the queue (NAK) with that delay, then delivered again, same attempt, to any worker.
  The engine is not told: the step stays running (its ``timeout``, if any, still counts)
  and nothing about the pause is in the history.
- ``checkpoint`` (``data``): put in KV ``checkpoints`` under the task id; the task's ack
  wait starts again and the task stays with the worker. The engine does not read
  checkpoints and never deletes them.
- ``stream`` (``data``): published as it is on core NATS ``stream.{run_id}.{step_id}``
  (nothing kept); the ack wait starts again.
- ``heartbeat``: the task's ack wait starts again.

Unknown task id: 404 (before the body is read, as Go); a bad request: 400 naming the field;
Go's ``send_signal`` and ``wait_signal``: 400 (this engine has no signals bucket).

Every request needs ``Authorization: Bearer <bridge_token>`` (``DAGNATS_BRIDGE_TOKEN``),
compared in constant time (401 otherwise, as Go); with no token the routes do not exist
(404; Go's bridge lets everyone in then).

The bridge keeps each polled task's message in memory until it is resolved. A task not
resolved within the ack wait (the ``ack_wait`` setting) is delivered again by JetStream, to
any worker: send ``heartbeat`` more often than that to keep it. A resolve that comes after
the redelivery still records its result (the message id makes a second result a duplicate).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from nats.errors import ConnectionClosedError
from nats.errors import TimeoutError as NatsTimeout
from nats.js.errors import FetchTimeoutError

from dagnats_nb.adapters.http.bridge_connect import HEARTBEAT_EVERY, Connection
from dagnats_nb.adapters.http.bridge_wire import (
    MAX_TASKS,
    MAX_TIMEOUT_MS,
    SSE_HEADERS,
    BridgeError,
    ConnectRequest,
    PollRequest,
    Resolution,
    bearer_ok,
    failure_payload,
    parse_connect,
    parse_poll,
    parse_resolve,
    registration,
    task_view,
)
from dagnats_nb.adapters.http.server import Reply, Request, Route, Stream
from dagnats_nb.runtime.consumers import ensure_task_consumer
from dagnats_nb.runtime.results import output_payload, record_result
from dagnats_nb.runtime.workers import task_event
from dagnats_nb.transport.errors import STORE_FULL
from dagnats_nb.wire import protocol

if TYPE_CHECKING:
    from dagnats_nb.facade.engine import Engine

log = logging.getLogger("dagnats_nb.adapters.http.bridge")

# MaxAckPending the bridge gives a task type no in-kernel worker of this engine serves (the
# consumer is created with 1 at registration; an in-kernel worker sets its concurrency).
BRIDGE_ACK_PENDING = 1024
SLICE = 0.25  # seconds each task type is waited on in turn when a poll names several
WORKERS_BUCKET = "workers"
CHECKPOINT_BUCKET = "checkpoints"
RESULTS = {
    "complete": (protocol.STEP_COMPLETED, "completed"),
    "continue": (protocol.STEP_CONTINUE, "continued"),
    "fail": (protocol.STEP_FAILED, "failed"),
}


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
    """The bridge's routes on an engine, the tasks polled and not yet resolved, and the
    workers connected."""

    def __init__(self, engine: Engine) -> None:
        self.eng = engine
        self.held: dict[str, Held] = {}
        self.connections: set[Connection] = set()
        self.heartbeat_every = HEARTBEAT_EVERY
        self._subs: dict[str, Any] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._widened: set[str] = set()
        self._kv: dict[str, Any] = {}

    def routes(self) -> dict[tuple[str, str], Route]:
        return {
            ("POST", "/v1/workers/connect"): Route(self.connect),
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

    async def _bucket(self, name: str) -> Any:
        kv = self._kv.get(name)
        if kv is None:
            kv = self._kv[name] = await self.eng._js.key_value(name)
        return kv

    # -- connect -------------------------------------------------------------------------

    async def connect(self, request: Request) -> Reply | Stream:
        refused = self._refuse(request)
        if refused is not None:
            return refused
        try:
            req = parse_connect(request.body)
        except BridgeError as exc:
            return _error(400, str(exc))
        try:
            conn = Connection(
                await self._bucket(WORKERS_BUCKET), req, self.heartbeat_every, self._gone
            )
            await conn.register()
        except Exception as exc:  # Go: 500 "register failed"
            return _error(500, f"cannot register worker {req.worker_id}: {exc}; retry")
        self.connections.add(conn)
        log.info("bridge: worker %s connected for %s", req.worker_id, ", ".join(req.task_types))
        return Stream(conn, 200, dict(SSE_HEADERS))

    def _gone(self, conn: Connection) -> None:
        self.connections.discard(conn)
        log.info("bridge: worker %s disconnected", conn.req.worker_id)

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
                except ConnectionClosedError:  # the engine is stopping
                    return got
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
            value = await self.eng.payloads.expand(task.input, task.run_id)
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
        held = self.held.get(task_id)
        if held is None:
            return _error(
                404,
                f"no polled task {task_id}: it was resolved or paused already, never polled, "
                "or held past the ack wait and forgotten; poll again",
            )
        try:
            res = parse_resolve(request.body)
        except BridgeError as exc:
            return _error(400, str(exc))
        if res.action in RESULTS:
            return await self._result(task_id, held, res)
        problem = await self._keep(held, res)
        if problem is not None:
            return _error(503, problem)
        if res.action == "pause":
            await held.msg.nak(delay=res.duration_ms / 1000)
            self.held.pop(task_id, None)
            return 200, {"task_id": task_id, "status": "paused"}
        await held.msg.in_progress()
        held.touched_at = time.monotonic()
        return 200, {"task_id": task_id, "status": "in_progress"}

    async def _keep(self, held: Held, res: Resolution) -> str | None:
        """What ``pause``, ``checkpoint`` and ``stream`` store or publish; the problem, if
        any (the task is then held as before)."""
        task_id = held.task.task_id
        try:
            if res.action in ("pause", "checkpoint"):
                await (await self._bucket(CHECKPOINT_BUCKET)).put(task_id, res.data)
            elif res.action == "stream":
                step = task_id[len(held.task.run_id) + 1 :]
                await self.eng._nc.publish(
                    protocol.stream_subject(held.task.run_id, step), res.data
                )
        except Exception as exc:
            log.error("bridge: %s of %s: %s", res.action, task_id, exc)
            return f"cannot {res.action} task {task_id}: {exc}; retry"
        return None

    async def _result(self, task_id: str, held: Held, res: Resolution) -> Reply:
        kind, status = RESULTS[res.action]
        if res.action == "fail":
            payload = failure_payload(res)
        else:
            try:
                payload = await self._output(held.task, res.output)
            except BridgeError as exc:
                return _error(400, str(exc))
        del self.held[task_id]
        problem = await self._report(held, kind, payload)
        if problem is not None:
            self.held.setdefault(task_id, held)  # the worker may resolve it again
            return _error(503, problem)
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
        """Deregister the connected workers, give the held tasks back (delivered again at
        once) and unsubscribe."""
        for conn in list(self.connections):
            await conn.aclose()
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
    "MAX_TASKS",
    "MAX_TIMEOUT_MS",
    "Bridge",
    "BridgeError",
    "Connection",
    "ConnectRequest",
    "PollRequest",
    "Resolution",
    "bearer_ok",
    "failure_payload",
    "parse_connect",
    "parse_poll",
    "parse_resolve",
    "registration",
    "task_view",
]

"""Workers pull tasks of one task type and publish the step's events. They never touch run state.

Each task type has one durable pull consumer on TASK_QUEUES (``workers-{task}``, filter
``task.{task}.>``), shared by every worker of that type in any process, with
``MaxAckPending`` = the handler's concurrency. A task is acknowledged only after its result
event is stored, so a worker that dies mid-task loses nothing: the task is delivered again
after the ack wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any

from nats.aio.client import Client as NATS
from nats.errors import TimeoutError as NatsTimeout
from nats.js import JetStreamContext
from nats.js import api as js_api
from nats.js.errors import FetchTimeoutError

from dagnats_nb.dag.events import format_time
from dagnats_nb.runtime.cache import StepCache
from dagnats_nb.runtime.consumers import add_consumer, ensure_task_consumer
from dagnats_nb.runtime.handlers import Continue, Handler, Permanent, RetryAfter, TaskContext
from dagnats_nb.runtime.results import StoreGate, deliver, record_result
from dagnats_nb.runtime.watches import Watch, Watches
from dagnats_nb.transport.pull import fetch_available, take_buffered
from dagnats_nb.transport.stores import PayloadStore
from dagnats_nb.wire import protocol

log = logging.getLogger("dagnats_nb.runtime.workers")

# A step whose handler is still running after this long gets its step.started event;
# faster steps go from queued to completed (three NATS messages fewer per step).
ANNOUNCE_AFTER = 0.02
CAPABILITY_RETRY = 2.0  # seconds before a task this worker cannot take is offered again
STICKY_IDLE = 30 * 60.0  # a worker's sticky consumer outlives it by STICKY_TASKS' max age


def new_worker_id() -> str:
    return f"{socket.gethostname().split('.')[0]}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def task_event(
    task: protocol.TaskPayload,
    kind: str,
    payload: Any,
    worker_id: str,
    extras: dict[str, Any] | None = None,
) -> protocol.Event:
    """The event a worker publishes about ``task`` (any worker: in-kernel, a worker process,
    the HTTP bridge), as Go's workers write it: the raw output (or failure) as payload, a
    map instance's step id ``{step}.map.{i}``; plus the loop iteration when the task had
    one, and our ``extras`` (``cache``, ``handler_version``)."""
    return protocol.Event(
        **(extras or {}),
        type=kind,
        run_id=task.run_id,
        step_id=task.step_id,
        payload=payload,
        worker_id=worker_id,
        attempt_number=task.attempt,
        map_index=task.map_index,
        iteration=task.iteration,
    )


def describe_error(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class TaskWorker:
    """Runs one handler over the tasks of its type."""

    def __init__(
        self,
        nc: NATS,
        js: JetStreamContext,
        payloads: PayloadStore,
        handler: Handler,
        worker_id: str,
        ack_wait: float,
        executor: Executor,
        on_fault: Callable[[str], None] | None = None,
        gate: StoreGate | None = None,
        done: Callable[[protocol.TaskPayload], bool] | None = None,
        cache: StepCache | None = None,
    ) -> None:
        self.nc = nc
        self.cache = cache  # the step cache (runtime.cache), None: nothing cached
        self.js = js
        self.payloads = payloads
        self.handler = handler
        self.worker_id = worker_id
        self.ack_wait = ack_wait
        self.executor = executor
        self.on_fault = on_fault
        self.gate = gate or StoreGate()  # closed while JetStream refuses results
        self.done, self.stale = done, 0  # done(task): its result is in (not run: stale)
        self.inflight = 0
        self.completed = 0
        self.failed = 0
        self.skipped = 0  # tasks left for a worker with the capabilities they need
        self._slots = asyncio.Semaphore(handler.concurrency)
        self._tasks: set[asyncio.Task] = set()
        self._loop_task: asyncio.Task | None = None
        self._sticky_task: asyncio.Task | None = None
        self._ssub = None
        self._stopping = False
        self._watches = Watches(self._announce, ANNOUNCE_AFTER, max(0.2, ack_wait / 3))

    async def start(self) -> None:
        durable = await ensure_task_consumer(
            self.js, self.handler.task, self.ack_wait, self.handler.concurrency, self.handler.group
        )
        self._loop = asyncio.get_running_loop()
        self._is_async = self.handler.is_async
        self._psub = await self.js.pull_subscribe_bind(durable, stream=protocol.TASK_STREAM)
        self._loop_task = asyncio.create_task(self._pull_loop(), name=f"pull-{durable}")
        self._ssub = await self._sticky_subscription()
        self._sticky_task = asyncio.create_task(self._sticky_loop(), name=f"sticky-{durable}")

    async def _sticky_subscription(self):
        """This worker's own queue on STICKY_TASKS: the tasks of runs bound to it."""
        task, wid = self.handler.task, self.worker_id
        cfg = js_api.ConsumerConfig(
            durable_name=protocol.sticky_consumer_name(task, wid),
            filter_subject=protocol.sticky_filter(task, wid),
            ack_policy=js_api.AckPolicy.EXPLICIT,
            ack_wait=self.ack_wait,
            max_ack_pending=self.handler.concurrency,
            max_deliver=-1,
            inactive_threshold=STICKY_IDLE,
        )
        await add_consumer(self.js, protocol.STICKY_STREAM, cfg)
        return await self.js.pull_subscribe_bind(cfg.durable_name, stream=protocol.STICKY_STREAM)

    async def _sticky_loop(self) -> None:
        """Take this worker's sticky tasks one at a time, each when a slot is free (the
        shared loop holds the free slots while it waits; a sticky task waits for one, and
        tells the server it is in progress meanwhile)."""
        while not self._stopping:
            try:
                msgs = await self._ssub.fetch(1, timeout=5.0)
            except (TimeoutError, FetchTimeoutError, NatsTimeout):
                continue
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("sticky fetch for task %s failed: %s", self.handler.task, exc)
                await asyncio.sleep(0.5)
                continue
            for msg in msgs:
                while True:
                    try:
                        await asyncio.wait_for(self._slots.acquire(), self.ack_wait / 3)
                        break
                    except TimeoutError:
                        with contextlib.suppress(Exception):
                            await msg.in_progress()
                    except asyncio.CancelledError:  # stopping: release it for a restart
                        with contextlib.suppress(Exception):
                            await msg.nak()
                        raise
                task = asyncio.create_task(self._run(msg))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def stop(self, drain_timeout: float = 5.0) -> None:
        """Stop pulling; give in-flight tasks ``drain_timeout`` seconds, then release them."""
        self._stopping = True
        for loop_task in (self._loop_task, self._sticky_task):
            if loop_task is not None:
                loop_task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await loop_task
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=drain_timeout)
            for t in pending:
                t.cancel()
            if pending:
                await asyncio.wait(pending, timeout=1.0)
        self._watches.close()
        with contextlib.suppress(Exception):
            await self._psub.unsubscribe()
        if self._ssub is not None:
            with contextlib.suppress(Exception):
                await self._ssub.unsubscribe()

    async def release_buffered(self) -> None:
        """NAK the tasks this stopped worker fetched but never started (still buffered in its
        pull subscriptions), so another worker takes them now rather than after the ack wait."""
        for psub in (getattr(self, "_psub", None), self._ssub):
            if psub is None:
                continue
            for msg in take_buffered(psub):
                with contextlib.suppress(Exception):
                    await msg.nak()

    async def _pull_loop(self) -> None:
        while not self._stopping:
            await self.gate.wait()
            await self._slots.acquire()
            free = 1
            while free < 256 and not self._slots.locked():  # take every free slot at once
                await self._slots.acquire()
                free += 1
            try:
                msgs = await fetch_available(self._psub, free, timeout=5.0)
            except (TimeoutError, FetchTimeoutError, NatsTimeout):
                msgs = []
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # connection trouble: back off and try again
                log.warning("fetch for task %s failed: %s", self.handler.task, exc)
                msgs = []
                await asyncio.sleep(0.5)
            for _ in range(free - len(msgs)):
                self._slots.release()
            for msg in msgs:
                task = asyncio.create_task(self._run(msg))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _run(self, msg) -> None:
        self.inflight += 1
        try:
            await self._handle(msg)
        finally:
            self.inflight -= 1
            self._slots.release()

    async def _handle(self, msg) -> None:
        try:
            task = protocol.TaskPayload.decode(msg.data, msg.subject)
        except (ValueError, KeyError, TypeError) as exc:
            log.error("dropping malformed task on %s: %s", msg.subject, exc)
            await msg.term()
            return
        if msg.headers and any(h.startswith(protocol.DLQ_HEADER_PREFIX) for h in msg.headers):
            await self._resume_dead_letter(msg, task)
            return
        if self.done is not None and self.done(task):  # an ack lost by a server (full disk)
            self.stale += 1
            log.warning("task %s delivered again after its result: not run again", task.task_id)
            with contextlib.suppress(Exception):
                await msg.ack()
            return
        missing = set(task.required_capabilities) - self.handler.capabilities
        if missing:  # left for a worker that has them
            self.skipped += 1
            if self.skipped == 1 or self.skipped % 100 == 0:
                log.warning(
                    "task %s needs capabilities %s this worker lacks (it has %s): left for "
                    "another worker (%d so far)",
                    task.task_id,
                    ", ".join(sorted(missing)),
                    ", ".join(sorted(self.handler.capabilities)) or "none",
                    self.skipped,
                )
            await msg.nak(delay=CAPABILITY_RETRY)
            return
        # The Go engine counts attempts from step.started: its tasks announce at once.
        watch = self._watches.watch(msg, task, at_once=task.from_go)
        try:
            result, extras = await self._execute(task, msg)
        except asyncio.CancelledError:
            if self._stopping:  # released for another worker, not failed
                with contextlib.suppress(Exception):
                    await msg.nak()
            raise
        finally:
            watch.cancel()
        await watch.announced()  # a step.started that went out precedes the result
        await self._report(msg, task, result, extras)

    async def _resume_dead_letter(self, msg, task: protocol.TaskPayload) -> None:
        """A dead letter sent back to its task subject (Go's ``dagnats dlq replay``): the
        run resumes at that step as with our own replay, through a ``step.replayed`` event;
        the orchestrator then dispatches the next attempt, so this copy is not run."""
        event = protocol.Event(
            type=protocol.STEP_REPLAYED,
            run_id=task.run_id,
            step_id=task.step_id,
            map_index=task.map_index,
            payload={"resent_to": msg.subject},
            attempt_number=task.attempt,
        )
        problem = await record_result(self.js, msg, event, self.on_fault)
        if problem is not None:
            log.error("%s; dead letter of %s will be read again", problem, task.task_id)
            with contextlib.suppress(Exception):
                await msg.nak(delay=1.0)

    async def _execute(self, task: protocol.TaskPayload, msg) -> tuple[tuple, dict[str, Any]]:
        """Run the handler on one task (or serve it from the step cache): the result event's
        type and payload, and the payload's encoded size when it is an output (stored aside
        when too large); and the event's extra fields (``cache``, ``handler_version``)."""
        extras: dict[str, Any] = {"handler_version": self.handler.version}
        kind, payload = await self._outcome(task, msg, extras)
        if kind == protocol.STEP_FAILED:
            return (kind, payload, None), extras
        try:
            return (kind, payload, len(protocol.dumps(payload))), extras
        except (TypeError, ValueError) as exc:
            err = (
                f"step '{task.step_id}' returned a value that is not JSON-serialisable "
                f"({exc}): return dicts, lists, strings, numbers, booleans or None"
            )
            extras.pop("cache", None)
            failed = {"error": err, "failure_type": protocol.NON_RETRIABLE}
            return (protocol.STEP_FAILED, failed, None), extras

    async def _outcome(
        self, task: protocol.TaskPayload, msg, extras: dict[str, Any]
    ) -> tuple[str, Any]:
        try:
            value = await self.payloads.expand(task.input, task.run_id)
        except Exception as exc:
            return protocol.STEP_FAILED, failure(exc, protocol.RETRIABLE)
        look = await self.cache.lookup(task, self.handler, value) if self.cache else None
        if look is not None and look.entry is not None:  # a hit: no handler call
            extras["cache"] = self.cache.served(look)
            if self.handler.cache_served is not None:
                self.handler.cache_served(task, look.entry["output"])
            return protocol.STEP_COMPLETED, look.entry["output"]
        ctx = TaskContext(
            input=value,
            run_id=task.run_id,
            step_id=task.step_id,
            task=self.handler.task,
            attempt=task.attempt,
            iteration=task.iteration or 0,
            workflow_name=task.workflow_name,
            worker_id=self.worker_id,
            map_index=task.map_index,
            metadata=task.metadata,
            def_hash=task.def_hash,
            _beat=functools.partial(self._beat_now, msg),
        )
        t0 = time.perf_counter()
        try:
            result = await self._call(ctx, task.timeout_s)
        except TimeoutError:
            err = f"step '{task.step_id}' timed out after {task.timeout_s:g}s"
            return protocol.STEP_FAILED, {"error": err, "failure_type": protocol.RETRIABLE}
        except Permanent as exc:
            return protocol.STEP_FAILED, failure(exc, protocol.NON_RETRIABLE)
        except RetryAfter as exc:
            payload = failure(exc, protocol.RETRY_AFTER)
            payload["retry_after_ms"] = int(exc.seconds * 1000)
            return protocol.STEP_FAILED, payload
        except Exception as exc:
            return protocol.STEP_FAILED, failure(exc, protocol.RETRIABLE)
        if isinstance(result, Continue):
            return protocol.STEP_CONTINUE, result.output
        if look is not None:  # a miss: stored for the next time
            stored = await self.cache.store(look, task, result, time.perf_counter() - t0)
            if stored is not None:
                extras["cache"] = stored
        return protocol.STEP_COMPLETED, result

    async def _call(self, ctx: TaskContext, timeout: float | None) -> Any:
        fn = self.handler.fn
        if self._is_async:
            coro = fn(ctx)
        else:
            loop = asyncio.get_running_loop()
            coro = loop.run_in_executor(self.executor, fn, ctx)
        if timeout:
            return await asyncio.wait_for(coro, timeout)
        return await coro

    def _event(
        self, task: protocol.TaskPayload, kind: str, payload: Any, extras: dict | None = None
    ) -> protocol.Event:
        return task_event(task, kind, payload, self.worker_id, extras)

    async def _report(
        self, msg, task: protocol.TaskPayload, result: tuple, extras: dict | None = None
    ) -> None:
        """Store the result event, then acknowledge the task (never the other way round);
        a result JetStream refuses is held and stored again (``results.deliver``)."""
        stored = await deliver(
            self.js,
            self.payloads,
            msg,
            task,
            result,
            functools.partial(self._event, task, extras=extras),
            gate=self.gate,
            ack_wait=self.ack_wait,
            on_fault=self.on_fault,
            stopping=lambda: self._stopping,
        )
        if not stored:
            return
        if result[0] == protocol.STEP_FAILED:
            self.failed += 1
        else:
            self.completed += 1

    async def _announce(self, watch: Watch) -> None:
        """Publish the task's ``step.started`` without waiting for the ack, but in order on
        the wire (before the result)."""
        started = {"timestamp": format_time(watch.started)}
        event = self._event(watch.task, protocol.STEP_STARTED, None, started)
        try:
            fut = await self.js.publish_async(
                protocol.history_subject(event.run_id),
                event.encode(),
                headers={"Nats-Msg-Id": event.msg_id},
            )
        except Exception as exc:
            log.warning("cannot announce %s: %s", event.type, exc)
            return
        fut.add_done_callback(_ignore_result)

    def _beat_now(self, msg) -> None:
        """``ctx.heartbeat()``: callable from the engine loop or a handler thread."""
        asyncio.run_coroutine_threadsafe(msg.in_progress(), self._loop)


def _ignore_result(fut: asyncio.Future) -> None:
    if not fut.cancelled():
        fut.exception()


def failure(exc: BaseException, kind: str) -> dict[str, Any]:
    return {"error": describe_error(exc), "failure_type": kind}

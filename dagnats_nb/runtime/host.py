"""The task workers of one process — the engine's own, or a worker process's: one
:class:`TaskWorker` per handler, registered and heartbeating in the ``workers`` KV."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from concurrent.futures import Executor

from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from dagnats_nb.errors import DagnatsError
from dagnats_nb.runtime.cache import StepCache
from dagnats_nb.runtime.handlers import Handler
from dagnats_nb.runtime.registry import WorkerRegistry
from dagnats_nb.runtime.results import StoreGate
from dagnats_nb.runtime.workers import TaskWorker
from dagnats_nb.transport.stores import PayloadStore
from dagnats_nb.wire.protocol import TaskPayload

log = logging.getLogger("dagnats_nb.runtime.host")


class WorkerHost:
    """Hosts task workers on one connection: add, replace, pause and stop them."""

    def __init__(
        self,
        nc: NATS,
        js: JetStreamContext,
        payloads: PayloadStore,
        worker_id: str,
        executor: Executor,
        on_fault: Callable[[str], None] | None = None,
        done: Callable[[TaskPayload], bool] | None = None,
    ) -> None:
        self.nc, self.js, self.payloads = nc, js, payloads
        self.done = done  # a task whose step no longer waits for it (see TaskWorker)
        self.worker_id = worker_id
        self.executor = executor
        self.on_fault = on_fault
        self.workers: dict[str, TaskWorker] = {}
        self.gate = StoreGate()  # closed while JetStream refuses results: no new fetches
        self.registry = WorkerRegistry(js, worker_id)
        self.cache: StepCache | None = None  # the step cache its workers use (runtime.cache)

    async def start(self) -> None:
        """Register this process in the ``workers`` KV and heartbeat there."""
        await self.registry.start()

    async def add(self, handler: Handler, ack_wait: float) -> TaskWorker:
        """Start a worker for ``handler`` (replacing this process's worker of its task)."""
        old = self.workers.get(handler.task)
        if old is not None and old.handler.group != handler.group:
            was = f"worker group '{old.handler.group}'" if old.handler.group else "no group"
            raise DagnatsError(
                f"task '{handler.task}' is served here with {was}: a work queue gives its "
                "subjects to one consumer, so serve a task type either by worker groups or "
                "without one"
            )
        old = self.workers.pop(handler.task, None)
        if old is not None:
            await old.stop(drain_timeout=1.0)
        worker = TaskWorker(
            self.nc,
            self.js,
            self.payloads,
            handler,
            self.worker_id,
            ack_wait,
            self.executor,
            on_fault=self.on_fault,
            gate=self.gate,
            done=self.done,
            cache=self.cache,
        )
        await worker.start()
        self.workers[handler.task] = worker
        self.registry.tasks[handler.task] = worker
        return worker

    async def stop_workers(self, drain_timeout: float, forget: bool = True) -> list[Handler]:
        """Stop every worker (in-flight tasks get ``drain_timeout`` seconds; tasks fetched but
        not started are released to other workers at once); their handlers, to add again.
        ``forget`` False keeps the stopped workers in ``workers`` (their counters)."""
        workers = list(self.workers.values())
        results = await asyncio.gather(
            *(w.stop(drain_timeout=drain_timeout) for w in workers), return_exceptions=True
        )
        for result in results:
            if isinstance(result, BaseException):
                log.debug("worker stop: %s", result)
        for w in workers:
            await w.release_buffered()
        if forget:
            self.workers.clear()
            self.registry.tasks.clear()
        return [w.handler for w in workers]

    async def stop(self, drain_timeout: float, deregister: bool = True) -> None:
        """Stop every worker, then leave the ``workers`` KV (``deregister``)."""
        await self.stop_workers(drain_timeout, forget=False)
        if self.cache is not None and deregister:  # online: its counters a last time
            with contextlib.suppress(Exception):
                await self.cache.close()
        if deregister:
            with contextlib.suppress(Exception):
                await self.registry.stop()
        else:
            self.registry.cancel()

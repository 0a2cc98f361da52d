"""This process's workers in the ``workers`` KV bucket: what each task type serves, re-put
every 30 s (the bucket's TTL is 60 s), in a form both our tables and Go's ``dagnats
workers list`` read."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
from typing import TYPE_CHECKING

from nats.js import JetStreamContext

from dagnats_nb.wire import protocol

if TYPE_CHECKING:
    from dagnats_nb.runtime.workers import TaskWorker

log = logging.getLogger("dagnats_nb.runtime.workers")

HEARTBEAT_EVERY = 30.0  # seconds between puts to the workers KV (its TTL is 60 s)


class WorkerRegistry:
    """Registers this process's workers in the ``workers`` KV bucket, re-put every 30 s."""

    def __init__(self, js: JetStreamContext, worker_id: str) -> None:
        self.js = js
        self.worker_id = worker_id
        self.started_at = protocol.now_rfc3339()
        self.tasks: dict[str, TaskWorker] = {}
        self._task: asyncio.Task | None = None
        self._kv = None

    async def start(self) -> None:
        self._kv = await self.js.key_value("workers")
        await self.beat()
        self._task = asyncio.create_task(self._loop())

    async def beat(self) -> None:
        if self._kv is None:
            return
        body = {
            "worker_id": self.worker_id,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "tasks": {
                name: {
                    "concurrency": w.handler.concurrency,
                    "inflight": w.inflight,
                    "completed": w.completed,
                    "failed": w.failed,
                    "capabilities": sorted(w.handler.capabilities),
                }
                for name, w in self.tasks.items()
            },
            "capabilities": sorted(
                set().union(*(w.handler.capabilities for w in self.tasks.values()))
            ),
            "started_at": self.started_at,
            "heartbeat_at": protocol.now_rfc3339(),
        }
        # Go's WorkerRegistration fields, so `dagnats workers list` shows what we serve.
        body |= {
            "task_types": sorted(self.tasks),
            "language": "python",
            "transport": "nats",
            "max_tasks": sum(w.handler.concurrency for w in self.tasks.values()),
            "hostname": body["host"],
            "last_seen": body["heartbeat_at"],
        }
        await self._kv.put(self.worker_id, json.dumps(body).encode())

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_EVERY)
            try:
                await self.beat()
            except Exception as exc:
                log.warning("worker heartbeat failed: %s", exc)

    def cancel(self) -> None:
        """Stop heartbeating (the entry expires by the bucket's TTL)."""
        if self._task is not None:
            self._task.cancel()

    async def stop(self) -> None:
        """Stop heartbeating and remove this process's entry."""
        self.cancel()
        if self._kv is not None:
            with contextlib.suppress(Exception):
                await self._kv.delete(self.worker_id)

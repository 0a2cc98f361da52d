"""A worker connected to the bridge (``POST /v1/workers/connect``), as Go's bridge keeps
one (``bridge/connect.go``): its entry in the ``workers`` KV bucket and its server-sent
events stream."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from dagnats_nb.adapters.http.bridge_wire import HEARTBEAT, ConnectRequest, registration
from dagnats_nb.wire import protocol

log = logging.getLogger("dagnats_nb.adapters.http.bridge")

HEARTBEAT_EVERY = 25.0  # Go's heartbeatIntervalMs
DEREGISTER_TIMEOUT = 5.0  # Go's Directory.Deregister timeout


class Connection:
    """A connected worker's SSE stream (what ``Stream`` iterates): a heartbeat every
    ``every`` seconds, after each a fresh put of its ``workers`` entry (best effort: the
    TTL ends the entry if puts fail); ``aclose`` deletes the entry, once."""

    def __init__(
        self, kv: Any, req: ConnectRequest, every: float, gone: Callable[[Connection], None]
    ) -> None:
        self.kv, self.req, self.every, self._gone = kv, req, every, gone
        self.beats = 0
        self.closed = False

    async def register(self) -> None:
        await self.kv.put(self.req.worker_id, protocol.dumps(registration(self.req)))

    def __aiter__(self) -> Connection:
        return self

    async def __anext__(self) -> bytes:
        if self.beats:  # the heartbeat before this one is written: put the entry again
            try:
                await self.register()
            except Exception as exc:
                log.warning("bridge: cannot refresh worker %s: %s", self.req.worker_id, exc)
        await asyncio.sleep(self.every)
        self.beats += 1
        return HEARTBEAT

    async def aclose(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._gone(self)
        try:
            await asyncio.wait_for(self.kv.delete(self.req.worker_id), DEREGISTER_TIMEOUT)
        except Exception as exc:  # the entry expires with the bucket's TTL
            log.warning("bridge: cannot deregister worker %s: %s", self.req.worker_id, exc)

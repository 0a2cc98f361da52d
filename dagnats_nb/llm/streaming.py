"""Reading a streaming step's tokens live from ``stream.{run_id}.{step_id}`` (core NATS:
nothing is kept, so only tokens sent after subscribing arrive; the whole text is in the
step's output)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import queue
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TYPE_CHECKING, Any

from dagnats_nb.wire import protocol

from ..dag.state import STEP_TERMINAL

if TYPE_CHECKING:
    from dagnats_nb.facade.engine import Engine

_POLL = 0.1


def subscribe_tokens(
    engine: Engine, run_id: str, step_id: str, callback: Callable[[dict[str, Any]], None]
) -> Callable[[], None]:
    """Call ``callback(chunk)`` on the engine thread for every message a streaming step sends
    (``{"delta", "seq", "attempt"[, "map_index"]}``, and ``{"done": true, ...}`` at the end
    of each attempt); returns ``unsubscribe()``. For live views: keep the callback quick."""
    sub = engine._call(_subscribe(engine, run_id, step_id, callback))

    def unsubscribe() -> None:
        if engine.running:
            engine._call(_unsubscribe(sub))

    return unsubscribe


async def _subscribe(engine: Engine, run_id: str, step_id: str, callback) -> Any:
    async def on_msg(msg) -> None:
        try:
            chunk = json.loads(msg.data)
        except ValueError:
            return
        if isinstance(chunk, dict):
            callback(chunk)

    return await engine._nc.subscribe(protocol.stream_subject(run_id, step_id), cb=on_msg)


async def _unsubscribe(sub: Any) -> None:
    with contextlib.suppress(Exception):  # already closed with the connection
        await sub.unsubscribe()


class TokenStream:
    """The tokens of one step as they arrive: iterate it (``for``) or ``async for`` it.

    Ends when the step's attempt ends well (for one ``map_index`` of a map step, when that
    instance's does), when the step or the run is over, or after ``timeout`` seconds."""

    def __init__(
        self,
        engine: Engine,
        run_id: str,
        step_id: str,
        *,
        map_index: int | None = None,
        timeout: float | None = None,
    ) -> None:
        self.engine, self.run_id, self.step_id = engine, run_id, step_id
        self.map_index = map_index
        self.timeout = timeout

    def _ends(self, chunk: dict[str, Any]) -> bool:
        if not chunk.get("done") or chunk.get("error"):
            return False
        if self.map_index is None:
            return "map_index" not in chunk
        return chunk.get("map_index") == self.map_index

    def _wanted(self, chunk: dict[str, Any]) -> bool:
        return self.map_index is None or chunk.get("map_index") == self.map_index

    def _over(self) -> bool:
        summary = self.engine.run_state(self.run_id)
        if summary is None:
            return False
        if summary["status"] in ("completed", "failed", "cancelled"):
            return True
        state = summary.get("state")
        return state is not None and state.step(self.step_id).status in STEP_TERMINAL

    def __iter__(self) -> Iterator[str]:
        q: queue.SimpleQueue[dict[str, Any]] = queue.SimpleQueue()
        unsubscribe = subscribe_tokens(self.engine, self.run_id, self.step_id, q.put)
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        try:
            over = False
            while True:
                try:
                    chunk = q.get(timeout=_POLL)
                except queue.Empty:
                    if over or (deadline is not None and time.monotonic() > deadline):
                        return
                    over = self._over()  # one more pass drains what is already queued
                    continue
                if self._ends(chunk):
                    return
                if "delta" in chunk and self._wanted(chunk):
                    yield chunk["delta"]
        finally:
            unsubscribe()

    async def __aiter__(self) -> AsyncIterator[str]:
        loop = asyncio.get_running_loop()
        q: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

        def put(chunk: dict[str, Any]) -> None:
            loop.call_soon_threadsafe(q.put_nowait, chunk)

        sub = await self.engine._call_async(_subscribe(self.engine, self.run_id, self.step_id, put))
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        try:
            over = False
            while True:
                try:
                    chunk = await asyncio.wait_for(q.get(), _POLL)
                except TimeoutError:
                    if over or (deadline is not None and time.monotonic() > deadline):
                        return
                    over = await asyncio.to_thread(self._over)
                    continue
                if self._ends(chunk):
                    return
                if "delta" in chunk and self._wanted(chunk):
                    yield chunk["delta"]
        finally:
            if self.engine.running:
                await self.engine._call_async(_unsubscribe(sub))

"""A streaming step's tokens, live from ``stream.{run_id}.{step_id}`` (core NATS: nothing is
kept, so only tokens sent after subscribing arrive; the whole text is in the step's output).

:func:`subscribe` runs on the engine loop (``eng.subscribe_tokens`` is its public face);
:class:`TokenStream` (``run.stream(step_id)``) iterates the tokens, sync or async, through
the narrow :class:`TokenSource` the engine provides. What a chunk means is
``dagnats_nb.llm.streaming``'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, Protocol

from dagnats_nb.dag.state import RUN_TERMINAL, STEP_TERMINAL
from dagnats_nb.llm.streaming import decode_chunk, ends_stream, token_of
from dagnats_nb.wire import protocol

_POLL = 0.1
_closing: set[asyncio.Task] = set()  # unsubscriptions under way (a task needs a reference)

Callback = Callable[[dict[str, Any]], None]


class TokenSource(Protocol):
    """What reading a step's tokens needs of the engine."""

    def run_state(self, run_id: str) -> dict[str, Any] | None: ...

    async def run_state_async(self, run_id: str) -> dict[str, Any] | None: ...

    def subscribe_tokens(
        self, run_id: str, step_id: str, callback: Callback
    ) -> Callable[[], None]: ...

    async def subscribe_tokens_async(
        self, run_id: str, step_id: str, callback: Callback
    ) -> Callable[[], None]: ...


async def subscribe(nc: Any, run_id: str, step_id: str, callback: Callback) -> Callable[[], None]:
    """On the engine loop: call ``callback(chunk)`` there for every chunk the step sends;
    returns ``unsubscribe()``, callable from any thread or loop. It returns at once (the
    unsubscription is done on the engine loop): a chunk already on its way may still come."""
    loop = asyncio.get_running_loop()

    async def on_msg(msg: Any) -> None:
        chunk = decode_chunk(msg.data)
        if chunk is not None:
            callback(chunk)

    sub = await nc.subscribe(protocol.stream_subject(run_id, step_id), cb=on_msg)

    def close() -> None:
        task = asyncio.ensure_future(_unsubscribe(sub))
        _closing.add(task)
        task.add_done_callback(_closing.discard)

    def unsubscribe() -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed, the subscription too
            loop.call_soon_threadsafe(close)

    return unsubscribe


async def _unsubscribe(sub: Any) -> None:
    with contextlib.suppress(Exception):  # already closed with the connection
        await sub.unsubscribe()


class TokenStream:
    """The tokens of one step as they arrive: iterate it (``for``) or ``async for`` it.

    Ends when the step's attempt ends well (for one ``map_index`` of a map step, when that
    instance's does), when the step or the run is over, or after ``timeout`` seconds."""

    def __init__(
        self,
        source: TokenSource,
        run_id: str,
        step_id: str,
        *,
        map_index: int | None = None,
        timeout: float | None = None,
    ) -> None:
        self.source, self.run_id, self.step_id = source, run_id, step_id
        self.map_index = map_index
        self.timeout = timeout

    def _over(self, summary: dict[str, Any] | None) -> bool:
        """The run ended, or the step did: no token will come."""
        if summary is None:
            return False
        if summary["status"] in RUN_TERMINAL:
            return True
        state = summary.get("state")
        return state is not None and state.step(self.step_id).status in STEP_TERMINAL

    def _read(self, chunk: dict[str, Any]) -> tuple[bool, str | None]:
        """Whether ``chunk`` ends this stream, and the token it carries for it (if any)."""
        if ends_stream(chunk, self.map_index):
            return True, None
        return False, token_of(chunk, self.map_index)

    def __iter__(self) -> Iterator[str]:
        q: queue.SimpleQueue[dict[str, Any]] = queue.SimpleQueue()
        unsubscribe = self.source.subscribe_tokens(self.run_id, self.step_id, q.put)
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        try:
            over = False
            while True:
                try:
                    chunk = q.get(timeout=_POLL)
                except queue.Empty:
                    if over or (deadline is not None and time.monotonic() > deadline):
                        return
                    # one more pass drains what is already queued
                    over = self._over(self.source.run_state(self.run_id))
                    continue
                end, token = self._read(chunk)
                if end:
                    return
                if token is not None:
                    yield token
        finally:
            unsubscribe()

    async def __aiter__(self) -> AsyncIterator[str]:
        loop = asyncio.get_running_loop()
        q: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

        def put(chunk: dict[str, Any]) -> None:
            with contextlib.suppress(RuntimeError):  # this loop ended before unsubscribing
                loop.call_soon_threadsafe(q.put_nowait, chunk)

        unsubscribe = await self.source.subscribe_tokens_async(self.run_id, self.step_id, put)
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        try:
            over = False
            while True:
                try:
                    chunk = await asyncio.wait_for(q.get(), _POLL)
                except TimeoutError:
                    if over or (deadline is not None and time.monotonic() > deadline):
                        return
                    over = self._over(await self.source.run_state_async(self.run_id))
                    continue
                end, token = self._read(chunk)
                if end:
                    return
                if token is not None:
                    yield token
        finally:
            unsubscribe()

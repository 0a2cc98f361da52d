"""The engine's own asyncio loop on a daemon thread, and the bridge to call it from sync code.

Works the same in Jupyter, IPython, scripts and pytest, with no patching of the caller's
loop: sync calls block on a ``run_coroutine_threadsafe`` future, async twins await it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from dagnats_nb.errors import DagnatsError

T = TypeVar("T")


class LoopThread:
    """One event loop running on one daemon thread until :meth:`close`."""

    def __init__(self, name: str = "dagnats-engine") -> None:
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.thread.start()
        self._ready.wait()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(self._ready.set)
        self.loop.run_forever()
        pending = asyncio.all_tasks(self.loop)
        for task in pending:
            task.cancel()
        if pending:
            self.loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        self.loop.close()

    @property
    def alive(self) -> bool:
        return self.thread.is_alive() and not self.loop.is_closed()

    def in_loop(self) -> bool:
        return threading.current_thread() is self.thread

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        if not self.alive:
            coro.close()
            raise DagnatsError("the engine is stopped: start it again with Engine.start()")
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def call(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coro`` on the engine loop and block until it returns."""
        if self.in_loop():
            coro.close()
            raise DagnatsError(
                "a blocking engine method was called from the engine's own thread "
                "(inside an async handler?): use its *_async twin and await it"
            )
        fut = self.submit(coro)
        try:
            return fut.result(timeout)
        except KeyboardInterrupt:
            fut.cancel()
            raise
        except concurrent.futures.TimeoutError:
            fut.cancel()
            raise

    async def call_async(self, coro: Coroutine[Any, Any, T]) -> T:
        """Await ``coro`` on the engine loop from any other loop (or the same one)."""
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self.loop:
            return await coro
        return await asyncio.wrap_future(self.submit(coro))

    def close(self, timeout: float = 10.0) -> None:
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        if not self.in_loop():
            self.thread.join(timeout)

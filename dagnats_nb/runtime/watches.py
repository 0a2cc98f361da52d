"""What a worker does around its running tasks, on one timer for all of them, so the many
sub-millisecond tasks cost two deque appends and no timer of their own:

- after ``announce_after`` seconds (at once for a Go engine's task) a task still running
  gets its step's ``step.started`` event, with the time its handler started, so a step that
  runs long shows as running;
- every ``every`` seconds from then on the server hears the task is still in progress.

Both delays are the same for every task of a worker, so each queue is in due order: the
timer is armed for the earliest head, and a finished task is dropped when it reaches a
head, never searched for.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any


class Watch:
    """One running task: ``cancel`` when its handler returns, then ``announced``."""

    __slots__ = ("msg", "task", "started", "done", "sending")

    def __init__(self, msg: Any, task: Any) -> None:
        self.msg, self.task = msg, task
        self.started = time.time()  # when the handler started (the step.started's time)
        self.done = False
        self.sending: asyncio.Task | None = None

    def cancel(self) -> None:
        self.done = True

    async def announced(self) -> None:
        """Wait for its ``step.started``, when one went out (it precedes the result)."""
        if self.sending is not None:
            await self.sending


class Watches:
    """The watches of one worker's running tasks (see the module docstring)."""

    def __init__(
        self,
        announce: Callable[[Watch], Awaitable[None]],
        announce_after: float,
        every: float,
    ) -> None:
        self._announce = announce
        self.announce_after = announce_after
        self.every = every
        self._to_announce: deque[tuple[float, Watch]] = deque()
        self._to_beat: deque[tuple[float, Watch]] = deque()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0

    def watch(self, msg: Any, task: Any, at_once: bool = False) -> Watch:
        """Watch a task (its message and payload) whose handler starts now; ``at_once``:
        announce it now."""
        w = Watch(msg, task)
        loop = asyncio.get_running_loop()
        if at_once:
            self._send_started(loop, w)
        else:
            self._to_announce.append((loop.time() + self.announce_after, w))
            self._arm(loop)
        return w

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._to_announce.clear()
        self._to_beat.clear()

    def _send_started(self, loop: asyncio.AbstractEventLoop, w: Watch) -> None:
        w.sending = loop.create_task(self._announce(w))
        self._to_beat.append((loop.time() + self.every, w))

    def _arm(self, loop: asyncio.AbstractEventLoop) -> None:
        due = self._next_due()
        if due is None:
            return
        if self._timer is not None:
            if self._timer_at <= due:
                return
            self._timer.cancel()
        self._timer_at = due
        self._timer = loop.call_at(due, self._fire)

    def _next_due(self) -> float | None:
        for queue in (self._to_announce, self._to_beat):
            while queue and queue[0][1].done:
                queue.popleft()
        heads = [q[0][0] for q in (self._to_announce, self._to_beat) if q]
        return min(heads) if heads else None

    def _fire(self) -> None:
        self._timer = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        while self._to_announce and self._to_announce[0][0] <= now:
            _, w = self._to_announce.popleft()
            if not w.done:
                self._send_started(loop, w)
        while self._to_beat and self._to_beat[0][0] <= now:
            _, w = self._to_beat.popleft()
            if not w.done:
                loop.create_task(_in_progress(w.msg))
                self._to_beat.append((now + self.every, w))
        self._arm(loop)


async def _in_progress(msg: Any) -> None:
    with contextlib.suppress(Exception):
        await msg.in_progress()

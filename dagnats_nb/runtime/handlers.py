"""What a task handler sees and returns: its context, and the signals it can give."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from dagnats_nb.errors import DagnatsError
from dagnats_nb.wire.protocol import is_token


class Permanent(Exception):  # noqa: N818 - a signal, named for what it asks
    """Raise from a handler to fail the step at once, without its retries."""


class RetryAfter(Exception):  # noqa: N818
    """Raise from a handler to retry the step after exactly ``seconds``."""

    def __init__(self, seconds: float, message: str = "") -> None:
        super().__init__(message or f"retry after {seconds:g}s")
        self.seconds = float(seconds)


@dataclass(frozen=True, slots=True)
class Continue:
    """Return from an agent-loop handler to run another iteration with ``output`` as input."""

    output: Any = None


@dataclass(slots=True)
class TaskContext:
    """The handler's view of one attempt of one step."""

    input: Any
    run_id: str
    step_id: str
    task: str
    attempt: int
    iteration: int
    workflow_name: str
    worker_id: str
    map_index: int | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    def_hash: str = ""  # the version of the workflow definition the run follows
    _beat: Callable[[], Any] | None = None

    def heartbeat(self) -> None:
        """Tell the server the task is still being worked on (long handlers beat on their own)."""
        if self._beat is not None:
            self._beat()


# Tasks a handler runs at once unless told (``concurrency=``): an ``async def`` handler's run
# on the worker's loop; a plain ``def`` handler's each take a thread of the worker's pool,
# which grows to the sum of its handlers' concurrency. Pass ``concurrency=1`` for a ``def``
# handler that is not thread-safe.
ASYNC_CONCURRENCY = 64
SYNC_CONCURRENCY = 8


@dataclass(slots=True)
class Handler:
    task: str
    fn: Callable[..., Any]
    concurrency: int
    group: str = ""  # a worker group: only the tasks of steps with this ``worker_group``
    # what this worker offers: it takes only tasks whose required_capabilities it has
    capabilities: frozenset[str] = frozenset()

    @property
    def is_async(self) -> bool:
        return inspect.iscoroutinefunction(self.fn)


def make_handler(
    task: str,
    fn: Callable[..., Any],
    concurrency: int | None,
    group: str = "",
    capabilities: Iterable[str] = (),
) -> Handler:
    if group and not is_token(group):
        raise DagnatsError(
            f"worker group {group!r} cannot be used in a NATS subject: "
            "use letters, digits, '-' or '_' (no '.', '*', '>' or spaces)"
        )
    if not is_token(task):
        raise DagnatsError(
            f"task name {task!r} cannot be used in a NATS subject: "
            "use letters, digits, '-' or '_' (no '.', '*', '>' or spaces)"
        )
    if not callable(fn):
        raise DagnatsError(f"handler for task '{task}' is not callable")
    is_async = inspect.iscoroutinefunction(fn) or asyncio.iscoroutinefunction(fn)
    if concurrency is None:
        concurrency = ASYNC_CONCURRENCY if is_async else SYNC_CONCURRENCY
    if concurrency < 1:
        raise DagnatsError(f"task '{task}': concurrency must be at least 1, got {concurrency}")
    if isinstance(capabilities, str):
        capabilities = [capabilities]
    return Handler(task, fn, concurrency, group, frozenset(capabilities))

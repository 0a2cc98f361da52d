"""What a task handler sees and returns: its context, and the signals it can give."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from dagnats_nb.dag.cachekey import code_version
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
    cache: bool = False  # its steps' results are cached unless a step says cache "false"
    version: str = ""  # the handler's version (dag.cachekey.code_version, or its author's)
    # A built-in handler's say on caching (the llm task): cache_scope(step) -> (cached by
    # default, what else the key covers); cache_served(task, output) when a hit is served.
    cache_scope: Callable[[Any], tuple[bool, dict[str, Any]]] | None = None
    cache_served: Callable[[Any, Any], None] | None = None

    @property
    def is_async(self) -> bool:
        return inspect.iscoroutinefunction(self.fn)


def make_handler(
    task: str,
    fn: Callable[..., Any],
    concurrency: int | None,
    group: str = "",
    capabilities: Iterable[str] = (),
    *,
    cache: bool = False,
    version: str | None = None,
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
    if version is not None and (not isinstance(version, str) or not version.strip()):
        raise DagnatsError(f"task '{task}': version must be a non-empty string, got {version!r}")
    version = version.strip() if version else code_version(fn)
    return Handler(task, fn, concurrency, group, frozenset(capabilities), bool(cache), version)


HandlerSpec = Any  # fn, (fn, concurrency), or (fn, concurrency, {"cache": .., "version": ..})


def unpack_spec(task: str, spec: HandlerSpec) -> tuple[Callable[..., Any], int | None, dict]:
    """A handler given as ``fn``, ``(fn, concurrency)`` or ``(fn, concurrency, options)``
    (``options``: ``cache``, ``version``) as ``(fn, concurrency, options)``."""
    if not isinstance(spec, tuple):
        return spec, None, {}
    if len(spec) == 2:
        return spec[0], spec[1], {}
    if len(spec) == 3 and isinstance(spec[2], dict) and set(spec[2]) <= {"cache", "version"}:
        return spec[0], spec[1], dict(spec[2])
    raise DagnatsError(
        f"handler of task '{task}': give fn, (fn, concurrency) or (fn, concurrency, "
        "{'cache': bool, 'version': str})"
    )

"""One definition, two public methods: the blocking call and its awaitable twin.

Each engine operation is written once, as a private coroutine that runs on the engine loop,
where the NATS connection and the orchestrator's state live. :func:`twins` derives from it

- ``name(...)``: runs the coroutine on the engine loop and blocks for its result;
- ``name_async(...)``: awaits it from any event loop (top-level ``await`` in Jupyter, an
  ``asyncio.run`` in another thread, or the engine loop itself).

Both apply ``shape`` to the result in the caller's thread (e.g. build a DataFrame), so what
a caller gets was read on the engine loop at one moment: a snapshot, never a live structure
the engine thread is changing. ``prepare(self, kwargs)`` fills keyword arguments in the
caller's thread first (a notebook progress bar is drawn by the cell's thread). The blocking
method carries the coroutine's docstring; the twin's says it is the awaitable twin. In a
class body::

    async def _runs(self) -> list[RunState]:
        \"\"\"All runs as a DataFrame (...).\"\"\"
        ...

    runs, runs_async = twins(_runs, runs_frame)

The owner provides ``_call(coro)`` and ``_call_async(coro)`` (:class:`LoopBound`).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

Prepare = Callable[[Any, dict[str, Any]], None]


class LoopBound(Protocol):
    """What :func:`twins` needs of its owner: the bridge to the engine loop."""

    def _call(self, coro: Coroutine[Any, Any, Any]) -> Any: ...

    async def _call_async(self, coro: Coroutine[Any, Any, Any]) -> Any: ...


def twins(
    op: Callable[..., Coroutine[Any, Any, Any]],
    shape: Callable[[Any], Any] | None = None,
    *,
    prepare: Prepare | None = None,
) -> tuple[Callable[..., Any], Callable[..., Coroutine[Any, Any, Any]]]:
    """``(name, name_async)`` for the private coroutine method ``_name`` (see the module)."""

    def blocking(self: LoopBound, *args: Any, **kwargs: Any) -> Any:
        if prepare is not None:
            prepare(self, kwargs)
        result = self._call(op(self, *args, **kwargs))
        return result if shape is None else shape(result)

    async def awaitable(self: LoopBound, *args: Any, **kwargs: Any) -> Any:
        if prepare is not None:
            prepare(self, kwargs)
        result = await self._call_async(op(self, *args, **kwargs))
        return result if shape is None else shape(result)

    return stamped(op, blocking, awaitable, shaped=shape is not None)


def stamped(
    op: Callable[..., Coroutine[Any, Any, Any]],
    blocking: Callable[..., Any],
    awaitable: Callable[..., Coroutine[Any, Any, Any]],
    *,
    shaped: bool = False,
) -> tuple[Callable[..., Any], Callable[..., Coroutine[Any, Any, Any]]]:
    """Name, document and sign ``blocking`` and ``awaitable`` as the pair of ``op``, as
    :func:`twins` does for its own: for a pair written by hand because it does something in
    the caller's thread between two steps on the loop (``run``: a hint after the start,
    before the wait). ``shaped``: the caller gets something else than the coroutine's
    result."""
    name = op.__name__.removeprefix("_")
    signature = inspect.signature(op)
    if shaped:  # the coroutine's result is not what the caller gets
        signature = signature.replace(return_annotation=inspect.Signature.empty)
    owner = op.__qualname__.rpartition(".")[0]
    twin_doc = f"The awaitable twin of :meth:`{name}`: the same, awaited from any event loop."
    for fn, public, doc in (
        (blocking, name, op.__doc__),
        (awaitable, f"{name}_async", twin_doc),
    ):
        fn.__name__ = public
        fn.__qualname__ = f"{owner}.{public}" if owner else public
        fn.__doc__ = doc
        fn.__module__ = op.__module__
        fn.__signature__ = signature  # type: ignore[attr-defined]
        fn.operation = op  # type: ignore[attr-defined]  # the private coroutine
    return blocking, awaitable

"""How adapters plug into the engine without the engine importing them.

- **Extensions** start and stop with every engine: ``Engine.add_extension(factory)``;
  ``factory(engine)`` is called at each start right after the engine connects to NATS
  (before the streams are ensured and the history replayed, so an HTTP ``/ready`` can say
  what start-up waits for) and returns an :class:`Extension`, or None when it has nothing to
  do with these settings. The HTTP adapter (``/health``, ``/ready``, webhooks, the worker
  bridge) is one.
- **A progress display** for long operations (backup, restore): ``set_progress_display``
  takes ``display(verb) -> progress(stream, done, total) | None``; the notebook adapter's
  shows a widget bar inside Jupyter and nothing elsewhere.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

Progress = Callable[[str, int, int], None]


class Extension(Protocol):
    """Something that runs beside an engine (its start and stop are awaited on the engine
    loop)."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


ExtensionFactory = Callable[[Any], "Extension | None"]

_factories: list[ExtensionFactory] = []


def _no_progress(verb: str) -> Progress | None:
    return None


_progress_display: Callable[[str], Progress | None] = _no_progress


def add_extension(factory: ExtensionFactory) -> None:
    """Start ``factory(engine)`` with every engine started from now on (idempotent)."""
    if factory not in _factories:
        _factories.append(factory)


def remove_extension(factory: ExtensionFactory) -> None:
    """Engines started from now on no longer start ``factory``'s extension."""
    if factory in _factories:
        _factories.remove(factory)


def factories() -> list[ExtensionFactory]:
    return list(_factories)


def set_progress_display(display: Callable[[str], Progress | None]) -> None:
    """Where ``eng.backup()`` / ``eng.restore()`` show progress when given no callback."""
    global _progress_display
    _progress_display = display


def default_progress(verb: str) -> Progress | None:
    return _progress_display(verb)

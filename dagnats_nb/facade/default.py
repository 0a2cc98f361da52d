"""The kernel's default engine and the ``@dn.task`` handler registry.

``dn.task("name")`` works before or after the engine starts: handlers are recorded here and
added to the default engine when it starts (and at once when it already runs). The magics
use the same engine, so cells never pass an engine around.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any

from dagnats_nb.config import Settings, load_settings
from dagnats_nb.errors import DagnatsError
from dagnats_nb.facade.engine import Engine

_lock = threading.RLock()
_engine: Engine | None = None
_handlers: dict[str, tuple[Any, ...]] = {}  # (fn, concurrency[, {cache, version}])


def engine(start: bool = True) -> Engine:
    """The kernel's default engine, started with the default settings when none runs
    (``start=False`` raises instead)."""
    with _lock:
        if _engine is not None and _engine.running:
            return _engine
        if not start:
            raise DagnatsError("no dagnats engine runs in this kernel: run %dagnats start")
        return start_engine()


def current() -> Engine | None:
    """The default engine when it runs, else None."""
    eng = _engine
    return eng if eng is not None and eng.running else None


def start_engine(
    data_dir: str | os.PathLike | None = None,
    config: str | os.PathLike | None = None,
    **settings: Any,
) -> Engine:
    """Start the default engine (idempotent: a running one is returned as it is; asking
    for another data directory while one runs is an error)."""
    global _engine
    with _lock:
        eng = current()
        if eng is not None:
            differ = _differences(eng, data_dir, config, settings)
            if differ:
                raise DagnatsError(
                    f"the engine already runs on {eng.settings.data_dir} with other settings "
                    f"({', '.join(differ)}): stop it first (%dagnats stop) to change them"
                )
            return eng
        # the handlers first: recovered runs waiting on tasks no worker serves are named
        eng = Engine.start(data_dir, config, handlers=dict(_handlers), notebook=True, **settings)
        _engine = eng
        return eng


def _differences(eng: Engine, data_dir: Any, config: Any, settings: dict[str, Any]) -> list[str]:
    """Keys asked for (explicitly, or by the config file) whose value the running engine
    does not have: re-running a start cell with the same settings is fine."""
    if data_dir is None and config is None and not settings:
        return []
    wanted = load_settings(config, data_dir=data_dir, **settings)
    keys = set(settings) | ({"data_dir"} if data_dir is not None else set())
    if config is not None:
        keys |= set(Settings.model_fields)
    return sorted(k for k in keys if getattr(wanted, k) != getattr(eng.settings, k))


def stop_engine() -> bool:
    """Stop the default engine; False when none was running."""
    global _engine
    with _lock:
        eng, _engine = _engine, None
    if eng is None or not eng.running:
        return False
    eng.stop()
    return True


def task(
    name: str,
    *,
    concurrency: int | None = None,
    cache: bool = False,
    version: str | None = None,
) -> Callable[[Callable], Callable]:
    """Decorator: handle every step whose task is ``name``, on the default engine;
    ``concurrency`` tasks at once (default: 64 for ``async def``, 8 for a plain ``def``, each
    in a thread; pass 1 for a handler that is not thread-safe). ``cache``: serve its steps
    from the step cache when they ran on the same input before; ``version``: the handler's
    version in the cache key (default: a hash of its code, blind to what it calls)."""
    options: dict[str, Any] = {"cache": True} if cache else {}
    if version is not None:
        options["version"] = version

    def register(fn: Callable) -> Callable:
        with _lock:
            _handlers[name] = (fn, concurrency, options) if options else (fn, concurrency)
            eng = current()
        if eng is not None:
            eng.add_handler(name, fn, concurrency=concurrency, **options)
        return fn

    return register


def handlers() -> list[str]:
    """Task names registered with ``@dn.task``."""
    return list(_handlers)

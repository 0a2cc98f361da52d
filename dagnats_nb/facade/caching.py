"""The step cache seen from the engine: ``cache_stats`` and ``cache_clear``, a mixin of
:class:`~dagnats_nb.facade.engine.Engine` (what is cached and how: ``runtime.cache``)."""

from __future__ import annotations

from typing import Any

from dagnats_nb.errors import DagnatsError
from dagnats_nb.facade.twins import twins
from dagnats_nb.runtime import cache
from dagnats_nb.wire.protocol import is_token


class Caching:
    """The step cache (see the module docstring)."""

    async def _cache_stats(self) -> dict[str, Any]:
        """The step cache as a dict: ``entries`` and ``bytes`` stored, ``max_bytes`` and
        ``ttl`` (seconds) of its bucket, and since the bucket was made (every engine and
        worker process, their counters outlive restarts until the TTL): ``hits`` (steps
        served without a call), ``misses`` (cacheable steps that ran), ``stored``,
        ``too_large`` (values not stored: larger than a message or an eighth of
        ``max_bytes``), ``write_errors``, and ``saved_s``: the seconds the hits' handlers
        had taken when their values were stored."""
        host = getattr(self, "host", None)
        if host is not None and host.cache is not None:
            await host.cache.flush()  # this engine's counters, up to now
        return await cache.cache_stats(self._js)

    cache_stats, cache_stats_async = twins(_cache_stats)

    async def _cache_clear(self, task: str | None = None) -> int:
        """Drop the cached results (only task type ``task``'s when named); how many. The
        counters of :meth:`cache_stats` stay."""
        if task is not None and not is_token(task):
            raise DagnatsError(
                f"cache_clear: {task!r} is not a task name (letters, digits, '-' or '_')"
            )
        return await cache.cache_clear(self._js, task)

    cache_clear, cache_clear_async = twins(_cache_clear)

"""``%dagnats cache`` and ``%dagnats cache clear [--task T]``: the step cache of the kernel's
engine (see ``Engine.cache_stats`` and ``Engine.cache_clear``)."""

from __future__ import annotations

import pandas as pd

from dagnats_nb.facade import default

STATS_COLUMNS = [
    "entries",
    "bytes",
    "max_bytes",
    "ttl",
    "hits",
    "misses",
    "stored",
    "too_large",
    "write_errors",
    "saved_s",
]


def cache_stats() -> pd.DataFrame:
    """The step cache as one row: entries, bytes, max_bytes, ttl (s), hits, misses, stored,
    too_large, write_errors, saved_s."""
    stats = default.engine(start=False).cache_stats()
    return pd.DataFrame([[stats.get(c) for c in STATS_COLUMNS]], columns=STATS_COLUMNS)


def cache_clear(task: str | None = None) -> str:
    """Drop the cached results (of task type ``task``); one line saying how many."""
    dropped = default.engine(start=False).cache_clear(task)
    what = f"of task {task} " if task else ""
    return f"dropped {dropped} cached result{'s' * (dropped != 1)} {what}from the step cache"

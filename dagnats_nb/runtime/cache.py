"""Cached steps: a task worker serves a cacheable step's result from the ``task_cache`` KV
bucket instead of calling its handler (the key and what is cacheable: ``dag.cachekey``).

- **Lookup.** Only for a cacheable task (its step's ``metadata.cache: "true"``, or a handler
  added with ``cache=True``: the ``llm`` handler when ``llm_cache`` is on, its
  ``cache_scope`` then leaving out a step with a ``temperature`` above 0) is the step's
  definition resolved and the key computed; a task that is not costs nothing.
- **Hit.** No handler call: the worker publishes the usual ``step.completed`` with the
  stored output, marked ``cache: {hit: true, key, run_id, step_id}`` (the run and step that
  stored it).
- **Miss.** The handler runs; a completed result is stored (never a failure, never a
  ``step.continue``) and its event marked ``cache: {hit: false, key}``. A value larger than
  one KV message, or than an eighth of the bucket's byte limit (it would push out most of
  the cache), is not stored (``too_large``). A write that fails is logged (the first one at
  warning level) and the run goes on.
- **Counters** (hits, misses, stored, too_large, write_errors, saved seconds) are kept per
  process and put in the bucket under ``s.{worker_id}`` at most every 2 s, so
  ``cache_stats`` sums every process's, and they outlive a restart (until the bucket's TTL).

Entries are stored under ``e.{task}.{key}``: ``{output, run_id, step_id, map_index,
duration_ms, stored_at}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, NotFoundError

from dagnats_nb.dag.cachekey import cache_key, step_flag, wants_cache
from dagnats_nb.runtime.handlers import Handler
from dagnats_nb.wire import protocol
from dagnats_nb.wire.resources import CACHE_BUCKET

log = logging.getLogger("dagnats_nb.runtime.cache")

ResolveDef = Callable[[str, str, str], Awaitable[Any]]  # run id, workflow, def hash
COUNTERS = ("hits", "misses", "stored", "too_large", "write_errors")
FLUSH_EVERY = 2.0  # seconds between puts of this process's counters
OPEN_AGAIN = 30.0  # seconds before looking again for a bucket that was missing
HEADROOM = 1024  # bytes of a KV message left for its subject and headers
# Seconds a cache read or write may take: the engine's KV writes are retried for a minute
# through a server loss (transport.jetstream); a cache write is given up sooner.
READ_TIMEOUT = 5.0
WRITE_TIMEOUT = 3.0
STREAM = f"KV_{CACHE_BUCKET}"


@dataclass(slots=True)
class Lookup:
    """A cacheable task's key, and the entry stored under it (None: a miss)."""

    key: str
    kv_key: str
    entry: dict[str, Any] | None


class StepCache:
    """One process's access to the step cache (lives on its event loop)."""

    def __init__(
        self, js: JetStreamContext, worker_id: str, resolve_def: ResolveDef, max_payload: int
    ) -> None:
        self.js = js
        self.worker_id = worker_id
        self.resolve_def = resolve_def
        self.max_payload = max_payload
        self.counts: dict[str, float] = dict.fromkeys(COUNTERS, 0)
        self.counts["saved_s"] = 0.0
        self._kv: Any = None
        self._max_value = max_payload - HEADROOM
        self._missing_said = False
        self._missing_at = -OPEN_AGAIN
        self._write_said = False
        self._read_said = False
        self._flush: asyncio.TimerHandle | None = None
        self._writing: asyncio.Task | None = None

    async def open(self) -> bool:
        """Find the bucket (made by the engine at start); False, said once, when missing."""
        if self._kv is not None:
            return True
        if time.monotonic() - self._missing_at < OPEN_AGAIN:
            return False
        try:
            info = await self.js.stream_info(STREAM)
            self._kv = await self.js.key_value(CACHE_BUCKET)
        except Exception as exc:  # missing, or NATS did not answer: not cached for now
            self._missing_at = time.monotonic()
            if not self._missing_said:
                why = "no such bucket" if isinstance(exc, NotFoundError) else str(exc)
                log.warning("steps are not cached here (%s KV: %s)", CACHE_BUCKET, why)
                self._missing_said = True
            return False
        limit = info.config.max_bytes or -1
        cap = self.max_payload - HEADROOM
        self._max_value = cap if limit <= 0 else min(cap, limit // 8)
        return True

    async def lookup(self, task: protocol.TaskPayload, handler: Handler, value: Any):
        """The task's :class:`Lookup` when its step is cached, else None."""
        flag = step_flag(task.metadata)
        if flag is False or (flag is None and not handler.cache):
            return None  # not cacheable: nothing resolved
        if not await self.open():
            return None
        try:
            defn = await self.resolve_def(task.run_id, task.workflow_name, task.def_hash)
            step = defn.step(task.step_id)
            by_default, extra = (
                handler.cache_scope(step) if handler.cache_scope else (handler.cache, {})
            )
            if not wants_cache(flag, by_default):
                return None
            key = cache_key(handler.task, step.config, step.metadata, value, handler.version, extra)
        except Exception as exc:  # no definition, bad options, input not JSON: not cached
            log.debug("step %s of run %s not cached: %s", task.step_id, task.run_id, exc)
            return None
        kv_key = f"e.{handler.task}.{key}"
        try:
            got = await asyncio.wait_for(self._kv.get(kv_key), READ_TIMEOUT)
            entry = protocol.loads(got.value) if got.value else None
        except (KeyNotFoundError, NotFoundError):
            entry = None
        except Exception as exc:  # unreadable: run the handler
            level = logging.DEBUG if self._read_said else logging.WARNING
            log.log(level, "cannot read the step cache (%s): running step %s", exc, task.step_id)
            self._read_said, entry = True, None
        if not (isinstance(entry, dict) and "output" in entry):
            entry = None
        return Lookup(key, kv_key, entry)

    def served(self, look: Lookup) -> dict[str, Any]:
        """Count a hit; the ``cache`` envelope field of its event."""
        entry = look.entry or {}
        self._count("hits")
        duration = entry.get("duration_ms")
        if isinstance(duration, int | float):
            self.counts["saved_s"] += duration / 1000
        return {
            "hit": True,
            "key": look.key,
            "run_id": entry.get("run_id"),
            "step_id": entry.get("step_id"),
        }

    async def store(
        self, look: Lookup, task: protocol.TaskPayload, output: Any, seconds: float
    ) -> dict[str, Any] | None:
        """Store a completed result (a miss); its ``cache`` envelope field, or None when it
        was not stored (too large, not JSON, or the write failed: logged)."""
        self._count("misses")
        entry = {
            "output": output,
            "run_id": task.run_id,
            "step_id": task.step_id,
            "map_index": task.map_index,
            "duration_ms": round(seconds * 1000, 3),
            "stored_at": protocol.now_rfc3339(),
        }
        try:
            data = protocol.dumps(entry)
        except (TypeError, ValueError):
            return None  # the worker fails the step: not JSON
        if len(data) > self._max_value:
            self._count("too_large")
            return None
        try:
            await asyncio.wait_for(self._kv.put(look.kv_key, data), WRITE_TIMEOUT)
        except Exception as exc:  # a full store, a lost bucket: the run goes on
            self._count("write_errors")
            level = logging.DEBUG if self._write_said else logging.WARNING
            why = str(exc) or f"no answer within {WRITE_TIMEOUT:g} s"
            log.log(level, "cannot store step %s in the step cache: %s", task.step_id, why)
            self._write_said = True
            return None
        self._count("stored")
        return {"hit": False, "key": look.key}

    # -- counters ------------------------------------------------------------------------

    def _count(self, name: str) -> None:
        self.counts[name] += 1
        if self._flush is None:
            loop = asyncio.get_running_loop()
            self._flush = loop.call_later(FLUSH_EVERY, self._flush_soon)

    def _flush_soon(self) -> None:
        self._flush = None
        self._writing = asyncio.get_running_loop().create_task(self.flush())

    async def flush(self) -> None:
        """Put this process's counters in the bucket (a failure is logged at debug level)."""
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None
        if self._kv is None:
            return
        try:
            data = protocol.dumps(self.counts)
            await asyncio.wait_for(self._kv.put(f"s.{self.worker_id}", data), WRITE_TIMEOUT)
        except Exception as exc:
            log.debug("cannot store the step cache's counters: %s", exc)

    async def close(self) -> None:
        """Put the counters a last time."""
        if self._writing is not None:
            with contextlib.suppress(Exception):
                await self._writing
        if any(self.counts.values()):
            await self.flush()


async def cache_stats(js: JetStreamContext) -> dict[str, Any]:
    """The step cache's state: entries, bytes, max_bytes, ttl (seconds), and every
    process's counters summed (hits, misses, stored, too_large, write_errors, saved_s)."""
    out: dict[str, Any] = {"entries": 0, "bytes": 0, "max_bytes": None, "ttl": None}
    out.update(dict.fromkeys(COUNTERS, 0), saved_s=0.0)
    try:
        info = await js.stream_info(STREAM)
    except NotFoundError:
        return out
    counted = await js.stream_info(STREAM, subjects_filter=f"$KV.{CACHE_BUCKET}.s.>")
    prefix = f"$KV.{CACHE_BUCKET}."
    keys = [subject.removeprefix(prefix) for subject in counted.state.subjects or {}]
    kv = await js.key_value(CACHE_BUCKET)
    for key in keys:
        try:
            counts = protocol.loads((await kv.get(key)).value)
        except Exception:
            continue
        for name in (*COUNTERS, "saved_s"):
            value = counts.get(name) if isinstance(counts, dict) else None
            if isinstance(value, int | float):
                out[name] += value
    out["saved_s"] = round(out["saved_s"], 3)
    for name in COUNTERS:
        out[name] = int(out[name])
    out["entries"] = max(0, (info.state.messages or 0) - len(keys))
    out["bytes"] = info.state.bytes or 0
    out["max_bytes"] = info.config.max_bytes
    out["ttl"] = info.config.max_age
    return out


async def cache_clear(js: JetStreamContext, task: str | None = None) -> int:
    """Drop the cached results (of task type ``task``); how many were dropped."""
    subject = f"$KV.{CACHE_BUCKET}.e.{task}.>" if task else f"$KV.{CACHE_BUCKET}.e.>"
    try:
        before = await js.stream_info(STREAM)
    except NotFoundError:
        return 0
    await js.purge_stream(STREAM, subject=subject)
    after = await js.stream_info(STREAM)
    return max(0, (before.state.messages or 0) - (after.state.messages or 0))

"""Engine heartbeats in the KV ``dagnats_engines``, and the engines seen alive there.

Every engine started with ``Engine.start`` puts ``engine.{id}`` every
:data:`~dagnats_nb.dag.membership.HEARTBEAT_EVERY` seconds with ``{host, pid, version, mode,
started, orchestrates}`` and deletes it on a clean stop; a killed engine's entry stays until
the bucket's max age (1 h) clears it, and is seen dead after
:data:`~dagnats_nb.dag.membership.DEAD_AFTER` seconds without a new revision
(:class:`~dagnats_nb.dag.membership.Liveness`, on this process's monotonic clock).

The entries are read (one ``STREAM.INFO`` for the keys and the server's time, one get of
each key's last message) rather than watched: nats-py's KV watch can end its initial
values before they arrive (nats-io/nats.py#842), and an engine missed at start is an
orchestrator run twice.

Not here yet (design/scale-out.md): self-fencing (an engine whose own put fails for 2 s
stops deciding), ``orchestrate = shared``, partitions and leases.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import json
import logging
import os
import socket
import time
from collections.abc import Callable
from typing import Any

from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from dagnats_nb.dag.events import now_rfc3339, parse_time
from dagnats_nb.dag.membership import DEAD_AFTER, HEARTBEAT_EVERY, Liveness, Reading
from dagnats_nb.transport.stores import stream_subjects
from dagnats_nb.wire.resources import ENGINES

log = logging.getLogger("dagnats_nb.runtime.membership")

BUCKET = ENGINES.name
STREAM = f"KV_{BUCKET}"
PREFIX = "engine."
MODE = "solo"  # one orchestrator for the whole history (increment 2 adds "shared")
GUARD_POLL = 0.2  # seconds between two readings while the start-up guard waits


def engine_key(engine_id: str) -> str:
    """The KV key of an engine's heartbeat."""
    return PREFIX + engine_id


async def read_entries(js: JetStreamContext) -> dict[str, Reading]:
    """Every engine entry in the bucket now, by key (none without the bucket). Each
    reading's ``silent`` is the server's time of answering minus the entry's stamp."""
    subject_prefix = f"$KV.{BUCKET}."
    try:
        subjects, server_time = await stream_subjects(js, STREAM, subject_prefix + PREFIX + ">")
    except NotFoundError:
        return {}
    server_now = parse_time(server_time) if server_time else None
    out: dict[str, Reading] = {}
    for subject in subjects:
        try:
            msg = await js.get_last_msg(STREAM, subject)
        except NotFoundError:  # deleted between the two requests
            continue
        if (msg.headers or {}).get("KV-Operation") in ("DEL", "PURGE") or not msg.data:
            continue
        try:
            value = json.loads(msg.data)
        except ValueError:
            continue
        if not isinstance(value, dict):
            continue
        stamp = msg.time.timestamp() if msg.time else None
        silent = server_now - stamp if server_now is not None and stamp is not None else 0.0
        out[subject[len(subject_prefix) :]] = Reading(msg.seq or 0, value, silent)
    return out


class Membership:
    """This engine's heartbeat, and what it sees of the others (see the module docstring).

    ``clock`` is the observer's monotonic clock (a test's fake one)."""

    def __init__(
        self,
        js: JetStreamContext,
        engine_id: str,
        *,
        clock: Callable[[], float] = time.monotonic,
        every: float = HEARTBEAT_EVERY,
    ) -> None:
        self.js = js
        self.engine_id = engine_id
        self.key = engine_key(engine_id)
        self.clock = clock
        self.every = every
        self.liveness = Liveness()
        self.orchestrates = False
        self.started = now_rfc3339()
        self._task: asyncio.Task | None = None
        self._kv = None
        self._failing_since: float | None = None

    # -- observing ----------------------------------------------------------------------

    async def observe(self) -> None:
        """Read every entry and update the live set."""
        self.liveness.observe(await read_entries(self.js), self.clock())

    async def orchestrators(self, wait: float = DEAD_AFTER + 0.5) -> list[dict[str, Any]]:
        """The other engines that orchestrate here and are alive: read now, then again every
        :data:`GUARD_POLL` s for as long as one of them is neither seen putting nor dead (at
        most ``wait`` s; one still unknown then counts as alive). No entry, or only entries
        long silent or of engines that do not orchestrate: no wait."""
        deadline = self.clock() + wait
        while True:
            await self.observe()
            now = self.clock()
            rows = [r for r in self._rows(now) if r["orchestrates"] and not r["self"]]
            if not any(r["state"] == "unknown" for r in rows) or now >= deadline:
                return [r for r in rows if r["state"] != "dead"]
            await asyncio.sleep(GUARD_POLL)

    def engines(self) -> list[dict[str, Any]]:
        """The engines seen at the last reading (see :func:`engine_rows`)."""
        return self._rows(self.clock())

    def _rows(self, now: float) -> list[dict[str, Any]]:
        return engine_rows(self.liveness, now, self.key)

    # -- heartbeat ----------------------------------------------------------------------

    def entry(self) -> dict[str, Any]:
        """The value this engine puts."""
        return {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "version": _version(),
            "mode": MODE,
            "started": self.started,
            "orchestrates": self.orchestrates,
        }

    async def start(self, orchestrates: bool) -> None:
        """Put this engine's entry now, then every ``every`` s until :meth:`stop`."""
        self.orchestrates = orchestrates
        self._kv = await self.js.key_value(BUCKET)
        await self._put()
        await self.observe()
        self._task = asyncio.create_task(self._beat(), name="dagnats-membership")

    async def _put(self) -> None:
        await self._kv.put(self.key, json.dumps(self.entry()).encode())

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(self.every)
            try:
                await self._put()
                self._failing_since = None
            except Exception as exc:
                # self-fencing (stop deciding after 2 s of failed puts) is a later increment
                if self._failing_since is None:
                    self._failing_since = self.clock()
                    log.warning("engine heartbeat %s not stored: %s", self.key, exc)
            try:
                await self.observe()
            except Exception as exc:
                log.debug("engine heartbeats not read: %s", exc)

    async def stop(self, *, online: bool = True) -> None:
        """Stop putting; ``online``: delete the entry too (a clean stop)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
        if online and self._kv is not None:
            try:
                await asyncio.wait_for(self._kv.delete(self.key), 5)
            except Exception as exc:
                log.debug("engine heartbeat %s not deleted: %s", self.key, exc)
        self._kv = None


def engine_rows(liveness: Liveness, now: float, own_key: str | None = None) -> list[dict]:
    """One row an engine: ``engine_id``, ``host``, ``pid``, ``version``, ``orchestrates``,
    ``age`` (seconds since its last heartbeat, as this observer knows it), ``state``
    (``live``, ``dead`` or ``unknown``) and ``self`` (this engine's own entry)."""
    rows = []
    for key in liveness.seen():
        value = liveness.value(key)
        rows.append(
            {
                "engine_id": key[len(PREFIX) :],
                "host": value.get("host"),
                "pid": value.get("pid"),
                "version": value.get("version"),
                "mode": value.get("mode"),
                "orchestrates": bool(value.get("orchestrates")),
                "age": round(liveness.silence(key, now), 1),
                "state": liveness.state(key, now),
                "self": key == own_key,
            }
        )
    return rows


async def seen_once(js: JetStreamContext) -> list[dict[str, Any]]:
    """The engine rows of one reading, for an engine that keeps no heartbeat of its own
    (``Engine.connect``): entries not yet long silent are ``unknown``."""
    liveness = Liveness()
    now = time.monotonic()
    liveness.observe(await read_entries(js), now)
    return engine_rows(liveness, now)


def _version() -> str:
    try:
        return importlib.metadata.version("dagnats-nb")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree, not installed
        return "unknown"

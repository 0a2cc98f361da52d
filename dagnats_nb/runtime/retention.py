"""Retention of finished runs' records and payloads: the pruner.

``runs_max_age`` bounds WORKFLOW_HISTORY by age; this module bounds the two stores the
history does not: KV ``workflow_runs`` (one record ``run.{id}`` a run) and the object store
``payloads`` (values too large for a message, named ``{run_id}/...``). A pass

1. reads ``KV_workflow_runs`` (subjects ``$KV.workflow_runs.run.>``) from its first sequence,
   in batched direct gets, and stops at the first record put after the cutoff (now -
   ``max_age``). The bucket keeps one message a key, so stream order is last-put order, and
   a finished run's last put is its end: the expired records come first, and a pass reads
   them plus one. It purges each record whose run is terminal (Go's ``IsTerminal``) and
   whose ``completed_at`` is before the cutoff, as Go's ``PruneTerminal`` does; a run that
   is not terminal (a waiting run can be old) or that this engine's orchestrator holds as
   running stays. The purge names the key's subject and the sequence read, so it leaves no
   delete marker, and a record put again since (a reopened run) stays.
2. reads the object metadata (``$O.payloads.M.>``) the same way, oldest first, up to the
   cutoff, and deletes each object whose run has no record any more, nor any run it
   descends from (:func:`lineage`: a parent holds its child's output), and none of them is
   running here. A record gone before this pass (not pruned now) also needs the object to
   be ``ORPHAN_AGE`` old. Deleting is purging its chunks' subject, then its metadata's (no
   "deleted" marker, unlike nats-py's ``delete``). An object is put before its run ends, so
   every object of an expired run is older than the cutoff, and a pass cut short leaves
   objects that a later one finds.

Each scan reads at most ``limit`` messages (10,000, Go's ``pruneMaxRunsScan``); when the cap
stops it, the next pass goes on from there (old waiting runs at the front are not read
again and again), else it starts from the first sequence again.

What runs when (:class:`Pruner`): only in an engine whose orchestrator runs, i.e. never
beside a Go engine that orchestrates (we do not alter what we did not create), and only
when ``runs_max_age`` is set (0 keeps everything): a pass ``FIRST_DELAY`` seconds after the
start, then every ``INTERVAL`` seconds. A pass that fails logs one line; the next one tries
again. ``Engine.prune`` runs a pass at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import nats.errors
from nats.aio.client import Client as NATS

from dagnats_nb.dag.events import format_time, parse_time
from dagnats_nb.transport.api import js_api
from dagnats_nb.wire import protocol

log = logging.getLogger("dagnats_nb.runtime.retention")
T = TypeVar("T")

FIRST_DELAY = 60.0  # seconds from the start to the first pass
INTERVAL = 3600.0  # seconds between passes
MAX_READ = 10_000  # messages a scan reads at most (Go's pruneMaxRunsScan)
BATCH = 256  # messages a direct get asks for
IN_FLIGHT = 64  # purge requests at once
READ_TIMEOUT = 5.0
# An object whose run has no record goes only this many seconds after it was put, whatever
# the age asked: a run being started stores its input before its start is applied.
ORPHAN_AGE = 60.0

RUNS_STREAM = "KV_workflow_runs"
RUN_SUBJECTS = "$KV.workflow_runs.run.>"
PAYLOAD_STREAM = f"OBJ_{protocol.PAYLOAD_BUCKET}"
META_SUBJECTS = f"$O.{protocol.PAYLOAD_BUCKET}.M.>"
# Go's RunStatus.IsTerminal (ours are the first three)
TERMINAL = frozenset({"completed", "failed", "cancelled", "compensated", "compensate_failed"})


@dataclass(frozen=True, slots=True)
class Stored:
    """One message as a direct get returns it."""

    seq: int
    subject: str
    time: float  # when it was stored (POSIX seconds)
    data: bytes
    marker: bool = False  # a KV delete or purge marker


@dataclass(frozen=True, slots=True)
class Scan(Generic[T]):
    """What a scan read: what it picked of the messages stored before the cutoff, how many
    it read (the newer one that ended it included), and where the next scan starts (0: the
    first)."""

    found: list[T]
    read: int
    resume: int


# -- the core: what may go -----------------------------------------------------------------


def expired_run(data: bytes, cutoff: float) -> str | None:
    """The run id of a ``workflow_runs`` record whose run is terminal and ended before
    ``cutoff`` (Go's ``isPrunable``); None for anything else (running, recent, not a
    record, no ``completed_at``)."""
    try:
        rec = json.loads(data)
        run_id, ended = rec["run_id"], rec.get("completed_at")
        if rec.get("status") not in TERMINAL or not isinstance(ended, str):
            return None
        old = parse_time(ended) < cutoff
    except (ValueError, TypeError, KeyError, AttributeError, RecursionError):
        return None
    return run_id if old and isinstance(run_id, str) and run_id else None


def stored_object(data: bytes) -> dict[str, Any] | None:
    """An object's metadata (``name``, ``nuid``, ``size``, ``deleted``), None when the
    message is none; the run it belongs to is :func:`owner` of its name."""
    try:
        meta = json.loads(data)
    except (ValueError, RecursionError):
        return None
    if not isinstance(meta, dict) or not isinstance(meta.get("name"), str):
        return None
    return meta


def owner(name: str) -> str | None:
    """The run an object belongs to: the part of ``{run_id}/...`` before the slash (None
    when that cannot be a run id: a subject token)."""
    run_id, slash, _ = name.partition("/")
    return run_id if slash and protocol.is_token(run_id) else None


def lineage(run_id: str) -> list[str]:
    """``run_id`` and the runs it may descend from: a sub_workflow child's id is
    ``{parent}-{step}``, and its parent holds the child's output, references included."""
    out = [run_id]
    while "-" in run_id:
        run_id = run_id.rpartition("-")[0]
        if run_id:
            out.append(run_id)
    return out


def summary(max_age: float | None, cutoff: float | None = None) -> dict[str, Any]:
    """An empty pass summary (see :meth:`Pruner.prune`)."""
    return {
        "max_age": max_age,
        "cutoff": format_time(cutoff) if cutoff is not None else None,
        "records_read": 0,
        "records_pruned": 0,
        "payloads_read": 0,
        "payloads_deleted": 0,
        "payload_bytes": 0,
        "complete": True,
        "seconds": 0.0,
    }


# -- the shell: reading and purging ----------------------------------------------------------


def _stored(msg) -> Stored:
    h = msg.headers or {}
    return Stored(
        seq=int(h["Nats-Sequence"]),
        subject=h["Nats-Subject"],
        time=parse_time(h["Nats-Time-Stamp"]),
        data=msg.data,
        marker=h.get("KV-Operation") in ("DEL", "PURGE"),
    )


async def scan(
    nc: NATS,
    api: str,
    stream: str,
    subjects: str,
    start: int,
    cutoff: float,
    limit: int,
    pick: Callable[[Stored], T | None],
) -> Scan[T]:
    """``pick`` of each message of ``stream`` on ``subjects`` from sequence ``start``, in
    order, until the first stored at or after ``cutoff``, the end, or ``limit`` read (then
    ``resume`` says where to go on); what it returns that is not None is kept (a message
    is not: 10,000 records are 30-50 MB). Batched direct gets (``batch``, nats-server
    2.11); a server that answers one message a request is read one message a request."""
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    found: list[T] = []
    read, seq = 0, max(start, 1)
    try:
        while read < limit:
            req = {"seq": seq, "batch": min(BATCH, limit - read), "next_by_subj": subjects}
            await nc.publish(f"{api}.DIRECT.GET.{stream}", json.dumps(req).encode(), reply=inbox)
            got, end = 0, False
            while True:
                msg = await sub.next_msg(timeout=READ_TIMEOUT)
                h = msg.headers or {}
                if h.get("Status"):
                    end = _batch_end(stream, h)
                    break
                one, got, read = _stored(msg), got + 1, read + 1
                if one.time >= cutoff:
                    return Scan(found, read, 0)
                picked = pick(one)
                if picked is not None:
                    found.append(picked)
                seq = one.seq + 1
                if "Nats-Num-Pending" not in h:  # a server without batches: one a request
                    break
            if end or not got:
                return Scan(found, read, 0)
        return Scan(found, read, seq)
    finally:
        with contextlib.suppress(nats.errors.Error):
            await sub.unsubscribe()


def _batch_end(stream: str, h: dict[str, str]) -> bool:
    """Whether the status ending a batch says the stream has nothing further: 404 (no
    message from there) or 204 with none pending; any other is an error."""
    if h["Status"] == "404":
        return True
    if h["Status"] == "204":
        return h.get("Nats-Num-Pending") == "0"
    raise nats.errors.Error(f"direct get on {stream}: {h['Status']} {h.get('Description', '')}")


async def purge(nc: NATS, api: str, stream: str, subject: str, below: int | None = None) -> int:
    """Purge ``subject`` of ``stream`` (only its messages below sequence ``below``, when
    given): no marker is left. How many messages went."""
    body: dict[str, Any] = {"filter": subject}
    if below is not None:
        body["seq"] = below
    reply = await js_api(nc, f"STREAM.PURGE.{stream}", body, prefix=api)
    return int(reply.get("purged") or 0)


async def _bounded(coros: Iterable) -> list:
    """Await ``coros``, ``IN_FLIGHT`` at a time; their results (the first error raised
    once the rest of its group is done)."""
    out: list = []
    pending = list(coros)
    for i in range(0, len(pending), IN_FLIGHT):
        results = await asyncio.gather(*pending[i : i + IN_FLIGHT], return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                for rest in pending[i + IN_FLIGHT :]:
                    rest.close()
                raise result
        out.extend(results)
    return out


async def record_exists(nc: NATS, api: str, run_id: str) -> bool:
    """Whether ``run.{run_id}`` holds a record (a delete marker is none)."""
    body = {"last_by_subj": f"$KV.workflow_runs.run.{run_id}"}
    msg = await nc.request(
        f"{api}.DIRECT.GET.{RUNS_STREAM}", json.dumps(body).encode(), timeout=READ_TIMEOUT
    )
    h = msg.headers or {}
    if h.get("Status"):
        if h["Status"] == "404":
            return False
        raise nats.errors.Error(f"direct get of run.{run_id}: {h.get('Description', h)}")
    return h.get("KV-Operation") not in ("DEL", "PURGE")


class Pruner:
    """Prunes expired records and payloads (see the module docstring). ``holds(run_id)``:
    whether the orchestrator holds the run as not ended (it stays, whatever its record
    says); ``may_run()``: whether a scheduled pass may run now (not while paused)."""

    def __init__(
        self,
        nc: NATS,
        api: str,
        holds: Callable[[str], bool],
        may_run: Callable[[], bool] = lambda: True,
    ) -> None:
        self.nc, self.api, self.holds, self.may_run = nc, api, holds, may_run
        self.passes = 0
        self.last: dict[str, Any] | None = None  # the last pass's summary
        self._resume = {RUNS_STREAM: 0, PAYLOAD_STREAM: 0}
        self._lock = asyncio.Lock()
        self._task: asyncio.Task | None = None

    def start(self, max_age: float) -> None:
        """Prune every ``INTERVAL`` seconds, the first time ``FIRST_DELAY`` from now."""
        if max_age > 0 and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._every(max_age))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _every(self, max_age: float) -> None:
        delay = FIRST_DELAY
        while True:
            await asyncio.sleep(delay)
            delay = INTERVAL
            if not self.may_run():
                continue
            try:
                done = await self.prune(max_age)
            except Exception as exc:  # one line; the next pass tries again
                log.warning("retention pass failed (next in %.0f s): %s", INTERVAL, exc)
                continue
            if done["records_pruned"] or done["payloads_deleted"]:
                log.info(
                    "retention: %d run records and %d payloads (%d bytes) older than %g s pruned",
                    done["records_pruned"],
                    done["payloads_deleted"],
                    done["payload_bytes"],
                    max_age,
                )

    async def prune(self, max_age: float | None, limit: int = MAX_READ) -> dict[str, Any]:
        """One pass: prune what ended more than ``max_age`` seconds ago (None or 0: nothing).
        Its summary: ``records_read`` / ``payloads_read`` (messages each scan read),
        ``records_pruned``, ``payloads_deleted``, ``payload_bytes``, ``complete`` (False
        when ``limit`` stopped a scan: the next pass goes on from there), ``cutoff``,
        ``seconds``."""
        if not max_age or max_age <= 0:
            return summary(None)
        async with self._lock:
            t0 = time.perf_counter()
            cutoff = time.time() - max_age
            out = summary(max_age, cutoff)
            pruned = await self._records(cutoff, limit, out)
            await self._payloads(cutoff, limit, pruned, out)
            out["seconds"] = round(time.perf_counter() - t0, 4)
            self.passes += 1
            self.last = out
            return out

    async def _scan(
        self, stream: str, subjects: str, cutoff: float, limit: int, pick: Callable
    ) -> Scan:
        start = self._resume[stream]
        found = await scan(self.nc, self.api, stream, subjects, start, cutoff, limit, pick)
        self._resume[stream] = found.resume
        return found

    async def _records(self, cutoff: float, limit: int, out: dict[str, Any]) -> set[str]:
        def expired(msg: Stored) -> tuple[str, str, int] | None:
            run_id = None if msg.marker else expired_run(msg.data, cutoff)
            if run_id is None or self.holds(run_id):
                return None
            return run_id, msg.subject, msg.seq

        found = await self._scan(RUNS_STREAM, RUN_SUBJECTS, cutoff, limit, expired)
        out["records_read"] = found.read
        out["complete"] &= found.resume == 0
        api, nc = self.api, self.nc
        purged = await _bounded(
            purge(nc, api, RUNS_STREAM, subject, seq + 1) for _, subject, seq in found.found
        )
        out["records_pruned"] = sum(1 for n in purged if n)
        return {run_id for run_id, _, _ in found.found}

    async def _payloads(
        self, cutoff: float, limit: int, pruned: set[str], out: dict[str, Any]
    ) -> None:
        orphan_before = min(cutoff, time.time() - ORPHAN_AGE)

        def candidate(msg: Stored) -> tuple[Stored, dict[str, Any], list[str]] | None:
            meta = stored_object(msg.data)
            run_id = owner(meta["name"]) if meta else None
            runs = lineage(run_id) if run_id else []
            if not runs or any(self.holds(r) for r in runs):
                return None
            if not pruned.isdisjoint(runs) or msg.time < orphan_before:
                return msg, meta, runs
            return None

        found = await self._scan(PAYLOAD_STREAM, META_SUBJECTS, cutoff, limit, candidate)
        out["payloads_read"] = found.read
        out["complete"] &= found.resume == 0
        candidates = found.found
        unknown = sorted({r for _, _, runs in candidates for r in runs} - pruned)
        kept = await _bounded(record_exists(self.nc, self.api, run_id) for run_id in unknown)
        alive = {run_id for run_id, exists in zip(unknown, kept, strict=True) if exists}
        doomed = [(msg, meta) for msg, meta, runs in candidates if alive.isdisjoint(runs)]
        await _bounded(self._delete_object(msg, meta) for msg, meta in doomed)
        out["payloads_deleted"] = sum(1 for _, meta in doomed if not meta.get("deleted"))
        out["payload_bytes"] = sum(int(meta.get("size") or 0) for _, meta in doomed)

    async def _delete_object(self, msg: Stored, meta: dict[str, Any]) -> None:
        """Its chunks, then its metadata (a pass cut between the two finds it again)."""
        nuid = meta.get("nuid")
        if not meta.get("deleted") and isinstance(nuid, str) and nuid:
            chunks = f"$O.{protocol.PAYLOAD_BUCKET}.C.{nuid}"
            await purge(self.nc, self.api, PAYLOAD_STREAM, chunks)
        await purge(self.nc, self.api, PAYLOAD_STREAM, msg.subject, msg.seq + 1)

"""Snapshots of the runs an orchestrator holds, and its checkpoint, in our stream
``DAGNATS_SNAPSHOTS`` (issue 15; design/history-at-scale.md, section (b)).

A restart then loads the runs that were active from their snapshots and replays only the
history after the checkpoint, instead of the whole history. The history stays the
authority: a snapshot is a cache of what folding a run's events gave, written off the
step's path.

**The cycle.** Applying an event (or a timer) marks its run dirty: one set insert, all the
step pays. Every ``TICK`` a cycle *cuts* at the orchestrator's last applied sequence S,
taking the dirty runs' states as they are (the core's states never change once made, so
each is exact at S), and writes a snapshot of each run still held (running, ended with
decisions not yet seen back, or, with eviction, ended with its final record not yet
stored), with the definitions they follow. When every write is
acknowledged it writes the **checkpoint**: ``{v, seq: S, at, history, runs: [[run_id,
last_seq], ...]}`` listing every run held at S. Only then are the snapshots of runs that
ended at or before S purged. A failed write leaves the checkpoint where it was (a restart
then reads more history; nothing is lost) and its runs are written again next cycle. A run
that starts and ends between two cuts is never written.

**What a restart trusts** (:meth:`Snapshots.load`): a listed run's snapshot when its
``last_seq`` is at least the listed one; an unlisted snapshot cut after S (a later cycle
that never reached its checkpoint). A listed run whose snapshot is missing, older than
listed or unreadable (another format version) is rebuilt from its history, from its
snapshot's ``last_seq`` when it has one. The history stream's creation time is kept in the
checkpoint: a history restored or recreated since makes the checkpoint void (full replay).

Subjects: ``dagnats_nb.snapshot.run.{run_id}``, ``dagnats_nb.snapshot.def.{def_hash}``,
``dagnats_nb.snapshot.checkpoint`` and, when its run list is larger than a message, its
parts ``dagnats_nb.snapshot.part.{S}.{k}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from nats.js import JetStreamContext

from dagnats_nb.dag import WorkflowDef
from dagnats_nb.dag.events import dumps
from dagnats_nb.dag.snapshot import decode, encode
from dagnats_nb.dag.state import RunState
from dagnats_nb.transport.reading import last_data, purge_subject, read_all
from dagnats_nb.transport.stores import DefinitionStore
from dagnats_nb.wire import protocol

log = logging.getLogger("dagnats_nb.runtime.snapshots")

STREAM = protocol.SNAPSHOT_STREAM
PREFIX = "dagnats_nb.snapshot"
RUN = f"{PREFIX}.run."
DEF = f"{PREFIX}.def."
CHECKPOINT = f"{PREFIX}.checkpoint"
PART = f"{PREFIX}.part."
CHECKPOINT_VERSION = 1
TICK = 1.0  # seconds between two cuts
BATCH = 512  # writes in flight at once
LIST_BYTES = 256 * 1024  # run list entries a checkpoint message carries, in bytes


def held(state: RunState) -> bool:
    """Whether a restart needs the run: running, or ended with decisions not yet seen back."""
    return not state.terminal or bool(state.outbox)


@dataclass
class Loaded:
    """What a restart takes from the snapshots: the checkpoint's sequence, the runs whose
    snapshot is trusted, and the runs to rebuild from their history after a sequence."""

    seq: int
    states: dict[str, RunState] = field(default_factory=dict)
    rebuild: dict[str, tuple[RunState | None, int]] = field(default_factory=dict)


class Snapshots:
    """The snapshot writer of one orchestrator, and the reader its restart uses."""

    def __init__(
        self,
        js: JetStreamContext,
        runs: dict[str, RunState],
        defs: DefinitionStore,
        cut: Callable[[], int],
        history_id: str,
        limit: int,
        keep_ended: bool = False,
    ) -> None:
        self.js = js
        self.runs = runs
        self.defs = defs
        self._cut = cut
        self.history_id = history_id  # the history stream's creation time
        self.limit = limit  # bytes a snapshot message may take
        # with eviction, a run still in memory is one a restart needs, ended or not: an
        # ended run stays until its final record is stored (runtime.eviction)
        self.keep_ended = keep_ended
        self._dirty: set[str] = set()
        self._held: set[str] = set()  # runs whose snapshot is in the stream
        self._defs_written: set[str] = set()
        self._parts: int | None = None  # the cut whose checkpoint parts are in the stream
        self._task: asyncio.Task | None = None
        self._lock = asyncio.Lock()  # one cycle at a time
        self.checkpoint_seq = 0
        self.checkpoint_at = 0.0
        self.written = 0
        self.failed = 0
        self.too_large = 0

    def dirty(self, run_id: str) -> None:
        """The run changed: its snapshot is due at the next cut."""
        self._dirty.add(run_id)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def close(self) -> None:
        """Stop the cycle, then cut once more (a clean stop leaves a current checkpoint)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        try:
            await self.cycle()
        except Exception as exc:
            log.warning("last snapshot cycle failed: %s", exc)

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(TICK)
            try:
                await self.cycle()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the next cycle tries again; restart reads more history
                self.failed += 1
                log.warning("snapshot cycle failed: %s", exc)

    async def cycle(self) -> bool:
        """Cut, write the dirty runs' snapshots, then the checkpoint, then purge the ended
        runs' snapshots. False when nothing changed or a write failed (no checkpoint)."""
        async with self._lock:
            if not self._dirty and self.checkpoint_seq:
                return False
            seq = self._cut()
            ids, self._dirty = self._dirty, set()
            states = {rid: self.runs.get(rid) for rid in ids}
            listed = [[rid, st.last_seq] for rid, st in self.runs.items() if self._keeps(st)]
            writes = self._writes(seq, states)
            failed = await self._publish([(subject, data) for subject, data, _ in writes])
            if failed:
                self.failed += len(failed)
                self._dirty |= {writes[i][2] for i in failed if writes[i][2]}
                log.warning(
                    "%d snapshot writes failed: the checkpoint stays at %d",
                    len(failed),
                    self.checkpoint_seq,
                )
                return False
            for _, _, rid in writes:
                if rid:
                    self._held.add(rid)
            self.written += sum(1 for w in writes if w[2])
            await self._checkpoint(seq, listed)
            ended = [rid for rid, st in states.items() if rid in self._held and not self._keeps(st)]
            await asyncio.gather(*(purge_subject(self.js, STREAM, RUN + rid) for rid in ended))
            self._held.difference_update(ended)
            return True

    def _writes(self, seq: int, states: dict[str, RunState | None]) -> list[tuple[str, bytes, str]]:
        """(subject, body, run id or "") of the snapshots and definitions to write."""
        out = []
        for rid, st in states.items():
            if not self._keeps(st):
                continue
            data = dumps({**encode(st), "cut": seq})
            if len(data) > self.limit:  # rebuilt from its history (and older snapshot)
                self.too_large += 1
                continue
            out.append((RUN + rid, data, rid))
            h = st.def_hash
            if h and h not in self._defs_written:
                defn = self.defs.known(st.workflow, h)
                if defn is not None:
                    self._defs_written.add(h)
                    out.append((DEF + h, dumps(self.defs.wire(h, defn)), ""))
        return out

    async def _publish(self, messages: list[tuple[str, bytes]]) -> list[int]:
        """Write the messages, at most ``BATCH`` in flight; the indexes that failed."""
        failed: list[int] = []
        for start in range(0, len(messages), BATCH):
            chunk = messages[start : start + BATCH]
            acks = []
            for subject, data in chunk:
                try:
                    acks.append(await self.js.publish_async(subject, data))
                except Exception as exc:
                    acks.append(exc)
            for i, ack in enumerate(acks):
                if isinstance(ack, Exception):
                    failed.append(start + i)
                    continue
                try:
                    await ack
                except Exception:
                    failed.append(start + i)
        return failed

    async def _checkpoint(self, seq: int, listed: list[list[Any]]) -> None:
        """Write the checkpoint at ``seq``: its run list in parts when it is large."""
        parts = _split(listed, LIST_BYTES)
        head: dict[str, Any] = {
            "v": CHECKPOINT_VERSION,
            "seq": seq,
            "at": time.time(),
            "history": self.history_id,
        }
        if len(parts) <= 1:
            head["runs"] = parts[0] if parts else []
        else:
            for k, part in enumerate(parts):
                await self.js.publish(f"{PART}{seq}.{k}", dumps(part))
            head["parts"] = len(parts)
        await self.js.publish(CHECKPOINT, dumps(head))
        if self._parts is not None and self._parts != seq:
            await purge_subject(self.js, STREAM, f"{PART}{self._parts}.>")
        self._parts = seq if len(parts) > 1 else None
        self.checkpoint_seq, self.checkpoint_at = seq, head["at"]

    def _keeps(self, state: RunState | None) -> bool:
        return state is not None and (self.keep_ended or held(state))

    # -- restart -------------------------------------------------------------------------

    async def load(self) -> Loaded | None:
        """The runs a restart takes from the snapshots (see the module docstring); None
        without a checkpoint this history can use (the first start, a restored history)."""
        head = _json(await last_data(self.js, STREAM, CHECKPOINT))
        if not isinstance(head, dict) or head.get("v") != CHECKPOINT_VERSION:
            return None
        if head.get("history") != self.history_id or not isinstance(head.get("seq"), int):
            return None
        listed = await self._listed(head)
        if listed is None:
            return None
        seq = head["seq"]
        loaded = Loaded(seq)
        snaps: dict[str, tuple[RunState | None, int]] = {}
        for msg in await read_all(self.js, STREAM, RUN + ">"):
            body = _json(msg.data)
            cut = body.get("cut", 0) if isinstance(body, dict) else 0
            snaps[msg.subject[len(RUN) :]] = (decode(body), cut if isinstance(cut, int) else 0)
        ended = []
        for rid, (state, cut) in snaps.items():
            if rid in listed:
                continue
            if state is not None and cut > seq:  # a later cycle that never checkpointed
                loaded.states[rid] = state
            else:
                ended.append(rid)
        for rid, last in listed.items():
            state = snaps.get(rid, (None, 0))[0]
            if state is not None and state.last_seq >= last:
                loaded.states[rid] = state
            else:
                loaded.rebuild[rid] = (state, state.last_seq if state is not None else 0)
        self._held = set(snaps) - set(ended)
        await asyncio.gather(*(purge_subject(self.js, STREAM, RUN + rid) for rid in ended))
        self.checkpoint_seq, self.checkpoint_at = seq, head.get("at", 0.0)
        self._parts = seq if head.get("parts") else None
        return loaded

    async def _listed(self, head: dict[str, Any]) -> dict[str, int] | None:
        if "parts" in head:
            entries: list[Any] = []
            for k in range(int(head["parts"])):
                part = _json(await last_data(self.js, STREAM, f"{PART}{head['seq']}.{k}"))
                if not isinstance(part, list):
                    return None  # a part lost: the checkpoint cannot be trusted
                entries += part
        else:
            entries = head.get("runs")
        if not isinstance(entries, list):
            return None
        try:
            return {str(rid): int(last) for rid, last in entries}
        except (TypeError, ValueError):
            return None

    async def definition(self, state: RunState) -> WorkflowDef:
        """The definition a restored run follows: its snapshot's, else its history's."""
        h = state.def_hash
        defn = self.defs.known(state.workflow, h) if h else None
        if defn is not None:
            return defn
        raw = _json(await last_data(self.js, STREAM, DEF + h)) if h else None
        if isinstance(raw, dict):
            _, defn = await self.defs.for_started({"workflow_def": raw, "def_hash": h})
            self._defs_written.add(h)
            return defn
        return await self.defs.for_run(state.run_id, state.workflow, h)


def _split(entries: list[list[Any]], size: int) -> list[list[list[Any]]]:
    """The run list in parts of about ``size`` bytes each (an entry: ~40 bytes)."""
    per = max(1, size // 48)
    return [entries[i : i + per] for i in range(0, len(entries), per)]


def _json(data: bytes | None) -> Any:
    if data is None:
        return None
    try:
        return json.loads(data)
    except (ValueError, RecursionError):
        return None

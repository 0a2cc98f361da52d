"""Cron and subject triggers: the records Go keeps, and the scheduler that fires them.

**Records** are the Go engine's (``internal/trigger.TriggerDef``): KV ``triggers``, key =
the trigger id, value ``{"id", "workflow_id", "enabled", "cron": {"expression",
"timezone", "backfill"} | "subject": {"subject"} | "webhook" | "http" | "external",
"debounce"?, "source"?}``. A workflow's ``triggers`` are written there when it is
registered (Go's ``workflow register``: last write wins; as in Go a trigger without
``"enabled": true`` is stored disabled), so ``dagnats trigger list`` of either engine shows
both engines' triggers. KV ``trigger_state`` holds ``{id}.last_run_at``, the RFC 3339 minute a
cron trigger last fired (the key Go's scheduler reads for its backfill).

**Firing** (the engine that orchestrates runs the :class:`TriggerScheduler`):

- a cron trigger starts a run at each due minute: one ``loop.call_at`` of its next due time,
  no polling, so idle triggers cost nothing. The run's input is Go's trigger envelope
  ``{"trigger": "cron", "source": id, "workflow_id", "timestamp"}``; its id is derived from
  (trigger, minute) (:func:`trigger_run_id`), so a minute started twice — a restart, a
  second engine, a crash between the start and the record — is one run: the orchestrator
  ignores a second ``workflow.started`` of a run it has, JetStream drops a same
  ``Nats-Msg-Id`` within its window, and a run already started is not started again.
- what a restart owes: the minutes due since ``max(last fired, when the record was
  written)``. With ``cron.backfill`` (Go's field) all of them, oldest first, at most
  :data:`BACKFILL_CAP` (Go's 100); without it only the current minute, when the engine starts
  within a due minute not fired yet (as Go's 30 s ticker does). A trigger enabled again
  owes nothing from the time it was disabled.
- a subject trigger subscribes to its subject (a queue group per trigger, so several engines
  start one run per message) and starts a run with the envelope ``{"trigger": "subject",
  "source", "workflow_id", "timestamp", "data": the message body as JSON}`` (a body that is
  not JSON is passed as text). A message with a ``Nats-Msg-Id`` header starts the run
  derived from it, once.
- changes to KV ``triggers`` (``eng.disable_trigger``, Go's ``dagnats trigger disable``...)
  apply at once: the scheduler listens on the bucket's subjects.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from nats.js.errors import KeyNotFoundError, NotFoundError

from dagnats_nb.dag.cron import Cron, parse_cron
from dagnats_nb.transport.stores import kv_keys

log = logging.getLogger("dagnats_nb")

BUCKET = "triggers"
STATE_BUCKET = "trigger_state"
KINDS = ("cron", "subject", "webhook", "http", "external")
BACKFILL_CAP = 100  # Go's Scheduler.Backfill cap, per trigger and start
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"

clock: Callable[[], float] = time.time  # what a new scheduler reads the time from (tests)


def trigger_kind(record: dict[str, Any]) -> str:
    return next((k for k in KINDS if record.get(k) is not None), "")


def readable(record: Any) -> bool:
    """Whether a KV ``triggers`` value is a record we can read (any client may write there):
    an object with a string id and workflow_id whose kind's spec, if any, is an object."""
    if not isinstance(record, dict) or not isinstance(record.get("id"), str) or not record["id"]:
        return False
    if not isinstance(record.get("workflow_id", ""), str):
        return False
    kind = trigger_kind(record)
    return not kind or isinstance(record[kind], dict)


def go_record(workflow: str, trigger: dict[str, Any]) -> dict[str, Any]:
    """A workflow's trigger (as written in its ``triggers``) as Go stores it in KV."""
    rec: dict[str, Any] = {
        "id": trigger["id"],
        "workflow_id": trigger.get("workflow_id") or workflow,
        "enabled": trigger.get("enabled") is True,
    }
    for kind in KINDS:
        spec = trigger.get(kind)
        if spec is None:
            continue
        if kind == "cron":
            spec = {
                "expression": spec.get("expression", ""),
                "timezone": spec.get("timezone") or "",
                "backfill": spec.get("backfill") is True,
            }
        rec[kind] = spec
    for key in ("debounce", "source"):
        if trigger.get(key):
            rec[key] = trigger[key]
    return rec


def trigger_run_id(trigger_id: str, key: float | str) -> str:
    """The run a trigger starts for ``key``: a cron minute (POSIX seconds; the id's ULID time
    is that minute) or a message's ``Nats-Msg-Id``. The same for every engine and restart."""
    if isinstance(key, int | float):
        key = int(key)  # 1796067120.0 and 1796067120 are one minute
    digest = hashlib.sha256(f"{trigger_id}\n{key}".encode()).digest()
    bits = int.from_bytes(digest[:16])
    if isinstance(key, int):
        bits = (int(key * 1000) << 80) | (bits & ((1 << 80) - 1))
    return "".join(_CROCKFORD[(bits >> (5 * i)) & 31] for i in range(25, -1, -1))


def rfc3339(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_rfc3339(text: str) -> float | None:
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


class TriggerStore:
    """KV ``triggers`` and ``trigger_state`` (Go's records; see the module docstring)."""

    def __init__(self, js) -> None:
        self.js = js
        self._kv: dict[str, Any] = {}

    async def _bucket(self, name: str):
        if name not in self._kv:
            self._kv[name] = await self.js.key_value(name)
        return self._kv[name]

    async def all(self) -> dict[str, tuple[dict[str, Any], float]]:
        """Every trigger record by id, with the time it was written (POSIX seconds)."""
        await self._bucket(BUCKET)
        try:
            keys = await kv_keys(self.js, BUCKET)
        except NotFoundError:
            return {}
        out = {}
        for key in keys:
            try:  # the stored message, for its time (a KV entry has none)
                msg = await self.js.get_last_msg(f"KV_{BUCKET}", f"$KV.{BUCKET}.{key}")
                rec = json.loads(msg.data or b"")
            except (KeyNotFoundError, NotFoundError, ValueError, TypeError, RecursionError):
                continue
            if readable(rec):
                out[key] = (rec, msg.time.timestamp() if msg.time else clock())
        return out

    async def get(self, trigger_id: str) -> dict[str, Any] | None:
        kv = await self._bucket(BUCKET)
        try:
            rec = json.loads((await kv.get(trigger_id)).value)
        except (KeyNotFoundError, NotFoundError, ValueError, TypeError, RecursionError):
            return None
        return rec if readable(rec) else None

    async def put(self, rec: dict[str, Any]) -> None:
        kv = await self._bucket(BUCKET)
        await kv.put(rec["id"], json.dumps(rec, separators=(",", ":")).encode())

    async def last_fired(self, trigger_id: str) -> float | None:
        kv = await self._bucket(STATE_BUCKET)
        try:
            return parse_rfc3339((await kv.get(f"{trigger_id}.last_run_at")).value.decode())
        except (KeyNotFoundError, NotFoundError, AttributeError, UnicodeDecodeError):
            return None

    async def set_last_fired(self, trigger_id: str, minute: float) -> None:
        kv = await self._bucket(STATE_BUCKET)
        await kv.put(f"{trigger_id}.last_run_at", rfc3339(minute).encode())


Start = Callable[[str, Any, str | None], Awaitable[Any]]


@dataclass(eq=False)
class Active:
    """One enabled cron or subject trigger the scheduler serves."""

    record: dict[str, Any]
    written: float  # when its record was written: nothing before is owed
    cron: Cron | None = None
    tz: str = "UTC"
    last: float | None = None  # the minute it last fired
    next_due: float | None = None
    timer: asyncio.TimerHandle | None = None
    sub: Any = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def id(self) -> str:
        return self.record["id"]

    @property
    def workflow(self) -> str:
        return self.record.get("workflow_id", "")


class TriggerScheduler:
    """Fires the enabled cron and subject triggers of KV ``triggers`` (module docstring).

    ``start_run(workflow, input, run_id)`` starts a run; ``has_run(run_id)`` says whether the
    run exists already (a delivery seen again starts nothing)."""

    def __init__(self, nc, js, start_run: Start, has_run: Callable[[str], Awaitable[bool]]) -> None:
        self.nc = nc
        self.store = TriggerStore(js)
        self.start_run = start_run
        self.has_run = has_run
        self.clock = clock
        self.active: dict[str, Active] = {}
        self.errors: list[str] = []
        self.fired = 0  # runs started (tests, benchmarks)
        self._watch = None
        self._tasks: set[asyncio.Task] = set()

    async def start(self) -> None:
        """Listen for record changes, then serve every record there is."""
        self._watch = await self.nc.subscribe(f"$KV.{BUCKET}.>", cb=self._on_change)
        for rec, written in (await self.store.all()).values():
            await self._apply(rec, written)

    async def stop(self) -> None:
        if self._watch is not None:
            with contextlib.suppress(Exception):
                await self._watch.unsubscribe()
            self._watch = None
        for a in list(self.active.values()):
            await self._drop(a)
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)

    # -- records -------------------------------------------------------------------------

    async def _on_change(self, msg) -> None:
        key = msg.subject.removeprefix(f"$KV.{BUCKET}.")
        op = (msg.headers or {}).get("KV-Operation")
        try:
            rec = None if op in ("DEL", "PURGE") else json.loads(msg.data)
        except (ValueError, RecursionError):
            rec = None
        if not readable(rec):
            if key in self.active:
                await self._drop(self.active.pop(key))
            return
        await self._apply(rec, self.clock())

    async def _apply(self, rec: dict[str, Any], written: float) -> None:
        tid = rec["id"]
        old = self.active.get(tid)
        if old is not None:
            if old.record == rec:
                return
            await self._drop(self.active.pop(tid))
        kind = trigger_kind(rec)
        if not rec.get("enabled") or kind not in ("cron", "subject"):
            return  # webhooks are served by the HTTP adapter, from the workflows
        a = self.active[tid] = Active(rec, written)
        try:
            if kind == "cron":
                await self._activate_cron(a)
            else:
                await self._activate_subject(a)
        except Exception as exc:  # a record any client wrote: one line, the rest served
            if self.active.get(tid) is a:
                del self.active[tid]
            self._error(f"trigger '{tid}' of workflow '{a.workflow}' is not served: {exc}")

    async def _drop(self, a: Active) -> None:
        if a.timer is not None:
            a.timer.cancel()
            a.timer = None
        if a.sub is not None:
            with contextlib.suppress(Exception):
                await a.sub.unsubscribe()
            a.sub = None

    def _error(self, line: str) -> None:
        if line not in self.errors[-20:]:
            log.warning("%s", line)
        self.errors.append(line)
        del self.errors[:-100]

    # -- cron ----------------------------------------------------------------------------

    async def _activate_cron(self, a: Active) -> None:
        spec = a.record["cron"]
        a.cron = parse_cron(spec.get("expression", ""))
        a.tz = spec.get("timezone") or "UTC"
        a.cron.next_after(0.0, a.tz)  # an unknown time zone fails here, not at the first tick
        a.last = await self.store.last_fired(a.id)
        self._spawn(self._tick(a))

    def _owed(self, a: Active, now: float) -> list[float]:
        since = max(a.last or -math.inf, a.written)
        if a.record["cron"].get("backfill") is True:
            return a.cron.between(since, now, a.tz, limit=BACKFILL_CAP)
        minute = now // 60 * 60
        due = minute > since and a.cron.next_after(minute - 60, a.tz) == minute
        return [minute] if due else []

    async def _tick(self, a: Active) -> None:
        a.timer = None
        async with a.lock:
            for minute in self._owed(a, self.clock()):
                if self.active.get(a.id) is not a:
                    return  # replaced or disabled meanwhile
                await self._fire_minute(a, minute)
        if self.active.get(a.id) is not a:
            return
        now = self.clock()
        a.next_due = a.cron.next_after(now, a.tz)
        if a.next_due != math.inf:
            loop = asyncio.get_running_loop()
            when = loop.time() + max(0.0, a.next_due - now)
            a.timer = loop.call_at(when, lambda: self._spawn(self._tick(a)))

    async def _fire_minute(self, a: Active, minute: float) -> None:
        run_id = trigger_run_id(a.id, minute)
        if not await self.has_run(run_id):
            envelope = {
                "trigger": "cron",
                "source": a.id,
                "workflow_id": a.workflow,
                "timestamp": rfc3339(minute),
            }
            try:
                await self.start_run(a.workflow, envelope, run_id)
            except Exception as exc:  # not started: owed again (with backfill) at a restart
                self._error(f"cron trigger '{a.id}' could not start '{a.workflow}': {exc}")
                return
            self.fired += 1
        a.last = minute
        try:
            await self.store.set_last_fired(a.id, minute)
        except Exception as exc:  # the run id still keeps the minute from firing twice
            self._error(f"cron trigger '{a.id}': last fired minute not recorded: {exc}")

    # -- subject -------------------------------------------------------------------------

    async def _activate_subject(self, a: Active) -> None:
        subject = (a.record.get("subject") or {}).get("subject")
        if not isinstance(subject, str) or not subject.strip():
            raise ValueError("subject must not be empty")
        queue = f"dagnats-trigger-{a.id}" if _is_queue_name(a.id) else ""

        async def on_message(msg) -> None:
            await self._fire_message(a, msg)

        a.sub = await self.nc.subscribe(subject, queue=queue, cb=on_message)

    async def _fire_message(self, a: Active, msg) -> None:
        envelope: dict[str, Any] = {
            "trigger": "subject",
            "source": a.id,
            "workflow_id": a.workflow,
            "timestamp": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        }
        if msg.data:
            try:
                envelope["data"] = json.loads(msg.data)
            except ValueError:
                envelope["data"] = msg.data.decode("utf-8", "replace")
        msg_id = (msg.headers or {}).get("Nats-Msg-Id")
        run_id = trigger_run_id(a.id, msg_id) if msg_id else None
        if run_id is not None and await self.has_run(run_id):
            return
        try:
            await self.start_run(a.workflow, envelope, run_id)
        except Exception as exc:
            self._error(f"subject trigger '{a.id}' could not start '{a.workflow}': {exc}")
            return
        self.fired += 1

    def _spawn(self, coro) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self._error(f"trigger scheduler: {type(task.exception()).__name__}: {task.exception()}")


def _is_queue_name(name: str) -> bool:
    return bool(name) and not any(c.isspace() or c in ".*>" for c in name)

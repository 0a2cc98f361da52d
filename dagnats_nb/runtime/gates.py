"""The shell of the steps that wait without a worker: events, signals and approvals.

The core decides (``dag.fold``): a ``wait_for_event`` step asks to be completed by a
matching event (:class:`~dagnats_nb.dag.state.AwaitEvent`), an approval step asks for a
token (:class:`~dagnats_nb.dag.state.RequestApproval`), and timers end both. This module
does the I/O, in the Go engine's forms:

- **Events** are published on ``event.{type}`` (stream EVENTS). The orchestrator's
  :class:`Correlator` reads them with the durable pull consumer ``event-correlator`` (Go's
  name: an event published while the engine is down is read when it is back) and publishes
  ``step.wait.matched`` (payload: the event's data) for each waiting step whose condition
  holds. An event nobody waits for is dropped, as in Go.
- **Signals** are values in KV ``signals`` under ``{run}.{name}`` (what Go's ``dagnats run
  signal`` and its workers' ``SendSignal`` write). A signal is addressed to one run, so its
  name alone selects the run's ``wait_for_event`` step waiting for an event of that name
  (its ``match`` is for events, which are broadcast); one sent before the step waits is
  kept and taken when it starts. A signal taken is deleted.
- **Approvals**: the token is a KV ``approval_tokens`` entry ``{run}.{step}`` (Go's record
  plus our ``approvers``), created once (a restart reuses it); ``approval.requested`` goes
  to the history and its payload to the step's ``subject``. A decision deletes the token
  with a compare-and-set, so of two racing decisions one wins, then publishes
  ``approval.granted`` or ``approval.rejected``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

import nats.errors
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError, NotFoundError

from dagnats_nb.dag.events import (
    APPROVAL_GRANTED,
    APPROVAL_REJECTED,
    APPROVAL_REQUESTED,
    STEP_WAIT_MATCHED,
    Event,
    format_time,
)
from dagnats_nb.dag.gates import ApprovalGate, EventWait
from dagnats_nb.dag.state import CANCELLED, RUNNING, RunState
from dagnats_nb.errors import DagnatsError
from dagnats_nb.wire import protocol

log = logging.getLogger("dagnats_nb.runtime.gates")

CORRELATOR = "event-correlator"  # Go's durable consumer of EVENTS
FETCH_WAIT = 1.0


class ApprovalError(DagnatsError):
    """A decision that cannot be taken; ``status`` is what Go's REST route answers."""

    def __init__(self, message: str, status: int = 401) -> None:
        super().__init__(message)
        self.status = status


def parse_value(data: bytes) -> Any:
    """An event's or signal's bytes as JSON, or as text when they are not JSON."""
    if not data:
        return None
    try:
        return json.loads(data)
    except (ValueError, RecursionError):  # RecursionError: nested too deep to parse
        return data.decode("utf-8", "replace")


def approval_key(run_id: str, step_id: str) -> str:
    return f"{run_id}.{step_id}"


# -- what any client can do (no orchestrator needed) ---------------------------------------


async def publish_event(js: JetStreamContext, event_type: str, data: Any) -> int:
    """Publish an event on ``event.{type}`` (stream EVENTS); its stream sequence."""
    if not protocol.is_token(event_type.replace(".", "_")) or event_type.endswith("."):
        raise DagnatsError(
            f"event type {event_type!r} is not a NATS subject token: use letters, digits, "
            "'-' and '_' (and '.' between words)"
        )
    ack = await js.publish(protocol.event_subject(event_type), protocol.dumps(data))
    return ack.seq


async def send_signal(js: JetStreamContext, run_id: str, name: str, payload: Any) -> None:
    """Write a signal for a run (KV ``signals``, key ``{run}.{name}``, as Go's CLI does)."""
    for what, value in (("run id", run_id), ("signal name", name)):
        if not protocol.is_token(value):
            raise DagnatsError(f"{what} {value!r} must not contain '.', '*', '>' or spaces")
    kv = await js.key_value(protocol.SIGNAL_BUCKET)
    await kv.put(f"{run_id}.{name}", protocol.dumps(payload))


async def decide(
    js: JetStreamContext,
    run_id: str,
    step_id: str,
    *,
    approve: bool,
    comment: str | None = None,
    by: str | None = None,
    token: str | None = None,
    body: Any = None,
    wait: float = 0.0,
) -> Any:
    """Approve or reject an open approval; the decision as recorded. ``token`` is checked
    when given (the HTTP link carries it; the engine's own callers are trusted). ``body``
    (the HTTP request's JSON), when given, is the decision as it is, as Go records it.
    ``wait`` seconds: how long to wait for a run that has not reached the step yet."""
    kv = await js.key_value(protocol.APPROVAL_BUCKET)
    key = approval_key(run_id, step_id)
    deadline = time.monotonic() + wait
    while True:
        try:
            entry = await kv.get(key)
        except (KeyNotFoundError, NotFoundError):
            entry = None
        if (entry is not None and entry.value) or time.monotonic() >= deadline:
            break
        await asyncio.sleep(0.1)
    if entry is None or not entry.value:
        raise ApprovalError(
            f"run {run_id} step {step_id} has no open approval (decided, expired, cancelled "
            f"or not reached yet): see eng.steps('{run_id}')"
        )
    record = json.loads(entry.value)
    if token is not None and not secrets.compare_digest(str(record.get("token", "")), token):
        raise ApprovalError(f"run {run_id} step {step_id}: the approval token does not match")
    approvers = record.get("approvers") or []
    if approvers and by not in approvers:
        who = "nobody named" if not by else f"{by!r}"
        raise ApprovalError(
            f"run {run_id} step {step_id}: {who} may not decide; approvers: "
            f"{', '.join(approvers)} (pass by=...)",
            403,
        )
    try:
        await kv.delete(key, last=entry.revision)
    except KeyWrongLastSequenceError:
        raise ApprovalError(
            f"run {run_id} step {step_id}: the approval was decided by someone else just now",
            409,
        ) from None
    if body is not None:
        decision: Any = body
    else:
        decision = {"approved": approve, "decided_at": format_time(time.time())}
        if comment:
            decision["comment"] = comment
        if by:
            decision["by"] = by
    event = Event(
        APPROVAL_GRANTED if approve else APPROVAL_REJECTED,
        run_id,
        step_id=step_id,
        payload=decision,
    )
    await js.publish(
        protocol.history_subject(run_id), event.encode(), headers={"Nats-Msg-Id": event.msg_id}
    )
    return decision


# -- the orchestrator's side ---------------------------------------------------------------


class Correlator:
    """Matches events and signals to waiting steps; issues approval tokens."""

    def __init__(
        self,
        js: JetStreamContext,
        nc,
        runs: dict[str, RunState],
        publish: Callable[[Event], Awaitable[None]],
        report: Callable[[str], None],
    ) -> None:
        self.js = js
        self.nc = nc
        self.runs = runs
        self.publish = publish
        self.report = report
        self.waiting: dict[str, dict[tuple[str, str], EventWait]] = {}  # by event type
        self.signals: dict[tuple[str, str], tuple[Any, int]] = {}  # (run, name) -> value, rev
        self._tasks: list[asyncio.Task] = []
        self._kv_signals = None
        self._kv_tokens = None
        self._psub = None
        self._watcher = None

    async def start(self) -> None:
        """Ready to issue approvals; events and signals are read from :meth:`listen` on,
        once the history is replayed (an event that came while the engine was down must
        find its waiting step)."""
        self._kv_signals = await self.js.key_value(protocol.SIGNAL_BUCKET)
        self._kv_tokens = await self.js.key_value(protocol.APPROVAL_BUCKET)

    async def listen(self) -> None:
        self._psub = await self.js.pull_subscribe(
            "event.>", durable=CORRELATOR, stream=protocol.EVENTS_STREAM
        )
        self._watcher = await self._kv_signals.watchall()
        self._tasks = [
            asyncio.ensure_future(self._read_events()),
            asyncio.ensure_future(self._read_signals()),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []
        if self._watcher is not None:
            with contextlib.suppress(Exception):
                await self._watcher.stop()
        if self._psub is not None:
            with contextlib.suppress(Exception):
                await self._psub.unsubscribe()

    # -- waits ---------------------------------------------------------------------------

    def await_event(self, run_id: str, step_id: str, wait: EventWait) -> None:
        self.waiting.setdefault(wait.event, {})[(run_id, step_id)] = wait
        early = self.signals.get((run_id, wait.event))
        if early is not None:
            asyncio.ensure_future(self._take_signal(run_id, wait.event, *early))

    def _still_waiting(self, run_id: str, step_id: str, wait: EventWait) -> bool:
        state = self.runs.get(run_id)
        if state is None or state.terminal:
            return False
        st = state.step(step_id)
        return st.status == RUNNING and st.detail == wait

    async def _matched(self, run_id: str, step_id: str, wait: EventWait, data: Any) -> None:
        self.waiting.get(wait.event, {}).pop((run_id, step_id), None)
        await self.publish(Event(STEP_WAIT_MATCHED, run_id, step_id=step_id, payload=data))

    async def _read_events(self) -> None:
        while True:
            try:
                msgs = await self._psub.fetch(64, timeout=FETCH_WAIT)
            except (nats.errors.TimeoutError, TimeoutError):
                continue
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a reconnecting server: try again shortly
                log.debug("events fetch: %s", exc)
                await asyncio.sleep(FETCH_WAIT)
                continue
            for msg in msgs:
                try:
                    await self.on_event(msg.subject.removeprefix("event."), parse_value(msg.data))
                except Exception as exc:  # one bad event must not stop the others
                    self.report(f"event on {msg.subject} not matched: {exc}")
                with contextlib.suppress(Exception):
                    await msg.ack()

    async def on_event(self, event_type: str, data: Any) -> None:
        for (run_id, step_id), wait in list(self.waiting.get(event_type, {}).items()):
            if not self._still_waiting(run_id, step_id, wait):
                self.waiting[event_type].pop((run_id, step_id), None)
            elif wait.matches(data):
                await self._matched(run_id, step_id, wait, data)

    async def _read_signals(self) -> None:
        while True:
            try:
                entry = await self._watcher.updates(timeout=60)
            except (nats.errors.TimeoutError, TimeoutError):
                continue
            if entry is None:
                continue  # the end of the values present at start
            try:
                await self._on_signal(entry)
            except Exception as exc:  # one bad signal must not stop the others
                self.report(f"signal {entry.key} not taken: {exc}")

    async def _on_signal(self, entry) -> None:
        run_id, _, name = entry.key.partition(".")
        if entry.operation is not None or not entry.value:  # deleted or purged
            self.signals.pop((run_id, name), None)
            return
        value = parse_value(entry.value)
        self.signals[(run_id, name)] = (value, entry.revision)
        await self._take_signal(run_id, name, value, entry.revision)

    async def _take_signal(self, run_id: str, name: str, value: Any, revision: int) -> None:
        for (rid, step_id), wait in list(self.waiting.get(name, {}).items()):
            if rid != run_id:
                continue
            if not self._still_waiting(rid, step_id, wait):
                self.waiting[name].pop((rid, step_id), None)
                continue
            self.signals.pop((run_id, name), None)
            with contextlib.suppress(KeyWrongLastSequenceError, KeyNotFoundError, NotFoundError):
                await self._kv_signals.delete(f"{run_id}.{name}", last=revision)
            await self._matched(run_id, step_id, wait, value)
            return

    # -- approvals -----------------------------------------------------------------------

    async def request_approval(
        self, run_id: str, step_id: str, gate: ApprovalGate, expires_at: float
    ) -> None:
        key = approval_key(run_id, step_id)
        record = {
            "token": secrets.token_hex(32),
            "run_id": run_id,
            "step_id": step_id,
            "created_at": format_time(time.time()),
            "expires_at": format_time(expires_at),
        }
        if gate.approvers:
            record["approvers"] = list(gate.approvers)
        try:
            await self._kv_tokens.create(key, protocol.dumps(record))
        except KeyWrongLastSequenceError:  # issued before a restart: the same token
            record = json.loads((await self._kv_tokens.get(key)).value)
        payload: dict[str, Any] = {
            "token": record["token"],
            "run_id": run_id,
            "step_id": step_id,
            "subject": gate.subject,
            "expires_at": record["expires_at"],
        }
        if gate.description:
            payload["description"] = gate.description
        if gate.metadata:
            payload["metadata"] = gate.metadata
        if gate.approvers:
            payload["approvers"] = list(gate.approvers)
        await self.publish(Event(APPROVAL_REQUESTED, run_id, step_id=step_id, payload=payload))
        if gate.subject:
            await self.nc.publish(gate.subject, protocol.dumps(payload))

    async def run_ended(self, state: RunState) -> None:
        """A run ended: its open approvals' tokens go (a late decision finds none)."""
        for step_id, st in state.steps.items():
            if isinstance(st.detail, ApprovalGate) and st.status == CANCELLED:
                with contextlib.suppress(KeyNotFoundError, NotFoundError):
                    await self._kv_tokens.delete(approval_key(state.run_id, step_id))

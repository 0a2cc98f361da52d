"""Consumes WORKFLOW_HISTORY, applies ``dag.advance`` and performs the actions it returns.

It holds no state that replay cannot rebuild: on start it reads the history with an
ordered consumer, folds every run's events into its state (dropping the actions), then asks
``dag.resume`` what each unfinished run still needs (undelivered decisions, timers). With
``snapshot_restart`` it first loads the runs that were active from their snapshots
(``runtime.snapshots``) and reads only the history after the last checkpoint; an event at
or before a run's ``last_seq`` is then not applied again.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import logging
import time
from collections import Counter, deque
from collections.abc import Callable

import nats.errors
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js import api as js_api

from dagnats_nb.dag import WorkflowDef
from dagnats_nb.dag.advance import advance, compact, max_runs, resume, start
from dagnats_nb.dag.fold import GATE_TIMERS
from dagnats_nb.dag.state import (
    AwaitAdmission,
    AwaitEvent,
    CancelChild,
    DeadLetter,
    Dispatch,
    Publish,
    RequestApproval,
    Respond,
    RunEnded,
    RunState,
    SetTimer,
    SpawnChild,
    Timer,
    TimerKey,
    result_applied,
)
from dagnats_nb.runtime import requeue
from dagnats_nb.runtime.admission import Admission
from dagnats_nb.runtime.eviction import Eviction
from dagnats_nb.runtime.family import Family
from dagnats_nb.runtime.gates import Correlator
from dagnats_nb.runtime.records import RunRecords
from dagnats_nb.runtime.restart import SnapshotRestart
from dagnats_nb.runtime.snapshots import Snapshots
from dagnats_nb.runtime.sticky import FALLBACK_CHECK, StickyRouter, still_waiting
from dagnats_nb.runtime.waiting import Waits
from dagnats_nb.transport.errors import store_error
from dagnats_nb.transport.stores import DefinitionStore, PayloadStore
from dagnats_nb.wire import protocol

log = logging.getLogger("dagnats_nb.runtime.orchestrator")
YIELD_EVERY = 32  # actions performed, or history messages applied, between two loop turns
PROGRESS_EVERY = 100_000  # history messages replayed between two progress lines


class Orchestrator(Waits, SnapshotRestart, Eviction):
    def __init__(
        self,
        nc: NATS,
        js: JetStreamContext,
        defs: DefinitionStore,
        payloads: PayloadStore,
        *,
        snapshot_restart: bool = False,
    ) -> None:
        self.nc = nc
        self.js = js
        self.defs = defs
        self.payloads = payloads
        self.runs: dict[str, RunState] = {}
        self.run_defs: dict[str, WorkflowDef] = {}
        self.ready = asyncio.Event()
        self.replaying = True
        self.replayed_events = 0
        self.replay_seconds = 0.0
        self.last_seq = 0
        self.errors: deque[str] = deque(maxlen=50)
        # Totals since start (replay included), for rates: steps_completed, steps_failed,
        # runs_started, runs_completed, runs_failed, runs_cancelled.
        self.counters: Counter[str] = Counter()
        self.store_full: str | None = None  # why waits fail now (a full store, a dead server)
        self._waiters: dict[str, list[asyncio.Future]] = {}
        self._watchers: dict[str, list[Callable[[RunState], None]]] = {}
        self._timers: dict[TimerKey, asyncio.TimerHandle] = {}
        self._due: deque[tuple[RunState, list]] = deque()  # timers' decisions to perform
        self._firing: asyncio.Future | None = None
        self._replay_until = 0
        self._replay_started = 0.0
        self._sub = None
        self.records: RunRecords | None = None
        self.snapshots: Snapshots | None = None
        self.snapshot_restart = snapshot_restart
        self.restored_from = 0  # the checkpoint a snapshot restart began after (0: none)
        self.evicts = snapshot_restart  # finished runs leave memory (runtime.eviction)
        self._init_eviction()
        self._pending: set[asyncio.Future] = set()

    async def start(self) -> None:
        self.records = RunRecords(await self.js.key_value("workflow_runs"), self._recorded_end)
        self.sticky = StickyRouter(self.js)
        await self.sticky.start()
        self.gates = Correlator(
            self.js, self.nc, self.runs, self._publish_event, self.errors.append
        )
        await self.gates.start()
        self.family = Family(self.js, self.defs, self.runs, self._publish_event, self._ended_run)
        self.admission = Admission(self._publish_event, self._track)
        info = await self.js.stream_info(protocol.HISTORY_STREAM)
        self._replay_until = info.state.last_seq
        self._replay_started = time.perf_counter()
        history_id = info.created.isoformat() if info.created else ""
        self.snapshots = Snapshots(
            self.js,
            self.runs,
            self.defs,
            lambda: self.last_seq,
            history_id,
            self.payloads.limit,
            keep_ended=self.evicts,
        )
        start_seq = await self._restore(info.state.last_seq) if self.snapshot_restart else 0
        config = None
        if start_seq:  # the history after the checkpoint
            config = js_api.ConsumerConfig(
                deliver_policy=js_api.DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=start_seq
            )
        self._sub = await self.js.subscribe(
            "history.>",
            stream=protocol.HISTORY_STREAM,
            config=config,
            ordered_consumer=True,
            cb=self._on_msg,
            pending_msgs_limit=-1,
            pending_bytes_limit=-1,
            # nats-py recreates an ordered consumer from the last stream sequence it got
            # after two missed heartbeats (its server died, as in a cluster's failover):
            # 1 s heartbeats make that 2 s instead of 10.
            idle_heartbeat=1.0,
        )
        if self._replay_until <= self.last_seq or info.state.messages == 0:
            await self._end_replay()
        self.snapshots.start()
        await self.ready.wait()

    async def stop(self) -> None:
        if self._firing is not None:
            self._firing.cancel()
        if getattr(self, "gates", None) is not None:
            await self.gates.stop()
        for handle in self._timers.values():
            handle.cancel()
        self._timers.clear()
        if self._sub is not None:
            with contextlib.suppress(nats.errors.Error, ValueError):
                await self._sub.unsubscribe()
            self._sub = None
        if self._pending:
            await asyncio.wait(self._pending, timeout=5)
        if self.records is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.records.close(), 5)
        if self.snapshots is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.snapshots.close(), 5)
        for futs in self._waiters.values():
            for f in futs:
                if not f.done():
                    f.cancel()

    # -- consuming -----------------------------------------------------------------------

    async def _on_msg(self, msg) -> None:
        try:
            seq = protocol.stream_seq(msg)
            if seq <= self.last_seq:  # sent again by a recreated consumer: applied once
                self.counters["history_redelivered"] += 1
                return
        except Exception as exc:
            log.warning("history message skipped: %s", exc)
            return
        await self._apply_message(msg, seq)
        self.last_seq = max(self.last_seq, seq)
        if not seq % YIELD_EVERY:  # nats-py runs a queue of callbacks in one turn
            await asyncio.sleep(0)
        if self.replaying:
            self.replayed_events += 1
            if not self.replayed_events % PROGRESS_EVERY:
                self._tell_progress(seq)
            if seq >= self._replay_until:
                await self._end_replay()

    async def _apply_message(self, msg, seq: int) -> None:
        event = None
        try:
            event = protocol.history_event(msg.data, msg.subject, seq)
            await self.apply(event)
        except Exception as exc:  # one bad event must not stop the engine
            if event is None:  # a message that is no event of its run: one line
                log.warning("history message %s skipped: %s", seq, exc)
            else:  # an event it could not apply: a bug, with its trace
                log.exception("cannot apply history message %s: %s", seq, exc)
            self.errors.append(f"history message {seq} skipped: {exc}")

    async def apply(self, event: protocol.Event) -> None:
        run_id = event.run_id
        if event.type == protocol.WORKFLOW_STARTED:
            if run_id in self.runs:
                return
            if run_id in self.expected:  # new: made (or found unused) by our facade
                self.expected.discard(run_id)
            elif await self._started_before(run_id, event.seq):
                return
            h, defn = await self.defs.for_started(event.payload)
            if isinstance(event.payload, dict) and not event.payload.get("def_hash"):
                event.payload["def_hash"] = h  # a run started by Go: its tasks name the version
            state, actions = start(defn, event)
            self.run_defs[run_id] = defn
        else:
            old = self.runs.get(run_id)
            if old is None and event.type == protocol.STEP_REPLAYED:
                old = await self._reopened(run_id, event.seq)  # ended before a restart
            if old is None:
                return  # history of a run whose start was trimmed by retention
            if event.seq and event.seq <= old.last_seq:  # in the run's snapshot already
                return
            defn = self.run_defs[run_id]
            state, actions = advance(defn, old, event)
            if state.terminal and not old.terminal:
                self.counters[f"runs_{state.status}"] += 1
            elif old.terminal and not state.terminal:  # a dead-letter replay reopened it
                self.counters["runs_reopened"] += 1
            if state.bound_worker != old.bound_worker and not self.replaying:
                self._track(self.sticky.bind(state))
        if event.type in COUNTED:
            self.counters[COUNTED[event.type]] += 1
        if state.extended is not None:  # a planner's steps joined it: views follow
            self.run_defs[run_id] = state.extended
        self.runs[run_id] = state
        self.snapshots.dirty(run_id)
        if not self.replaying:
            if not state.terminal:  # `dagnats run list / status` follow it while it runs
                self.records.due(state)
            self._notify(run_id, state)
            await self.execute(state, actions)
        elif state.terminal:
            self._wake(run_id)
        if state.terminal:
            self.runs[run_id] = compact(state)
            self._evict_if_done(run_id)

    def _tell_progress(self, seq: int) -> None:
        elapsed = time.perf_counter() - self._replay_started
        log.warning(
            "replaying the history: message %d of %d, %.0f s", seq, self._replay_until, elapsed
        )

    async def _end_replay(self) -> None:
        if not self.replaying:
            return
        self.replaying = False
        self.replay_seconds = time.perf_counter() - self._replay_started
        self._end_eviction_replay()
        for run_id, state in list(self.runs.items()):
            if state.outbox or not state.terminal:
                try:
                    await self.execute(state, resume(self.run_defs[run_id], state))
                except Exception as exc:  # one run must not keep the engine from ready
                    log.exception("cannot resume run %s: %s", run_id, exc)
                    self.errors.append(f"run {run_id} not resumed: {exc}")
            elif self.evicts:  # its final record may never have been stored: store it now
                self._track(self._record_again(state))
        by_start = sorted(self.runs.values(), key=lambda s: s.started_at)
        self.admission.rebuild((s, max_runs(self.run_defs[s.run_id])) for s in by_start)
        await self.gates.listen()
        self.ready.set()
        self._track(requeue.send_lost(self))  # tasks refused before the last stop

    # -- actions -------------------------------------------------------------------------

    async def execute(self, state: RunState, actions: list) -> None:
        """Perform the core's actions, in order. Publishes are pipelined: each is written at
        once and its ack handled when it comes (a failure is reported as a fault)."""
        for i, action in enumerate(actions, 1):
            if not i % YIELD_EVERY:  # a map's 1,000 dispatches: the workers start meanwhile
                await asyncio.sleep(0)
            if isinstance(action, Publish):
                await self._publish_event(action.event)
            elif isinstance(action, Dispatch):
                await self._dispatch(action.task, action.queued)
            elif isinstance(action, SetTimer):
                self._set_timer(state.run_id, action)
            elif isinstance(action, DeadLetter):
                self._track(self._dead_letter(action))
            elif isinstance(action, AwaitEvent):
                self.gates.await_event(state.run_id, action.step_id, action.wait)
            elif isinstance(action, RequestApproval):
                self._track(
                    self.gates.request_approval(
                        state.run_id, action.step_id, action.gate, action.expires_at
                    )
                )
            elif isinstance(action, SpawnChild):
                self._track(self.family.spawn(state, action))
            elif isinstance(action, CancelChild):
                self._track(self.family.cancel(action))
            elif isinstance(action, Respond):
                self._track(self._respond(state.run_id, action.response))
            elif isinstance(action, AwaitAdmission):
                self.admission.wait(state.run_id, action.workflow, action.limit)
            elif isinstance(action, RunEnded):
                self._cancel_timers(state)
                self.admission.ended(state)
                self._track(self._ended(state))

    async def _ended(self, state: RunState) -> None:
        """A run ended: its record, then its waiters (who may read the record next)."""
        recorded = await self.records.now(state)
        self._wake(state.run_id)
        await self.gates.run_ended(state)
        if state.parent_run_id:
            await self.family.tell_parent(state)
        if recorded:  # reads of it can go to its record now: it may leave memory
            self._recorded_end(state)

    def _track(self, coro) -> None:
        task = asyncio.ensure_future(coro)
        self._pending.add(task)
        task.add_done_callback(self._done)

    def _done(self, fut: asyncio.Future) -> None:
        self._pending.discard(fut)
        if fut.cancelled():
            return
        exc = fut.exception()
        if exc is None:
            self.store_full = None  # JetStream stores again: waits need not fail
        elif full := store_error(exc):
            self.report_fault(full, store_full=True)
        else:
            self.report_fault(f"{type(exc).__name__}: {exc}")

    async def _publish_event(self, event: protocol.Event) -> None:
        ack = await self.js.publish_async(
            protocol.history_subject(event.run_id),
            event.encode(),
            headers={"Nats-Msg-Id": event.msg_id},
        )
        self._pending.add(ack)
        ack.add_done_callback(self._done)

    async def _dispatch(self, task: protocol.TaskPayload, queued: protocol.Event) -> None:
        subject, data = await self._task_message(task)
        ack = await self.js.publish_async(subject, data, headers={"Nats-Msg-Id": task.msg_id})
        self._pending.add(ack)
        ack.add_done_callback(functools.partial(self._task_stored, task, subject, data))
        # step.queued right behind its task on the same connection, not after the task's
        # ack: a fast worker's step.started then never comes before it in the history (as
        # in Go). A task the server refuses is sent again while its step waits for it.
        await self._publish_event(queued)

    async def _task_message(self, task: protocol.TaskPayload) -> tuple[str, bytes]:
        """A task's subject and body (its input in the payload store when too large)."""
        data = task.encode()
        if len(data) > self.payloads.limit:
            ref = await self.payloads.put(task.input, f"{task.run_id}/{task.step_id}/input")
            wire = task.to_wire()
            wire["input"] = ref
            data = protocol.dumps(wire)
        subject = protocol.task_subject(task.task, task.run_id, task.group)
        defn = self.run_defs.get(task.run_id)
        if defn is not None and defn.sticky:
            subject = await self.sticky.subject(defn, self.runs.get(task.run_id), task)
            if defn.sticky == "soft" and subject.startswith("sticky."):
                self._watch_sticky(task, data)
        return subject, data

    def _watch_sticky(self, task: protocol.TaskPayload, data: bytes) -> None:
        """A soft run's task sent to its bound worker: re-send it to the shared queue if that
        worker disappears while the task waits."""
        loop = asyncio.get_running_loop()
        loop.call_later(FALLBACK_CHECK, lambda: self._track(self._sticky_fallback(task, data)))

    async def _sticky_fallback(self, task: protocol.TaskPayload, data: bytes) -> None:
        state = self.runs.get(task.run_id)
        if self._sub is None or not still_waiting(state, task):
            return
        if await self.sticky.alive(state.bound_worker):
            self._watch_sticky(task, data)
            return
        log.info(
            "worker %s is gone: task %s goes to the shared queue", state.bound_worker, task.task_id
        )
        self.counters["sticky_fallbacks"] += 1
        await self.js.publish(
            protocol.task_subject(task.task, task.run_id, task.group),
            data,
            headers={"Nats-Msg-Id": task.msg_id},
        )

    def _task_stored(
        self, task: protocol.TaskPayload, subject: str, data: bytes, ack: asyncio.Future
    ) -> None:
        self._done(ack)  # a refusal is reported as a fault (a full store ends waits)
        if not ack.cancelled() and ack.exception() is not None:
            self._track(self._send_again(task, subject, data))

    async def _send_again(self, task: protocol.TaskPayload, subject: str, data: bytes) -> None:
        """A task the server refused (a full task queue): sent again, with backoff, while
        its step still waits for it (its step.queued is in the history already)."""
        delay = 1.0
        while self._sub is not None and still_waiting(self.runs.get(task.run_id), task):
            await asyncio.sleep(delay)
            try:
                await self.js.publish(subject, data, headers={"Nats-Msg-Id": task.msg_id})
                return
            except Exception as exc:
                log.debug("task %s not stored yet: %s", task.task_id, exc)
                delay = min(delay * 2, 30.0)

    async def _respond(self, run_id: str, reply) -> None:
        """Go's respond message: status, headers, content type, base64 body (the value's
        JSON, as Go sends it)."""
        body = protocol.dumps(reply.body)
        message = {
            "status": reply.status,
            "headers": reply.headers,
            "content_type": reply.content_type,
            "body": base64.b64encode(body).decode(),
        }
        await self.nc.publish(protocol.response_subject(run_id), protocol.dumps(message))

    async def _dead_letter(self, action: DeadLetter) -> None:
        """A step that failed for good, as Go writes it to DEAD_LETTERS: the task as its
        body, the failure in ``Dagnats-Dlq-*`` headers."""
        task = action.task
        data = task.encode()
        if len(data) > self.payloads.limit:
            ref = await self.payloads.put(task.input, f"{task.run_id}/{task.step_id}/dead")
            data = protocol.dumps({**task.to_wire(), "input": ref})
        headers = protocol.dead_letter_headers(
            task, action.error, action.attempts, protocol.now_rfc3339()
        )
        subject = protocol.dead_subject(task.task, task.run_id, task.step_id)
        await self.js.publish(subject, data, headers=headers)

    def _set_timer(self, run_id: str, t: SetTimer) -> None:
        key = TimerKey.of(run_id, t)
        if key in self._timers:
            return
        delay = max(0.0, t.at - time.time())
        loop = asyncio.get_running_loop()
        self._timers[key] = loop.call_later(delay, self._fire, key, run_id, t)

    def _fire(self, key: TimerKey, run_id: str, t: SetTimer) -> None:
        self._timers.pop(key, None)
        state = self.runs.get(run_id)
        if state is None or state.terminal:
            return
        timer = Timer(time.time(), t.kind, run_id, t.step_id, t.map_index, t.seqno)
        state, actions = advance(self.run_defs[run_id], state, timer)
        self.runs[run_id] = state
        self.snapshots.dirty(run_id)
        self._notify(run_id, state)
        self._due.append((state, actions))
        if self._firing is None:  # one task performs what the timers due together decided
            self._firing = asyncio.ensure_future(self._fire_due())

    async def _fire_due(self) -> None:
        try:
            while self._due:
                state, actions = self._due.popleft()
                try:
                    await self.execute(state, actions)
                except Exception as exc:  # one run's timer must not stop the others
                    self.report_fault(f"timer of run {state.run_id}: {exc}")
        finally:
            self._firing = None

    def _cancel_timers(self, state: RunState) -> None:
        """An ended run's timers (a long approval timeout, say) go: they would only wake to
        find the run over. Its gate and run timeouts are named by its steps."""
        keys = [TimerKey(state.run_id, "run_timeout", "", None, state.reopened)]
        for sid, st in state.steps.items():
            if st.status != "pending":
                keys += [TimerKey(state.run_id, kind, sid, None, 0) for kind in GATE_TIMERS]
        for key in keys:
            handle = self._timers.pop(key, None)
            if handle is not None:
                handle.cancel()

    reading = property(lambda self: self._sub is not None, doc="Applying the history now.")

    def task_done(self, task: protocol.TaskPayload) -> bool:
        """Whether ``task``'s step (of a run replayed here) no longer waits for it: a task
        delivered again after its result was applied (a nats-server restarted after its
        disk filled forgets acknowledgements) is not run again. Never during replay."""
        state = self.runs.get(task.run_id) or self.recent.get(task.run_id)
        return not self.replaying and result_applied(state, task)


COUNTED = {
    protocol.STEP_COMPLETED: "steps_completed",
    protocol.MAP_INSTANCE_COMPLETED: "steps_completed",
    protocol.STEP_FAILED: "steps_failed",
    protocol.WORKFLOW_STARTED: "runs_started",
}

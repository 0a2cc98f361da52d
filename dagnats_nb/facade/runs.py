"""Starting, waiting on, cancelling and watching runs: a mixin of
:class:`~dagnats_nb.facade.engine.Engine`.

Each operation is a private coroutine run on the engine loop and its public pair from
:func:`~dagnats_nb.facade.twins.twins`; ``_start_run`` is also what the HTTP adapter's
webhooks call on the engine loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nats.js.errors import APIError, NotFoundError

from dagnats_nb.dag import WorkflowDef, load_workflow
from dagnats_nb.dag.advance import replay
from dagnats_nb.dag.fork import FORKED_FROM, REUSED, plan_fork, rerun_seeds
from dagnats_nb.dag.state import RUN_TERMINAL, RunState
from dagnats_nb.dag.validate import check
from dagnats_nb.errors import RunError
from dagnats_nb.facade import tokens
from dagnats_nb.facade.hints import hint, task_types, unserved_message
from dagnats_nb.facade.orchestration import GO_ORCHESTRATOR
from dagnats_nb.facade.run import Run, RunTimeout
from dagnats_nb.facade.twins import stamped, twins
from dagnats_nb.transport.errors import store_error
from dagnats_nb.wire import protocol

REFUSED_WAIT = 5.0  # seconds a start waits while JetStream refuses the workers' results
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


@dataclass(frozen=True, slots=True)
class _Source:
    """A run a fork starts from, as read from its history."""

    run_id: str
    target: tuple[str, WorkflowDef]  # its definition's hash and the definition
    state: RunState
    input: Any


def new_run_id() -> str:
    """A time-ordered id (ULID layout: 48-bit milliseconds + 80 random bits, base32)."""
    value = (int(time.time() * 1000) << 80) | secrets.randbits(80)
    return "".join(_CROCKFORD[(value >> (5 * i)) & 31] for i in range(25, -1, -1))


class Runs:
    """Runs started and steered through the engine (see the module docstring)."""

    async def _start_run(
        self,
        workflow: str | WorkflowDef | dict,
        input: Any = None,
        *,
        run_id: str | None = None,
        exists_ok: bool = False,
    ) -> Run:
        """Start a run of a registered workflow (or register this definition first); its
        :class:`Run` at once. When a step's task has no live worker (see
        :meth:`unserved_tasks`) an :class:`~dagnats_nb.errors.UnservedTaskWarning` names it
        and ``run.unserved`` lists those tasks: the run's steps wait for a worker.

        ``run_id`` names the run (a NATS token); a run of that id that exists already is a
        RunError, or, with ``exists_ok``, that run (an idempotent start: its first input
        stays)."""
        h, defn = await self._definition(workflow)
        if run_id is not None:
            if not protocol.is_token(run_id):
                raise RunError(f"run id {run_id!r} cannot be used in a NATS subject")
            if await self._history(run_id, limit=1):
                if exists_ok:
                    return Run(self, run_id, defn.name)
                raise RunError(
                    f"run {run_id} exists already (it keeps its input): start the new run "
                    "with another run_id, or none to get a fresh one"
                )
        run_id = run_id or new_run_id()
        encoded = _encoded_input(defn.name, input)
        # the event carries the definition too: the input goes to the store sooner
        needed = len(encoded) + self.defs.size(h, defn)
        value = await self.payloads.shrink(input, needed, f"{run_id}/input")
        payload = {"workflow_def": self.defs.wire(h, defn), "input": value, "def_hash": h}
        return await self._publish_start(run_id, defn, payload)

    start_run, start_run_async = twins(_start_run, lambda run: _started(run, 3))

    async def _fork(
        self,
        run_id: str,
        from_step: str,
        input: Any = None,
        workflow: str | WorkflowDef | dict | None = None,
    ) -> Run:
        """Start a new run that reuses the recorded outputs of run ``run_id``'s completed
        steps that do not depend on ``from_step``, and runs ``from_step`` and everything
        downstream of it (see ``dag.fork`` for the rules); its :class:`Run` at once, with
        ``forked_from`` and ``reused`` (the steps it keeps).

        ``input`` None keeps the source's input; a different one runs every step again.
        ``workflow`` None follows the source's version; a name its latest registered
        version (an edited ``%%dagnats workflow`` cell), a definition that one: a step whose
        definition changed runs again, with what depends on it. Its history says what it
        was forked from: ``workflow.started`` carries ``forked_from`` and ``reused``."""
        source = await self._fork_source(run_id)
        target = source.target if workflow is None else await self._fork_target(source, workflow)
        return await self._start_fork(source, target, (from_step,), input)

    fork, fork_async = twins(_fork, lambda run: _started(run, 3))

    async def _rerun(
        self, run_id: str, input: Any = None, workflow: str | WorkflowDef | dict | None = None
    ) -> Run:
        """Run ``run_id`` again after an edit, paying only for what changed: a fork (see
        :meth:`fork`) against the workflow's latest registered version (or ``workflow``)
        from every step whose definition changed (or is new) and every step whose task this
        engine now serves with a handler of another version than the one that ran it (the
        ``handler_version`` its result recorded; Go workers record none). RunError (one
        line) when nothing changed and ``input`` is the same."""
        source = await self._fork_source(run_id)
        name = source.target[1].name if workflow is None else workflow
        target = await self._fork_target(source, name)
        seeds = rerun_seeds(
            source.target[1], target[1], source.state.versions or {}, self._serving_versions()
        )
        if not seeds:
            if input is None or _canonical(input) == _canonical(source.input):
                raise RunError(
                    f"nothing changed since run {run_id}: its workflow '{target[1].name}' and "
                    "the handlers that ran it are the same; edit the workflow or a handler, "
                    "or fork from a step (eng.fork / %dagnats fork RUN STEP)"
                )
            seeds = tuple(target[1].topological_order[:1])
        return await self._start_fork(source, target, seeds, input)

    rerun, rerun_async = twins(_rerun, lambda run: _started(run, 3))

    def _serving_versions(self) -> dict[str, str]:
        """Task -> the version of the handler this engine serves it with."""
        if self.host is None:
            return {}
        return {w.handler.task: w.handler.version for w in list(self.host.workers.values())}

    async def _fork_source(self, run_id: str) -> _Source:
        """The run a fork starts from, read from its history (the orchestrator's copy of a
        finished run has dropped its steps' outputs): its definition, state (with the
        handler versions its results recorded) and input."""
        await self._fork_needs_our_orchestrator()
        events = await self._history(run_id)
        if not events or events[0].type != protocol.WORKFLOW_STARTED:
            raise RunError(f"no run with id {run_id} to fork: list runs with eng.runs()")
        started = events[0].payload
        h, defn = await self.defs.for_started(started)
        state = replay(defn, events)
        kept = await self.payloads.expand(protocol.started_input(started), run_id)
        return _Source(run_id, (h, defn), state, kept)

    async def _fork_target(
        self, source: _Source, workflow: str | WorkflowDef | dict
    ) -> tuple[str, WorkflowDef]:
        h, defn = await self._definition(workflow)
        if defn.name != source.target[1].name:
            raise RunError(
                f"cannot fork run {source.run_id} of workflow '{source.target[1].name}' "
                f"against workflow '{defn.name}': pass a version of "
                f"'{source.target[1].name}' (or none: its own)"
            )
        return h, defn

    async def _start_fork(
        self,
        source: _Source,
        target: tuple[str, WorkflowDef],
        seeds: tuple[str, ...],
        input: Any,
    ) -> Run:
        """Start the fork of ``source`` against ``target`` from the steps ``seeds``."""
        run_id, (source_hash, source_def) = source.run_id, source.target
        h, defn = target
        value = source.input if input is None else input
        new_input = input is not None and _canonical(input) != _canonical(source.input)
        plan = plan_fork(
            source_def, source.state, defn, seeds[0], new_input=new_input, also=seeds[1:]
        )
        new_id = new_run_id()
        encoded = _encoded_input(defn.name, value)
        needed = len(encoded) + self.defs.size(h, defn)
        value = await self.payloads.shrink(value, needed, f"{new_id}/input")
        reused = {sid: await self.payloads.expand(out, run_id) for sid, out in plan.reused.items()}
        room = self.payloads.limit - needed - 200  # forked_from and the keys
        reused = await self._fitted(reused, room, new_id)
        forked_from = {"run_id": run_id, "step_id": seeds[0], "def_hash": source_hash}
        if len(seeds) > 1:
            forked_from["also"] = list(seeds[1:])
        payload = {
            "workflow_def": self.defs.wire(h, defn),
            "input": value,
            "def_hash": h,
            FORKED_FROM: forked_from,
            REUSED: reused,
        }
        run = await self._publish_start(new_id, defn, payload)
        run.forked_from, run.reused = run_id, list(plan.reused)
        run.fork_steps = list(seeds)
        return run

    async def _fitted(self, outputs: dict[str, Any], room: int, run_id: str) -> dict[str, Any]:
        """``outputs`` with the largest stored as the run's own ``$ref`` (a copy: refs are
        read only by the run that made them, or its children) until the rest fits in
        ``room`` bytes of its ``workflow.started`` event."""
        sizes = {sid: len(protocol.dumps(out)) for sid, out in outputs.items()}
        total = sum(sizes.values())
        out = dict(outputs)
        for sid in sorted(sizes, key=sizes.__getitem__, reverse=True):
            if total <= room:
                break
            out[sid] = await self.payloads.put(outputs[sid], f"{run_id}/{sid}/output")
            total -= sizes[sid] - len(protocol.dumps(out[sid]))
        return out

    async def _fork_needs_our_orchestrator(self) -> None:
        """RunError when the Go engine orchestrates this NATS: it has no forks and would run
        every step of one again."""
        if self.orchestrator is not None:
            return
        try:
            await self._js.consumer_info(protocol.HISTORY_STREAM, GO_ORCHESTRATOR)
        except NotFoundError:
            return
        raise RunError(
            "cannot fork a run here: the Go dagnats engine orchestrates this NATS, and it "
            "has no forks (it would run every step again); start the fork where a "
            "dagnats-nb engine orchestrates, or start a new run with eng.start_run"
        )

    async def _definition(self, workflow: str | WorkflowDef | dict) -> tuple[str, WorkflowDef]:
        """The registered definition a name names (its latest), or this definition stored
        (registered) first; with its hash."""
        if isinstance(workflow, str) and not _looks_like_definition(workflow):
            h, defn = await self.defs.get(workflow)
            check(defn)  # registered by another engine (Go): step types we cannot run
            return h, defn
        defn = load_workflow(workflow)
        return await self._store_definition(defn), defn

    async def _publish_start(self, run_id: str, defn: WorkflowDef, payload: dict) -> Run:
        """Publish the ``workflow.started`` event of a new run (an id just made, or one
        whose history was just found empty); the run's :class:`Run`."""
        event = protocol.Event(type=protocol.WORKFLOW_STARTED, run_id=run_id, payload=payload)
        gate = self.host.gate if self.host is not None else None
        publish = self._js.publish(
            protocol.history_subject(run_id), event.encode(), headers={"Nats-Msg-Id": event.msg_id}
        )
        if self.orchestrator is not None:  # it need not ask the server whether it is new
            self.orchestrator.expect(run_id)
        try:
            if gate is not None and gate.refusing:  # fail fast; a start that goes through
                await asyncio.wait_for(publish, REFUSED_WAIT)  # tells the workers
                gate.accept()
            else:
                await publish
        except APIError as exc:
            self._unexpect(run_id)
            msg = store_error(exc)
            raise RunError(msg or f"cannot start a run of '{defn.name}': {exc}") from None
        except TimeoutError:
            self._unexpect(run_id)
            raise self._nats_failure(None) from None
        if self.orchestrator is not None:
            self.orchestrator.store_full = None  # it stored the start: waits need not fail
        run = Run(self, run_id, defn.name)
        run.unserved = await self._missing(task_types(defn))
        return run

    def _unexpect(self, run_id: str) -> None:
        if self.orchestrator is not None:
            self.orchestrator.expected.discard(run_id)

    async def _run(
        self, workflow: str | WorkflowDef | dict, input: Any = None, *, timeout: float | None = 60
    ) -> Run:
        """Start a run and wait for it to end (completed, failed or cancelled); tasks no
        worker serves are named when it starts, as :meth:`start_run` does."""
        run = await self._start_run(workflow, input)
        await self._wait_run(run.id, timeout)
        return run

    def _run_blocking(
        self, workflow: str | WorkflowDef | dict, input: Any = None, *, timeout: float | None = 60
    ) -> Run:
        run = _started(self._call(self._start_run(workflow, input)), 2)  # before the wait
        self._call(self._wait_run(run.id, timeout))
        return run

    async def _run_awaitable(
        self, workflow: str | WorkflowDef | dict, input: Any = None, *, timeout: float | None = 60
    ) -> Run:
        run = _started(await self._call_async(self._start_run(workflow, input)), 2)
        await self._call_async(self._wait_run(run.id, timeout))
        return run

    run, run_async = stamped(_run, _run_blocking, _run_awaitable)
    del _run_blocking, _run_awaitable  # now run and run_async

    async def _wait_run(self, run_id: str, timeout: float | None = 60) -> str:
        """Wait until the run ends; its status. Raises :class:`RunTimeout` after ``timeout``
        seconds (``run.wait()`` is the same on a :class:`Run`)."""
        try:
            if self.orchestrator is not None:
                state = await asyncio.wait_for(self.orchestrator.wait(run_id), timeout)
                return state.status
            return await asyncio.wait_for(self._poll_run(run_id), timeout)
        except TimeoutError:
            summary = await self._run_state(run_id) or {"status": "pending"}
            workflow = summary.get("workflow") or "?"
            refused = self.host.gate.reason if self.host is not None else None
            todo = (
                f"JetStream refuses to store results ({refused}): see eng.health()"
                if refused
                else f"wait longer, or look at eng.steps('{run_id}') to see which step waits"
            )
            raise RunTimeout(
                f"run {run_id} of workflow '{workflow}' is still {summary['status']} after "
                f"{timeout}s: {todo}"
            ) from None

    wait_run, wait_run_async = twins(_wait_run)

    async def _poll_run(self, run_id: str) -> str:
        """An attached engine waits for the run's KV summary to say it ended."""
        while True:
            summary = await self._kv_run(run_id)
            if summary and summary["status"] in RUN_TERMINAL:
                return summary["status"]
            await asyncio.sleep(0.2)

    async def _cancel_run(self, run_id: str, reason: str = "cancelled by user") -> None:
        """Cancel a run: queued and running steps are abandoned, the run ends ``cancelled``."""
        event = protocol.Event(
            type=protocol.WORKFLOW_CANCELLED, run_id=run_id, payload={"reason": reason}
        )
        await self._js.publish(
            protocol.history_subject(run_id), event.encode(), headers={"Nats-Msg-Id": event.msg_id}
        )

    cancel_run, cancel_run_async = twins(_cancel_run)

    async def _watch(self, run_id: str, callback: Callable[[Any], None]) -> Callable[[], None]:
        """Call ``callback(state)`` (a ``dag.state.RunState``) on the engine thread after
        every change of the run, and once at once; returns ``unwatch()``. Keep the callback
        quick and thread-safe: it runs on the engine loop."""
        self._need_orchestrator("watch a run")
        o = self.orchestrator
        unwatch = o.watch(run_id, callback)
        if run_id not in o.runs and o.known_ended(run_id) is None:
            stored = await self._stored(run_id)  # ended and left memory: its record's state
            if stored is not None and run_id not in o.runs:
                o._safe_call(callback, stored[1])
        loop = asyncio.get_running_loop()

        def unwatch_from_any_thread() -> None:
            with contextlib.suppress(RuntimeError):  # the engine stopped: nothing to unwatch
                loop.call_soon_threadsafe(unwatch)

        return unwatch_from_any_thread

    watch, watch_async = twins(_watch)

    async def _subscribe_tokens(
        self, run_id: str, step_id: str, callback: Callable[[dict[str, Any]], None]
    ) -> Callable[[], None]:
        """Call ``callback(chunk)`` on the engine thread for every message a streaming step
        sends (``{"delta", "seq", "attempt"[, "map_index"]}``, and ``{"done": true, ...}``
        at the end of each attempt); returns ``unsubscribe()``. For live views: keep the
        callback quick. ``run.stream(step_id)`` iterates the tokens instead."""
        return await tokens.subscribe(self._nc, run_id, step_id, callback)

    subscribe_tokens, subscribe_tokens_async = twins(_subscribe_tokens)


def _started(run: Run, stacklevel: int) -> Run:
    """Warn in the caller's thread when the run's tasks have no worker; ``stacklevel``: the
    caller's line, counted from here (1: this function's caller)."""
    if run.unserved:
        hint(unserved_message(run.workflow, run.unserved), stacklevel + 1)
    return run


def _encoded_input(workflow: str, value: Any) -> bytes:
    """A run's input as it goes on the wire; RunError (one line) for what JSON, or the
    wire's encoder, cannot carry: NaN, objects, nesting deeper than 255, integers beyond 64
    bits, lone surrogates."""
    try:
        json.dumps(value, allow_nan=False)  # NaN and infinities (orjson would write null)
        return protocol.dumps(value)
    except (TypeError, ValueError, RecursionError) as exc:
        why = str(exc).split("\n")[0] or type(exc).__name__
        raise RunError(
            f"input of workflow '{workflow}' cannot be sent as JSON ({why}): pass dicts, "
            "lists, strings, numbers (64-bit integers), booleans or None, nested less than "
            "255 deep"
        ) from None


def _canonical(value: Any) -> str:
    """A JSON value as text that equal values share (keys sorted)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def _looks_like_definition(text: str) -> bool:
    t = text.lstrip()
    return t.startswith("{") or "\n" in t or Path(text).suffix in (".json", ".yaml", ".yml")

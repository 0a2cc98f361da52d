"""The runtime facade: wires server, resources, orchestrator and workers on one loop thread.

Every public method is sync and has an ``*_async`` twin that can be awaited from any event
loop (top-level ``await`` in Jupyter included).
"""

from __future__ import annotations

import asyncio
import atexit
import json
import logging
import os
import secrets
import time
import weakref
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nats
import nats.errors
from nats.js.errors import APIError, KeyNotFoundError, NoKeysError, NotFoundError

from dagnats_nb.config import Settings, load_settings
from dagnats_nb.dag import WorkflowDef, load_workflow
from dagnats_nb.dag.advance import replay
from dagnats_nb.dag.state import RUN_TERMINAL
from dagnats_nb.errors import BackupError, DagnatsError, RunError, ServerError
from dagnats_nb.facade import extensions
from dagnats_nb.facade.observing import Observing
from dagnats_nb.facade.run import Run, RunTimeout
from dagnats_nb.facade.views import events_frame, runs_frame, steps_frame
from dagnats_nb.observe import sampler
from dagnats_nb.ops import backup
from dagnats_nb.runtime import dead_letters
from dagnats_nb.runtime.capacity import share_capacity
from dagnats_nb.runtime.dead_letters import dead_letters_frame, read_dead_letters
from dagnats_nb.runtime.handlers import make_handler
from dagnats_nb.runtime.host import WorkerHost
from dagnats_nb.runtime.loop import LoopThread
from dagnats_nb.runtime.orchestrator import Orchestrator
from dagnats_nb.runtime.threads import DaemonThreadPool
from dagnats_nb.runtime.workers import TaskWorker, ensure_task_consumer, new_worker_id
from dagnats_nb.server.datadir import require_engine_url
from dagnats_nb.server.process import EmbeddedServer
from dagnats_nb.transport import jetstream, provision
from dagnats_nb.transport.connect import close_connection, connect
from dagnats_nb.transport.errors import store_error
from dagnats_nb.transport.stores import DefinitionStore, PayloadStore
from dagnats_nb.wire import protocol, resources

log = logging.getLogger("dagnats_nb")

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def new_run_id() -> str:
    """A time-ordered id (ULID layout: 48-bit milliseconds + 80 random bits, base32)."""
    value = (int(time.time() * 1000) << 80) | secrets.randbits(80)
    return "".join(_CROCKFORD[(value >> (5 * i)) & 31] for i in range(25, -1, -1))


class Engine(Observing):
    """A dagnats engine: embedded (``Engine.start``) or attached (``Engine.connect``)."""

    def __init__(self, settings: Settings, *, embedded: bool) -> None:
        self.settings = settings
        self.embedded = embedded
        self.server: EmbeddedServer | None = None
        self.url: str | None = None
        self.worker_id = new_worker_id()
        self._loop: LoopThread | None = None
        self._nc = None
        self._js = None
        self.defs: DefinitionStore | None = None
        self.payloads: PayloadStore | None = None
        self.orchestrator: Orchestrator | None = None
        self.host: WorkerHost | None = None  # this process's task workers
        self._executor: DaemonThreadPool | None = None
        self.started_at: float | None = None
        self._dlq_samples: deque[tuple[float, int]] = deque(maxlen=1000)
        self._started = {
            "server": False,
            "resources": False,
            "orchestrator": False,
            "workers": False,
        }
        self.extensions: list[extensions.Extension] = []  # adapters plugged in (HTTP...)
        self._sampler: sampler.Sampler | None = None
        self.http_url: str | None = None  # where /health and /ready answer (http_addr set)
        self.llm = None  # the built-in llm task type (dagnats_nb.llm.LLMService)
        self._paused: list | None = None  # the handlers to start again on resume()

    add_extension = staticmethod(extensions.add_extension)

    # -- life cycle ---------------------------------------------------------------------

    @classmethod
    def start(
        cls,
        data_dir: str | os.PathLike | None = None,
        config: str | os.PathLike | None = None,
        **settings: Any,
    ) -> Engine:
        """Start an embedded standalone engine (nats-server child, orchestrator, workers)."""
        cfg = load_settings(config, data_dir=data_dir, **settings)
        eng = cls(cfg, embedded=True)
        eng._boot()
        return eng

    @classmethod
    async def start_async(
        cls,
        data_dir: str | os.PathLike | None = None,
        config: str | os.PathLike | None = None,
        **settings: Any,
    ) -> Engine:
        return await asyncio.to_thread(cls.start, data_dir, config, **settings)

    @classmethod
    def connect(
        cls,
        data_dir: str | os.PathLike | None = None,
        config: str | os.PathLike | None = None,
        *,
        url: str | None = None,
        **settings: Any,
    ) -> Engine:
        """Attach to the engine that runs on ``data_dir`` (or at ``url``) from another process.

        An attached engine reads status, runs and events, starts and cancels runs; the
        owning engine's orchestrator executes them.
        """
        cfg = load_settings(config, data_dir=data_dir, **settings)
        eng = cls(cfg, embedded=False)
        if url is None:
            url = require_engine_url(cfg.data_dir)
        eng.url = url
        eng._loop = LoopThread("dagnats-client")
        try:
            eng._loop.call(eng._connect(), timeout=15)
        except BaseException:
            eng._loop.close()
            raise
        return eng

    def _boot(self) -> None:
        try:
            if self.settings.nats_url:
                self.url = self.settings.nats_url
            else:
                self.server = EmbeddedServer(self.settings).start()
                self.url = self.server.url
            self._loop = LoopThread()
            self._executor = DaemonThreadPool(32)
            atexit.register(_stop_at_exit, weakref.ref(self))
            self._loop.call(self._boot_async(), timeout=120)
        except BaseException:
            self.stop()
            raise
        self.started_at = time.time()

    async def _connect(self) -> None:
        self._nc = await connect(self.url, name=f"dagnats-nb {self.worker_id}")
        # its own embedded server: local JetStream; elsewhere jetstream_domain, if set
        domain = None if self.server is not None else self.settings.jetstream_domain
        self._js = jetstream.jetstream(self._nc, domain, timeout=10)
        self.defs = DefinitionStore(self._js)
        self.payloads = PayloadStore(self._js, self._nc.max_payload)

    async def _boot_async(self) -> None:
        await self._connect()
        self._started["server"] = True
        for factory in extensions.factories():  # first: /ready can say what start-up waits for
            extension = factory(self)
            if extension is not None:
                await extension.start()
                self.extensions.append(extension)
        s = self.settings
        max_age = s.runs_max_age.total_seconds() if s.runs_max_age else None
        streams = resources.streams_for(max_age, s.history_max_bytes, s.max_store_bytes)
        await provision.ensure_resources(self._js, streams, s.nats_jetstream_replicas, self.url)
        self._started["resources"] = True
        self.orchestrator = Orchestrator(self._nc, self._js, self.defs, self.payloads)
        await self.orchestrator.start()
        self._started["orchestrator"] = True
        self.host = WorkerHost(
            self._nc, self._js, self.payloads, self.worker_id, self._executor, self._store_full
        )
        await self.host.start()
        if s.llm_enabled:
            await self._start_llm()
        self._started["workers"] = True

    def stop(self) -> None:
        """Stop workers (in-flight tasks get a few seconds), orchestrator and server."""
        if self._loop is not None and self._loop.alive:
            try:
                self._loop.call(self._stop_async(), timeout=30)
            except Exception as exc:
                log.warning("engine stop: %s", exc)
            self._loop.close()
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
        if self.server is not None:
            self.server.stop()

    async def stop_async(self) -> None:
        await asyncio.to_thread(self.stop)

    async def _stop_async(self) -> None:
        for extension in reversed(self.extensions):
            try:
                await extension.stop()
            except Exception as exc:
                log.debug("engine stop: %s", exc)
        if self._sampler is not None:
            await self._sampler.stop()
        # Without a connection there is nothing to drain or deregister: do not wait for it.
        online = self._nc is not None and self._nc.is_connected
        parts = []
        if self.host is not None:
            parts.append(self.host.stop(drain_timeout=5.0 if online else 0.0, deregister=online))
        if self.orchestrator is not None:
            parts.append(self.orchestrator.stop())
        for part in parts:
            try:
                await asyncio.wait_for(part, 15 if online else 1)
            except Exception as exc:
                log.debug("engine stop: %s", exc)
        if self.llm is not None:
            await self.llm.close()
        if self._nc is not None:
            await close_connection(self._nc)

    def pause(self) -> None:
        """Stop taking tasks and applying history (in-flight tasks get 5 s, then go back to
        the queue); the connection stays. :meth:`resume` starts both again."""
        self._need_orchestrator("pause")
        self._call(self._pause())

    async def pause_async(self) -> None:
        self._need_orchestrator("pause")
        await self._call_async(self._pause())

    def resume(self) -> None:
        """Start again after :meth:`pause`: the streams are ensured (one missing is created
        empty), the orchestrator replays the history, the handlers take tasks again."""
        self._call(self._resume())

    async def resume_async(self) -> None:
        await self._call_async(self._resume())

    async def _pause(self) -> None:
        if self._paused is not None:
            return
        self._paused = await self.host.stop_workers(drain_timeout=5.0)
        await self.orchestrator.stop()
        self._started["orchestrator"] = self._started["workers"] = False

    async def _resume(self) -> None:
        if self._paused is None:
            return
        s = self.settings
        max_age = s.runs_max_age.total_seconds() if s.runs_max_age else None
        streams = resources.streams_for(max_age, s.history_max_bytes, s.max_store_bytes)
        await provision.ensure_resources(self._js, streams, s.nats_jetstream_replicas, self.url)
        self.defs = DefinitionStore(self._js)  # what the streams hold now, not a cache
        self.orchestrator = Orchestrator(self._nc, self._js, self.defs, self.payloads)
        await self.orchestrator.start()  # replays the history
        self._started["orchestrator"] = True
        handlers, self._paused = self._paused, None
        for handler in handlers:
            await self._add_worker(handler)
        self._started["workers"] = True

    @property
    def workers(self) -> dict[str, TaskWorker]:
        """This engine's task workers by task type."""
        return self.host.workers if self.host is not None else {}

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._loop is not None and self._loop.alive

    # -- handlers and workflows ----------------------------------------------------------

    def task(self, name: str, *, concurrency: int | None = None) -> Callable:
        """Decorator: run the function for every step whose ``task`` is ``name``."""

        def register(fn: Callable) -> Callable:
            self.add_handler(name, fn, concurrency=concurrency)
            return fn

        return register

    def add_handler(self, name: str, fn: Callable, *, concurrency: int | None = None) -> None:
        handler = make_handler(name, fn, concurrency)
        self._need_orchestrator("register a handler")
        self._call(self._add_worker(handler))

    async def _add_worker(self, handler) -> None:
        if not handler.is_async:
            sync = sum(
                w.handler.concurrency for w in self.workers.values() if not w.handler.is_async
            )
            self._executor.max_workers = max(32, sync + handler.concurrency)
        ack_wait = self.settings.ack_wait.total_seconds()
        await self.host.add(handler, ack_wait)
        await self.host.registry.beat()
        await share_capacity(self._js, handler.task, ack_wait)

    def _store_full(self, message: str) -> None:
        if self.orchestrator is not None:
            self.orchestrator.report_fault(message, store_full=True)

    def register(self, definition: WorkflowDef | dict | str | os.PathLike) -> WorkflowDef:
        """Validate and store a workflow (a WorkflowDef, dict, JSON/YAML text or file path).

        The task consumers of its steps are created too, so tasks waiting for a worker show
        in ``consumer_lag()`` before any worker exists."""
        defn = load_workflow(definition)
        self._call(self._register(defn))
        return defn

    async def register_async(self, definition: Any) -> WorkflowDef:
        defn = load_workflow(definition)
        await self._call_async(self._register(defn))
        return defn

    async def _register(self, defn: WorkflowDef) -> str:
        if self.llm is not None:  # the built-in llm steps' options and templates
            self.llm.check(defn, self.workers.get("llm"))
        h = await self.defs.put(defn)
        ack_wait = self.settings.ack_wait.total_seconds()
        for task in sorted({s.task for s in defn.steps if s.task}):
            await ensure_task_consumer(self._js, task, ack_wait)
        return h

    def workflow(self, name: str) -> WorkflowDef:
        """The latest registered definition of ``name``."""
        return self._call(self.defs.get(name))[1]

    async def workflow_async(self, name: str) -> WorkflowDef:
        return (await self._call_async(self.defs.get(name)))[1]

    def workflows(self) -> list[str]:
        """Names of the registered workflows."""
        return self._call(self.defs.names())

    async def workflows_async(self) -> list[str]:
        return await self._call_async(self.defs.names())

    # -- runs ----------------------------------------------------------------------------

    def start_run(
        self, workflow: str | WorkflowDef | dict, input: Any = None, *, run_id: str | None = None
    ) -> Run:
        """Start a run of a registered workflow (or register this definition first)."""
        return self._call(self._start_run(workflow, input, run_id))

    async def start_run_async(
        self, workflow: Any, input: Any = None, *, run_id: str | None = None
    ) -> Run:
        return await self._call_async(self._start_run(workflow, input, run_id))

    async def _start_run(self, workflow: Any, input: Any, run_id: str | None) -> Run:
        if isinstance(workflow, str) and not _looks_like_definition(workflow):
            h, defn = await self.defs.get(workflow)
        else:
            defn = load_workflow(workflow)
            h = await self._register(defn)
        run_id = run_id or new_run_id()
        if not protocol.is_token(run_id):
            raise RunError(f"run id {run_id!r} cannot be used in a NATS subject")
        try:
            encoded = json.dumps(input, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise RunError(
                f"input of workflow '{defn.name}' is not JSON-serialisable ({exc}): "
                "pass dicts, lists, strings, numbers, booleans or None"
            ) from None
        value = await self.payloads.shrink(input, len(encoded), f"{run_id}/input")
        event = protocol.Event(
            type=protocol.WORKFLOW_STARTED,
            run_id=run_id,
            payload={"workflow": defn.name, "version": defn.version, "def_hash": h, "input": value},
        )
        try:
            await self._js.publish(
                protocol.history_subject(run_id),
                event.encode(),
                headers={"Nats-Msg-Id": event.msg_id},
            )
        except APIError as exc:
            msg = store_error(exc)
            raise RunError(msg or f"cannot start a run of '{defn.name}': {exc}") from None
        return Run(self, run_id, defn.name)

    def run(
        self, workflow: str | WorkflowDef | dict, input: Any = None, *, timeout: float | None = 60
    ) -> Run:
        """Start a run and wait for it to end (completed, failed or cancelled)."""
        return self.start_run(workflow, input).wait(timeout)

    async def run_async(
        self, workflow: Any, input: Any = None, *, timeout: float | None = 60
    ) -> Run:
        run = await self.start_run_async(workflow, input)
        return await run.wait_async(timeout)

    def get_run(self, run_id: str) -> Run:
        """A handle on an existing run."""
        summary = self.run_state(run_id)
        if summary is None:
            raise RunError(f"no run with id {run_id}: list runs with eng.runs()")
        return Run(self, run_id, summary["workflow"])

    async def get_run_async(self, run_id: str) -> Run:
        return await asyncio.to_thread(self.get_run, run_id)

    def run_state(self, run_id: str) -> dict[str, Any] | None:
        """The run's summary: status, output, error, steps (None when unknown)."""
        if self.orchestrator is not None:
            state = self.orchestrator.runs.get(run_id)
            if state is None:
                return None
            return {
                "run_id": run_id,
                "workflow": state.workflow,
                "status": state.status,
                "output": state.output,
                "error": state.error,
                "state": state,
            }
        return self._call(self._kv_run(run_id))

    async def _kv_run(self, run_id: str) -> dict[str, Any] | None:
        """An attached engine's view of a run: the KV summary written when it ended, else
        ``running`` while its history exists."""
        kv = await self._js.key_value("workflow_runs")
        try:
            entry = await kv.get(run_id)
        except (KeyNotFoundError, NotFoundError):
            subject = protocol.history_subject(run_id)
            info = await self._js.stream_info(protocol.HISTORY_STREAM, subjects_filter=subject)
            if not (info.state.subjects or {}).get(subject):
                return None
            first = (await self.history(run_id, limit=1))[0]
            workflow = (first.payload or {}).get("workflow")
            return {"run_id": run_id, "workflow": workflow, "status": "running", "error": None}
        return json.loads(entry.value)

    async def wait_run(self, run_id: str, timeout: float | None) -> None:
        if self.orchestrator is None:
            deadline = None if timeout is None else time.monotonic() + timeout
            while True:
                summary = await self._kv_run(run_id)
                if summary and summary["status"] in RUN_TERMINAL:
                    return
                if deadline is not None and time.monotonic() > deadline:
                    raise TimeoutError
                await asyncio.sleep(0.2)
        await asyncio.wait_for(self.orchestrator.wait(run_id), timeout)

    async def cancel_run(self, run_id: str, reason: str = "cancelled by user") -> None:
        event = protocol.Event(
            type=protocol.WORKFLOW_CANCELLED, run_id=run_id, payload={"reason": reason}
        )
        await self._js.publish(
            protocol.history_subject(run_id), event.encode(), headers={"Nats-Msg-Id": event.msg_id}
        )

    def watch(self, run_id: str, callback: Callable[[Any], None]) -> Callable[[], None]:
        """Call ``callback(state)`` (a ``dag.state.RunState``) on the engine thread after
        every change of the run, and once at once; returns ``unwatch()``. Keep the callback
        quick and thread-safe: it runs on the engine loop."""
        self._need_orchestrator("watch a run")

        async def subscribe() -> Callable[[], None]:
            unwatch = self.orchestrator.watch(run_id, callback)
            loop = asyncio.get_running_loop()
            return lambda: loop.call_soon_threadsafe(unwatch)

        return self._call(subscribe())

    def runs(self):
        """All runs as a DataFrame (run_id, workflow, status, started_at, ended_at, error...)."""
        if self.orchestrator is not None:
            return runs_frame(self.orchestrator.runs.values())
        return runs_frame(self._call(self._kv_runs()))

    async def runs_async(self):
        return await asyncio.to_thread(self.runs)

    async def _kv_runs(self) -> list[dict[str, Any]]:
        kv = await self._js.key_value("workflow_runs")
        try:
            keys = await kv.keys()
        except (NotFoundError, NoKeysError):
            return []
        out = []
        for k in keys:
            try:
                out.append(json.loads((await kv.get(k)).value))
            except (KeyNotFoundError, NotFoundError):
                continue
        return out

    def events(self, run_id: str):
        """A run's history as a DataFrame (seq, time, type, step_id, attempt, worker_id...)."""
        return events_frame(self._call(self.history(run_id)))

    async def events_async(self, run_id: str):
        return events_frame(await self._call_async(self.history(run_id)))

    def steps(self, run_id: str):
        """A run's steps as a DataFrame (step_id, task, type, status, attempt, times, error)."""
        summary = self.run_state(run_id)
        if summary is None or "state" not in summary:
            raise RunError(f"no run with id {run_id} in this engine")
        return steps_frame(self.orchestrator.run_defs[run_id], summary["state"])

    async def steps_async(self, run_id: str):
        return await asyncio.to_thread(self.steps, run_id)

    def dead_letters(self, limit: int = 100):
        """The last ``limit`` dead letters (steps that failed for good) as a DataFrame:
        seq, failed_at, workflow, task, run_id, step_id, map_index, attempts, error."""
        return self.dlq(limit=limit)

    async def dead_letters_async(self, limit: int = 100):
        return await self.dlq_async(limit=limit)

    def dlq(self, workflow: str | None = None, run: str | None = None, *, limit: int = 1000):
        """Dead letters as a DataFrame, newest last: the last ``limit`` of DEAD_LETTERS,
        of one workflow and/or one run when named."""
        letters = self._call(read_dead_letters(self._js, limit))
        return dead_letters_frame(dead_letters.select(letters, workflow, run))

    async def dlq_async(self, workflow: str | None = None, run: str | None = None, *, limit=1000):
        letters = await self._call_async(read_dead_letters(self._js, limit))
        return dead_letters_frame(dead_letters.select(letters, workflow, run))

    def dlq_replay(
        self,
        seq: int | None = None,
        *,
        run: str | None = None,
        dry_run: bool = False,
        wait: float = 5.0,
    ) -> list[dict[str, Any]]:
        """Replay a dead letter (by ``seq``, or the newest of ``run``): its failed run resumes
        at the failed step, as a new attempt. Returns what was (or, ``dry_run``, would be)
        replayed and the run's status after up to ``wait`` seconds."""
        return self._call(self._dlq_replay(seq, run, dry_run, wait))

    async def dlq_replay_async(
        self, seq: int | None = None, *, run: str | None = None, dry_run=False, wait=5.0
    ) -> list[dict[str, Any]]:
        return await self._call_async(self._dlq_replay(seq, run, dry_run, wait))

    async def _dlq_replay(
        self, seq: int | None, run: str | None, dry_run: bool, wait: float
    ) -> list[dict[str, Any]]:
        return await dead_letters.replay(self._js, self._run_status, seq, run, dry_run, wait)

    async def _run_status(self, run_id: str) -> str | None:
        if self.orchestrator is not None:
            state = self.orchestrator.runs.get(run_id)
            return state.status if state is not None else None
        summary = await self._kv_run(run_id)
        return summary["status"] if summary else None

    def step_output(self, run_id: str, step_id: str) -> Any:
        """One step's output (a map step: the list of its elements' outputs), rebuilt from
        the run's history: finished runs keep only the run's output in memory."""
        return self._call(self._step_output(run_id, step_id))

    async def step_output_async(self, run_id: str, step_id: str) -> Any:
        return await self._call_async(self._step_output(run_id, step_id))

    async def _step_output(self, run_id: str, step_id: str) -> Any:
        events = await self.history(run_id)
        if not events or events[0].type != protocol.WORKFLOW_STARTED:
            raise RunError(f"no history for run {run_id}: list runs with eng.runs()")
        payload = events[0].payload or {}
        _, defn = await self.defs.get(payload.get("workflow", ""), payload.get("def_hash"))
        defn.step(step_id)  # names the workflow's steps when step_id is unknown
        state = replay(defn, events)
        st = state.step(step_id)
        if st.status != "completed":
            raise RunError(f"step '{step_id}' of run {run_id} is {st.status}: it has no output")
        return await self.payloads.expand(st.output)

    async def history_output(self, run_id: str) -> Any:
        """A completed run's output read from its history (what an attached engine, which
        holds no run state, shows): the ``workflow.completed`` event's, else rebuilt."""
        events = await self.history(run_id)
        done = next((e for e in reversed(events) if e.type == protocol.WORKFLOW_COMPLETED), None)
        if done is None:
            return None
        payload = done.payload or {}
        if "output" in payload:
            return await self.payloads.expand(payload["output"])
        first = events[0].payload or {}
        _, defn = await self.defs.get(first.get("workflow", ""), first.get("def_hash"))
        return await self.payloads.expand(replay(defn, events).output)

    async def history(self, run_id: str, limit: int | None = None) -> list[protocol.Event]:
        subject = protocol.history_subject(run_id)
        info = await self._js.stream_info(protocol.HISTORY_STREAM, subjects_filter=subject)
        count = (info.state.subjects or {}).get(subject, 0)
        if not count:
            return []
        sub = await self._js.subscribe(
            subject, stream=protocol.HISTORY_STREAM, ordered_consumer=True
        )
        out: list[protocol.Event] = []
        try:
            while True:
                msg = await sub.next_msg(timeout=5)
                out.append(protocol.Event.decode(msg.data, seq=msg.metadata.sequence.stream))
                if msg.metadata.num_pending == 0 or len(out) == limit:
                    break
        finally:
            await sub.unsubscribe()
        return out

    async def expand(self, value: Any) -> Any:
        return await self.payloads.expand(value)

    # -- backup and restore (dagnats_nb.ops.backup) -------------------------------------------

    def backup(self, dir: str | os.PathLike, streams: list[str] | None = None, progress=None):
        """Snapshot the engine's streams (default: history, task queues, definitions, runs,
        payloads) to ``dir/<STREAM>/`` as ``nats stream backup`` does; a DataFrame, one row
        per stream (stream, messages, bytes, first_seq, last_seq, seconds, mb_per_s). A
        progress bar shows in Jupyter; ``progress(stream, done_bytes, total_bytes)`` replaces
        it."""
        progress = progress or extensions.default_progress("backing up")
        return backup.results_frame(self._call(self._backup(dir, streams, progress)))

    async def backup_async(
        self, dir: str | os.PathLike, streams: list[str] | None = None, progress=None
    ):
        progress = progress or extensions.default_progress("backing up")
        return backup.results_frame(await self._call_async(self._backup(dir, streams, progress)))

    def restore(
        self,
        dir: str | os.PathLike,
        force: bool = False,
        streams: list[str] | None = None,
        progress=None,
    ):
        """Restore the streams backed up in ``dir`` (or only ``streams``); existing streams
        only with ``force``. Once every folder is checked the engine pauses (:meth:`pause`),
        restores, and resumes whatever happened: runs are rebuilt by replay; waits on runs in
        progress end with CancelledError. Same DataFrame as :meth:`backup`."""
        progress = progress or extensions.default_progress("restoring")
        return backup.results_frame(self._call(self._restore(dir, force, streams, progress)))

    async def restore_async(
        self,
        dir: str | os.PathLike,
        force: bool = False,
        streams: list[str] | None = None,
        progress=None,
    ):
        progress = progress or extensions.default_progress("restoring")
        rows = await self._call_async(self._restore(dir, force, streams, progress))
        return backup.results_frame(rows)

    async def _backup(self, dir, streams, progress) -> list:
        api = backup.api_prefix(self.settings.jetstream_domain)
        return await backup.backup_streams(self._nc, dir, streams, progress, api=api)

    async def _restore(self, dir, force, streams, progress) -> list:
        if self.orchestrator is None:
            raise BackupError(
                "cannot restore through an attached engine: the engine that owns the data dir "
                "would keep its old state; call restore in that engine's process, or stop it "
                "and run `dagnats restore`"
            )
        api = backup.api_prefix(self.settings.jetstream_domain)
        plan = await backup.plan_restore(self._nc, dir, force, streams, api)
        await self._pause()
        try:
            scratch = self.settings.data_dir
            return await backup.run_restore(self._nc, plan, progress, api, scratch=scratch)
        finally:
            await self._resume()

    # -- llm -----------------------------------------------------------------------------

    async def _start_llm(self) -> None:
        from dagnats_nb.llm import LLMService

        self.llm = LLMService(self.settings, self._nc, self._js, self.worker_id, self._run_def)
        handler = make_handler("llm", self.llm.handle, self.settings.llm_concurrency)
        await self._add_worker(handler)

    async def _run_def(self, run_id: str, workflow: str, def_hash: str = "") -> WorkflowDef:
        """The definition a run follows: the orchestrator's, else the version its tasks name
        (a worker in another process), else the latest."""
        defn = self.orchestrator.run_defs.get(run_id) if self.orchestrator else None
        return defn if defn is not None else (await self.defs.get(workflow, def_hash or None))[1]

    def llm_usage(self, run_id: str | None = None):
        """LLM calls per run, step and model (calls, tokens, latency p50/p95, errors,
        retries) as a DataFrame, read from TELEMETRY; ``llm_calls`` has one row per call."""
        from dagnats_nb.llm import usage_frame

        return usage_frame(self._call(self._llm_records(run_id)))

    async def llm_usage_async(self, run_id: str | None = None):
        from dagnats_nb.llm import usage_frame

        return usage_frame(await self._call_async(self._llm_records(run_id)))

    def llm_calls(self, run_id: str | None = None):
        """Every recorded LLM call as a DataFrame (status, latency_ms, tokens, error...)."""
        from dagnats_nb.llm import calls_frame

        return calls_frame(self._call(self._llm_records(run_id)))

    async def _llm_records(self, run_id: str | None) -> list[dict[str, Any]]:
        from dagnats_nb.llm import read_calls

        if self.llm is not None:  # this engine's calls not yet stored
            await self.llm.recorder.flush(wait=True)
        return await read_calls(self._js, run_id)

    # -- plumbing ------------------------------------------------------------------------

    def _need_orchestrator(self, what: str) -> None:
        if self.orchestrator is None:
            raise DagnatsError(
                f"cannot {what} on an attached engine: handlers run in the engine started with "
                "Engine.start(), or in a worker process: `dagnats worker MODULE`"
            )

    def _call(self, coro, timeout: float | None = None):
        self._check_alive(coro)
        try:
            return self._loop.call(coro, timeout)
        except nats.errors.Error as exc:
            raise self._nats_failure(exc) from None

    async def _call_async(self, coro):
        self._check_alive(coro)
        try:
            return await self._loop.call_async(coro)
        except nats.errors.Error as exc:
            raise self._nats_failure(exc) from None

    def _check_alive(self, coro) -> None:
        if self._loop is None or not self._loop.alive:
            coro.close()
            raise DagnatsError("the engine is stopped: start it again with Engine.start()")
        if self.server is not None and not self.server.running:
            coro.close()
            raise self._nats_failure(None)

    def _nats_failure(self, exc: Exception | None) -> ServerError:
        """One line for a NATS failure: whose, and what to do."""
        why = f" ({exc})" if exc is not None and str(exc) else ""
        if self.server is not None and not self.server.running:
            return ServerError(
                f"the embedded nats-server has exited{why}: its log is "
                f"{self.server.log_path}; stop this engine and start it again (runs resume)"
            )
        return ServerError(
            f"NATS at {self.url} did not answer{why}: check that the server runs "
            "(`dagnats status`) and try again"
        )

    def __repr__(self) -> str:
        mode = "embedded" if self.embedded else "attached"
        state = "running" if self.running else "stopped"
        return f"<Engine {mode} {state} url={self.url} data_dir={self.settings.data_dir}>"


def _stop_at_exit(ref: weakref.ref) -> None:
    eng = ref()
    if eng is not None and eng.running:
        eng.stop()


def _looks_like_definition(text: str) -> bool:
    t = text.lstrip()
    return t.startswith("{") or "\n" in t or Path(text).suffix in (".json", ".yaml", ".yml")


__all__ = ["Engine", "Run", "RunTimeout", "new_run_id"]

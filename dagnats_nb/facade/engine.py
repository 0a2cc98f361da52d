"""The runtime facade: wires server, resources, orchestrator and workers on one loop thread.

Every public method is sync and has an ``*_async`` twin that can be awaited from any event
loop (top-level ``await`` in Jupyter included): both are made from one private coroutine
run on the engine loop (:mod:`dagnats_nb.facade.twins`), so whatever they read is a
snapshot taken there. This module: life cycle, handlers, workflows, and the bridge to the
loop. The rest of the API is mixed in: starting, waiting on, cancelling and watching runs
(:mod:`~dagnats_nb.facade.runs`); reading runs, steps, events and dead letters
(:mod:`~dagnats_nb.facade.reads`); stats, health and status
(:mod:`~dagnats_nb.facade.observing`); backup and restore
(:mod:`~dagnats_nb.facade.maintenance`).
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import os
import time
import weakref
from collections import deque
from collections.abc import Callable
from typing import Any

import nats.errors

from dagnats_nb.config import Settings, load_settings
from dagnats_nb.dag import WorkflowDef, load_workflow
from dagnats_nb.errors import DagnatsError, ServerError
from dagnats_nb.facade import extensions
from dagnats_nb.facade.caching import Caching
from dagnats_nb.facade.comparing import Comparing
from dagnats_nb.facade.gates import Gates
from dagnats_nb.facade.hints import Hints, hint, task_types, unserved_message
from dagnats_nb.facade.maintenance import Maintenance
from dagnats_nb.facade.observing import Observing
from dagnats_nb.facade.orchestration import orchestrates
from dagnats_nb.facade.reads import Reads
from dagnats_nb.facade.retention import Retention
from dagnats_nb.facade.run import Run, RunTimeout
from dagnats_nb.facade.runs import Runs, new_run_id
from dagnats_nb.facade.serving import Serving
from dagnats_nb.facade.triggers import Triggers
from dagnats_nb.facade.twins import twins
from dagnats_nb.observe import sampler
from dagnats_nb.runtime.cache import StepCache
from dagnats_nb.runtime.consumers import ensure_task_consumer
from dagnats_nb.runtime.handlers import unpack_spec
from dagnats_nb.runtime.host import WorkerHost
from dagnats_nb.runtime.loop import LoopThread
from dagnats_nb.runtime.membership import Membership
from dagnats_nb.runtime.orchestrator import Orchestrator
from dagnats_nb.runtime.threads import DaemonThreadPool
from dagnats_nb.runtime.workers import TaskWorker, new_worker_id
from dagnats_nb.server.datadir import own_client_url
from dagnats_nb.server.process import EmbeddedServer
from dagnats_nb.transport import jetstream, provision
from dagnats_nb.transport.api import api_prefix
from dagnats_nb.transport.connect import close_connection, connect, without_credentials
from dagnats_nb.transport.stores import DefinitionStore, PayloadStore
from dagnats_nb.wire import resources

log = logging.getLogger("dagnats_nb")


def _registered(result: tuple[WorkflowDef, list[str]]) -> WorkflowDef:
    defn, unserved = result
    if unserved:  # _registered <- register <- the caller's line
        hint(unserved_message(defn.name, unserved), stacklevel=3)
    return defn


class Engine(
    Serving,
    Runs,
    Reads,
    Observing,
    Gates,
    Triggers,
    Hints,
    Maintenance,
    Comparing,
    Caching,
    Retention,
):
    """A dagnats engine: embedded (``Engine.start``) or attached (``Engine.connect``)."""

    def __init__(self, settings: Settings, *, embedded: bool) -> None:
        self.settings = settings
        self.embedded = embedded
        self.server: EmbeddedServer | None = None
        self.url: str | None = None  # no secret in it: safe to show
        self._client_url: str | None = None  # with the credentials (see connect_url)
        self.worker_id = new_worker_id()
        self._loop: LoopThread | None = None
        self._nc = None
        self._js = None
        self.defs: DefinitionStore | None = None
        self.payloads: PayloadStore | None = None
        self.orchestrator: Orchestrator | None = None
        self.membership: Membership | None = None  # this engine's heartbeat (Engine.start)
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
        self.jetstream_api = "$JS.API"
        self.http_url: str | None = None  # where /health and /ready answer (http_addr set)
        self.llm = None  # the built-in llm task type (dagnats_nb.llm.LLMService)
        self._paused: list | None = None  # the handlers to start again on resume()
        self._closing = False  # stop() under way
        self.notebook = False  # a notebook's engine: `auto` settings take their notebook value

    add_extension = staticmethod(extensions.add_extension)

    @property
    def connect_url(self) -> str | None:
        """``url`` with the credentials (the embedded server's token), for other programs
        (Go ``dagnats --nats-url``, ``nats``). Keep it private: it grants the run data."""
        return self._client_url

    # -- life cycle ---------------------------------------------------------------------

    @classmethod
    def start(
        cls,
        data_dir: str | os.PathLike | None = None,
        config: str | os.PathLike | None = None,
        *,
        handlers: dict[str, Callable | tuple[Callable, int | None]] | None = None,
        notebook: bool = False,
        **settings: Any,
    ) -> Engine:
        """Start an embedded standalone engine (nats-server child, orchestrator, workers).

        ``handlers`` (``{task: fn}``, ``{task: (fn, concurrency)}`` or ``{task: (fn,
        concurrency, {"cache": True, "version": "..."})}``) are added before the
        runs replayed from the history are looked at: when some of them wait on tasks that
        no worker serves (no handler here, none in the ``workers`` KV), one
        :class:`~dagnats_nb.errors.UnservedTaskWarning` names them. ``notebook``: the
        engine of a notebook (what ``%dagnats start`` and ``dn.engine()`` start): the
        settings whose default is ``auto`` take their notebook value (``llm_cache`` on)."""
        cfg = load_settings(config, data_dir=data_dir, **settings)
        eng = cls(cfg, embedded=True)
        eng.notebook = notebook
        eng._boot()
        try:
            for name, spec in (handlers or {}).items():
                fn, concurrency, options = unpack_spec(name, spec)
                eng.add_handler(name, fn, concurrency=concurrency, **options)
        except BaseException:
            eng.stop()
            raise
        eng._hint_recovered(stacklevel=2)
        return eng

    @classmethod
    async def start_async(
        cls,
        data_dir: str | os.PathLike | None = None,
        config: str | os.PathLike | None = None,
        *,
        handlers: dict[str, Callable | tuple[Callable, int | None]] | None = None,
        notebook: bool = False,
        **settings: Any,
    ) -> Engine:
        """The awaitable twin of :meth:`start`."""
        return await asyncio.to_thread(
            cls.start, data_dir, config, handlers=handlers, notebook=notebook, **settings
        )

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
        client = own_client_url(url, cfg.data_dir)
        eng.url, eng._client_url = without_credentials(client), client
        eng._loop = LoopThread("dagnats-client")
        try:
            eng._loop.call(eng._connect(), timeout=15)
        except BaseException:
            eng._loop.close()
            raise
        eng._setting_up()
        return eng

    @classmethod
    async def connect_async(
        cls,
        data_dir: str | os.PathLike | None = None,
        config: str | os.PathLike | None = None,
        *,
        url: str | None = None,
        **settings: Any,
    ) -> Engine:
        """The awaitable twin of :meth:`connect`."""
        return await asyncio.to_thread(cls.connect, data_dir, config, url=url, **settings)

    def _boot(self) -> None:
        try:
            if self.settings.nats_url:
                self._client_url = self.settings.nats_url
                self.url = without_credentials(self._client_url)
            else:
                self.server = EmbeddedServer(self.settings).start()
                self.url, self._client_url = self.server.url, self.server.client_url
            self._loop = LoopThread()
            self._executor = DaemonThreadPool(32)
            atexit.register(_stop_at_exit, weakref.ref(self))
            # no time limit: a history replayed whole (no checkpoint yet, or snapshot_restart
            # off) takes minutes at millions of events; the replay logs its progress
            self._loop.call(self._boot_async(), timeout=None)
        except BaseException:
            self.stop()
            raise
        self.started_at = time.time()
        self._setting_up()

    async def _connect(self) -> None:
        watch = self._server_lost if self.server is not None else None
        self._nc = await connect(
            self._client_url, name=f"dagnats-nb {self.worker_id}", on_disconnect=watch
        )
        # its own embedded server: local JetStream; elsewhere jetstream_domain, if set
        domain = None if self.server is not None else self.settings.jetstream_domain
        self.jetstream_api = api_prefix(domain)  # raw $JS API requests (stats, backup)
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
        await self._ensure_resources()
        self._started["resources"] = True
        self.membership = Membership(self._js, self.worker_id)
        embedded, member = self.server is not None, self.membership
        orchestrating = await orchestrates(self._js, self.settings, self.url, embedded, member)
        # heartbeat first: another engine starting while the history replays sees this one
        await self.membership.start(orchestrating)
        if orchestrating:
            self.orchestrator = self._new_orchestrator()
            await self.orchestrator.start()
        self._started["orchestrator"] = True
        await self._start_triggers()  # the orchestrating engine fires them
        await self._start_pruner()  # and prunes expired records and payloads
        self.host = WorkerHost(
            self._nc, self._js, self.payloads, self.worker_id, self._executor, self._store_full
        )
        self.host.done = lambda task: bool(self.orchestrator and self.orchestrator.task_done(task))
        self.host.cache = StepCache(self._js, self.worker_id, self._run_def, self._nc.max_payload)
        await self.host.start()
        if self.settings.llm_enabled:
            await self._start_llm()
        self._started["workers"] = True

    def _new_orchestrator(self) -> Orchestrator:
        return Orchestrator(
            self._nc,
            self._js,
            self.defs,
            self.payloads,
            snapshot_restart=self.settings.snapshot_restart,
        )

    async def _ensure_resources(self) -> None:
        s = self.settings
        max_age = s.runs_max_age.total_seconds() if s.runs_max_age else None
        streams = resources.streams_for(max_age, s.history_max_bytes, s.max_store_bytes)
        cache = resources.cache_bucket(
            s.cache_ttl.total_seconds(), s.cache_max_bytes, streams, s.max_store_bytes
        )
        await provision.ensure_resources(
            self._js,
            (*streams, resources.SNAPSHOTS),
            s.nats_jetstream_replicas,
            self.url,
            (*resources.BUCKETS, resources.ENGINES, cache),
            owned=self.server is not None,  # the embedded server's streams are all ours
        )

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
        """The awaitable twin of :meth:`stop`."""
        await asyncio.to_thread(self.stop)

    async def _stop_async(self) -> None:
        self._closing = True
        await self._stop_triggers()
        await self._stop_pruner()
        for extension in reversed(self.extensions):
            try:
                await extension.stop()
            except Exception as exc:
                log.debug("engine stop: %s", exc)
        if self._sampler is not None:
            await self._sampler.stop()
        # Without a connection there is nothing to drain or deregister: do not wait for it.
        # The client may not have noticed yet that our own server died: that is offline too.
        server_gone = self.server is not None and not self.server.running
        online = self._nc is not None and self._nc.is_connected and not server_gone
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
        if self.membership is not None:  # after the orchestrator: it decided until now
            await self.membership.stop(online=online)
        if self.llm is not None:
            await self.llm.close()
        if self._nc is not None:
            await close_connection(self._nc)

    async def _pause(self) -> None:
        """Stop taking tasks and applying history (in-flight tasks get 5 s, then go back to
        the queue); the connection stays. :meth:`resume` starts both again."""
        self._need_orchestrator("pause")
        if self._paused is not None:
            return
        self._paused = await self.host.stop_workers(drain_timeout=5.0)
        await self.orchestrator.stop()
        self._started["orchestrator"] = self._started["workers"] = False

    pause, pause_async = twins(_pause)

    async def _resume(self) -> None:
        """Start again after :meth:`pause`: the streams are ensured (one missing is created
        empty), the orchestrator replays the history, the handlers take tasks again."""
        if self._paused is None:
            return
        await self._ensure_resources()
        self.defs = DefinitionStore(self._js)  # what the streams hold now, not a cache
        self.orchestrator = self._new_orchestrator()
        await self.orchestrator.start()  # replays the history
        self._started["orchestrator"] = True
        handlers, self._paused = self._paused, None
        for handler in handlers:
            await self._add_worker(handler)
        self._started["workers"] = True

    resume, resume_async = twins(_resume)

    @property
    def workers(self) -> dict[str, TaskWorker]:
        """This engine's task workers by task type (a copy)."""
        return dict(self.host.workers) if self.host is not None else {}

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._loop is not None and self._loop.alive

    # -- handlers and workflows ----------------------------------------------------------

    async def _server_lost(self) -> None:
        """A dead embedded server ends every wait with one line (not a silent reconnect)."""
        if self._closing:  # our own close: nothing died (waiting here cost every stop 2 s)
            return
        if await self.server.gone(within=2.0) and self.orchestrator is not None:
            self.orchestrator.report_fault(str(self._nats_failure(None)), end_waits=True)

    def _store_full(self, message: str) -> None:
        if self.orchestrator is not None:
            self.orchestrator.report_fault(message, store_full=True)

    async def _register(
        self, definition: WorkflowDef | dict | str | os.PathLike
    ) -> tuple[WorkflowDef, list[str]]:
        """Validate and store a workflow (a WorkflowDef, dict, JSON/YAML text or file path);
        the stored WorkflowDef.

        The task consumers of its steps are created too, so tasks waiting for a worker show
        in ``consumer_lag()`` before any worker exists. Task types no live worker serves
        (see :meth:`unserved_tasks`) are named in an
        :class:`~dagnats_nb.errors.UnservedTaskWarning`, except within 30 s of the engine's
        start or of its last handler added: a workflow declared before its handlers (a
        notebook's workflow cell above its ``@dn.task`` cells) is no mistake. Starting a run
        always warns."""
        defn = load_workflow(definition)
        await self._store_definition(defn)
        quiet = time.monotonic() < self._quiet_until
        return defn, [] if quiet else await self._missing(task_types(defn))

    register, register_async = twins(_register, _registered)

    async def _store_definition(self, defn: WorkflowDef) -> str:
        if self.llm is not None:  # the built-in llm steps' options and templates
            self.llm.check(defn, self.workers.get("llm"))
        h = await self.defs.put(defn)
        await self._put_triggers(defn)
        ack_wait = self.settings.ack_wait.total_seconds()
        for task in sorted({s.task for s in defn.steps if s.task and not s.worker_group}):
            try:
                await ensure_task_consumer(self._js, task, ack_wait)
            except DagnatsError as exc:  # its task type is served by worker groups
                log.warning("%s", exc)
        return h

    async def _workflow(self, name: str) -> WorkflowDef:
        """The latest registered definition of ``name``."""
        return (await self.defs.get(name))[1]

    workflow, workflow_async = twins(_workflow)

    async def _workflows(self) -> list[str]:
        """Names of the registered workflows."""
        return await self.defs.names()

    workflows, workflows_async = twins(_workflows)

    # -- plumbing ------------------------------------------------------------------------

    def _need_orchestrator(self, what: str) -> None:
        if self.orchestrator is None:
            raise DagnatsError(
                f"cannot {what} on an attached engine: handlers run in the engine started with "
                "Engine.start(), or in a worker process: `dagnats worker MODULE`"
            )

    def _call(self, coro, timeout: float | None = None):
        """Run ``coro`` on the engine loop; block for its result (a NATS failure: one line)."""
        self._check_alive(coro)
        try:
            return self._loop.call(coro, timeout)
        except nats.errors.Error as exc:
            raise self._nats_failure(exc) from None

    async def _call_async(self, coro):
        """Await ``coro`` on the engine loop from any event loop."""
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
        refused = self.host.gate.reason if self.host is not None else None
        if refused:  # the server runs but stores nothing: a full disk or store
            return ServerError(f"JetStream stores nothing now ({refused}): see eng.health()")
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


__all__ = ["Engine", "Run", "RunTimeout", "new_run_id"]

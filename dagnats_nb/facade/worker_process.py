"""Worker processes: ``dagnats worker MODULE[:ATTR]`` runs a module's ``@dn.task`` handlers.

A :class:`WorkerProcess` connects to the engine's NATS server and runs one
:class:`~dagnats_nb.runtime.workers.TaskWorker` per handler on the same durable consumer
(``workers-{task}``) as the engine's own workers, so every process of a task type takes its
share of one queue and a task goes to exactly one of them. It registers in the ``workers``
KV bucket (worker id, host, pid, tasks) and heartbeats there like the engine.

Choices:

- **Capacity adds up.** A consumer's ``MaxAckPending`` caps the tasks in flight over all its
  workers, and each worker sets it to its own concurrency when it starts. A worker process
  then raises it to the sum of the concurrencies that the live workers of the ``workers`` KV
  declare for the task (its own included), again every heartbeat, and lowers it to the
  others' sum when it leaves: so two processes of concurrency 4 run 8 tasks at once.
- **The engine moves.** A worker that found the engine through ``engine.json`` (no URL
  given) reads it again while disconnected, and reconnects to the new URL when the engine
  restarted on another port (the default ``nats_port: 0`` picks a new one at each start).
- **ack wait.** A worker adopts the existing consumer's ack wait (the engine's setting), so
  the engine and its workers do not rewrite it back and forth; ``ack_wait`` of the worker's
  settings is used only when it creates the consumer.
- **Graceful drain** (:meth:`WorkerProcess.stop`): stop fetching, give in-flight tasks
  ``drain_timeout`` seconds, NAK (release) the rest and any task already delivered but not
  started, so another worker takes them at once instead of after the ack wait; then
  deregister and drain the connection. A task the server delivered in the instant the
  subscription was being closed waits for the ack wait (nothing is lost either way).

Which handlers (:func:`load_handlers`): ``MODULE`` is imported with the current directory on
``sys.path`` (like ``python -m``), or loaded from a ``.py`` file path. Without ``:ATTR`` every
handler registered with ``@dn.task`` while importing it is run. ``:ATTR`` (dotted) names a
function decorated with ``@dn.task`` (only its task), a list of such functions, or a dict
``{task: function}`` / ``{task: (function, concurrency)}``. ``--task`` keeps only the named
tasks; ``--task llm`` adds the engine's built-in ``llm`` handler when the module has no
``llm`` handler of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re

from nats.js.errors import NotFoundError

from dagnats_nb.config import Settings
from dagnats_nb.errors import DagnatsError, ServerError
from dagnats_nb.facade.handler_modules import BUILTIN_LLM, HandlerMap
from dagnats_nb.llm import LLMService
from dagnats_nb.runtime.cache import StepCache
from dagnats_nb.runtime.capacity import registered_concurrency
from dagnats_nb.runtime.consumers import ensure_task_consumer
from dagnats_nb.runtime.handlers import Handler, make_handler, unpack_spec
from dagnats_nb.runtime.host import WorkerHost
from dagnats_nb.runtime.loop import LoopThread
from dagnats_nb.runtime.registry import HEARTBEAT_EVERY
from dagnats_nb.runtime.threads import DaemonThreadPool
from dagnats_nb.runtime.workers import TaskWorker, new_worker_id
from dagnats_nb.server.datadir import (
    engine_client_url,
    own_client_url,
    read_engine_info,
    require_engine_url,
)
from dagnats_nb.transport import jetstream
from dagnats_nb.transport.connect import close_connection, connect, without_credentials
from dagnats_nb.transport.stores import DefinitionStore, PayloadStore
from dagnats_nb.wire import protocol

log = logging.getLogger("dagnats_nb.worker")

FOLLOW_EVERY = 1.0  # seconds between looks at engine.json while disconnected


_WORKER_ID = re.compile(r"[-_A-Za-z0-9]+")


class WorkerProcess:
    """Runs task handlers in this process against a running engine's NATS server."""

    def __init__(
        self,
        settings: Settings,
        handlers: HandlerMap,
        *,
        url: str | None = None,
        worker_id: str | None = None,
        llm: bool = False,
        group: str = "",
        capabilities: list[str] | tuple[str, ...] = (),
    ) -> None:
        """``handlers`` maps task names to ``(function, concurrency)`` (None: the default,
        64 for ``async def``, 8 for a plain ``def``), or ``(function, concurrency,
        {"cache": True, "version": "..."})`` (cached steps, see ``Engine.task``); what
        ``@dn.task`` records. ``llm`` adds the built-in ``llm``
        handler; ``group`` makes this a worker of that group: it takes only the tasks of
        steps whose ``worker_group`` is ``group`` (Go's ``worker.WithGroups``);
        ``capabilities``: what this worker offers, matched against steps'
        ``required_capabilities``."""
        if not handlers and not llm:
            raise DagnatsError("a worker needs at least one handler: pass handlers or llm=True")
        self.settings = settings
        self.handlers: dict[str, Handler] = {}
        for name, spec in handlers.items():
            fn, conc, options = unpack_spec(name, spec)
            self.handlers[name] = make_handler(name, fn, conc, group, capabilities, **options)
        self.want_llm = llm and BUILTIN_LLM not in self.handlers
        self.url = url  # shown in messages: without credentials once started
        self._client_url: str | None = None  # with them (the data dir's token)
        self.worker_id = worker_id or new_worker_id()
        if not _WORKER_ID.fullmatch(self.worker_id):  # a KV key and a subject token
            raise DagnatsError(
                f"worker id {self.worker_id!r} cannot be used as a KV key: use letters, "
                "digits, '-' or '_'"
            )
        self.host: WorkerHost | None = None
        self.llm = None
        self._loop: LoopThread | None = None
        self._executor: DaemonThreadPool | None = None
        self._nc = None
        self._js = None
        self._defs: DefinitionStore | None = None
        self._share_task: asyncio.Task | None = None
        self._follow_task: asyncio.Task | None = None
        self._follow = False
        self._closing = False

    # -- life cycle ----------------------------------------------------------------------

    def start(self) -> WorkerProcess:
        """Connect and start taking tasks; raises a one-line DagnatsError when it cannot."""
        if self.running:
            return self
        self._follow = not (self.url or self.settings.nats_url)  # the URL of engine.json
        given = self.url or self.settings.nats_url
        client = own_client_url(given, self.settings.data_dir) if given else self._engine_url()
        self.url, self._client_url = without_credentials(client), client
        sync = sum(h.concurrency for h in self.handlers.values() if not h.is_async)
        self._executor = DaemonThreadPool(max(32, sync), name="dagnats-worker-handler")
        self._loop = LoopThread("dagnats-worker")
        try:
            self._loop.call(self._start_async(), timeout=60)
        except BaseException:
            self.stop(drain_timeout=0)
            raise
        return self

    def stop(self, drain_timeout: float = 10.0) -> None:
        """Drain: stop fetching, let in-flight tasks finish within ``drain_timeout`` seconds,
        release the rest to other workers, deregister, close the connection."""
        if self._loop is not None and self._loop.alive:
            try:
                self._loop.call(self._stop_async(drain_timeout), timeout=drain_timeout + 30)
            except Exception as exc:
                log.warning("worker stop: %s", exc)
            self._loop.close()
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)

    async def start_async(self) -> WorkerProcess:
        return await asyncio.to_thread(self.start)

    async def stop_async(self, drain_timeout: float = 10.0) -> None:
        await asyncio.to_thread(self.stop, drain_timeout)

    def __enter__(self) -> WorkerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._loop is not None and self._loop.alive

    @property
    def tasks(self) -> dict[str, int]:
        """Task names this worker runs, with their concurrency."""
        out = {name: h.concurrency for name, h in self.handlers.items()}
        if self.want_llm:
            out[BUILTIN_LLM] = self.settings.llm_concurrency
        return out

    def stats(self) -> dict[str, dict[str, int]]:
        """Per task: in flight, completed and failed attempts so far."""
        return {
            name: {"inflight": w.inflight, "completed": w.completed, "failed": w.failed}
            for name, w in list(self.workers.items())
        }

    @property
    def workers(self) -> dict[str, TaskWorker]:
        """This process's task workers by task type."""
        return self.host.workers if self.host is not None else {}

    def _engine_url(self) -> str:
        return require_engine_url(
            self.settings.data_dir, "or pass --data-dir DIR or --nats-url URL"
        )

    async def _start_async(self) -> None:
        self._nc = await connect(
            self._client_url,
            name=f"dagnats-worker {self.worker_id}",
            on_disconnect=self._on_disconnect,
            on_reconnect=_on_reconnect,
            hint=": check that the engine runs (`dagnats status`) and the URL",
        )
        domain = self.settings.jetstream_domain
        self._js = jetstream.jetstream(self._nc, domain, timeout=10)  # KV writes cross a leaf
        try:
            await self._js.stream_info(protocol.TASK_STREAM)
        except NotFoundError:
            where = f" (JetStream domain {domain})" if domain else ""
            raise ServerError(
                f"NATS at {self.url}{where} has no {protocol.TASK_STREAM} stream: start a "
                "dagnats engine on it first"
            ) from None
        payloads = PayloadStore(self._js, self._nc.max_payload)
        self._defs = DefinitionStore(self._js)
        self.host = WorkerHost(
            self._nc, self._js, payloads, self.worker_id, self._executor, _on_fault
        )
        self.host.cache = StepCache(self._js, self.worker_id, self._run_def, self._nc.max_payload)
        handlers = list(self.handlers.values())
        if self.want_llm:
            self.llm = LLMService(self.settings, self._nc, self._js, self.worker_id, self._run_def)
            self.llm.cache_on = self.settings.llm_cache == "true"  # auto: on in notebooks only
            handlers.append(self.llm.handler(self.tasks[BUILTIN_LLM]))
        for handler in handlers:
            await self.host.add(handler, await self._ack_wait(handler.task))
        await self.host.start()
        await self._share()
        self._share_task = asyncio.create_task(self._share_loop())
        if self._follow:
            self._follow_task = asyncio.create_task(self._follow_engine())

    async def _stop_async(self, drain_timeout: float) -> None:
        self._closing = True
        for task in (self._share_task, self._follow_task):
            if task is not None:
                task.cancel()
        online = self._nc is not None and self._nc.is_connected
        if self.host is not None:
            tasks = list(self.host.workers)
            await self.host.stop(drain_timeout if online else 0.0, deregister=online)
            if online:
                with contextlib.suppress(Exception):
                    await self._share(leaving=True, tasks=tasks)
        if self.llm is not None:
            with contextlib.suppress(Exception):
                await self.llm.close()
        if self._nc is not None:
            await close_connection(self._nc)

    async def _on_disconnect(self) -> None:
        if not self._closing:
            log.warning("disconnected from NATS at %s; reconnecting", self.url)

    # -- consumers -----------------------------------------------------------------------

    async def _ack_wait(self, task: str, group: str = "") -> float:
        """The existing consumer's ack wait, else this worker's setting."""
        name = protocol.consumer_name(task, group)
        try:
            info = await self._js.consumer_info(protocol.TASK_STREAM, name)
        except NotFoundError:
            return self.settings.ack_wait.total_seconds()
        return info.config.ack_wait or self.settings.ack_wait.total_seconds()

    async def _share(self, leaving: bool = False, tasks: list[str] | None = None) -> None:
        """Set each task consumer's MaxAckPending to the sum of the concurrencies that the
        live workers declare for it (without this one when ``leaving``)."""
        totals = await registered_concurrency(self._js, exclude=self.worker_id)
        mine = self.tasks
        for task in tasks if tasks is not None else list(self.workers):
            total = totals.get(task, 0) + (0 if leaving else mine.get(task, 0))
            if total < 1:
                continue  # the last worker leaves: the consumer keeps its value
            w = self.workers.get(task)
            group = self.handlers[task].group if task in self.handlers else ""
            ack_wait = w.ack_wait if w is not None else await self._ack_wait(task, group)
            await ensure_task_consumer(self._js, task, ack_wait, total, group)

    async def _share_loop(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_EVERY)
            try:
                await self._share()
            except Exception as exc:
                log.warning("cannot update task consumers: %s", exc)

    async def _follow_engine(self) -> None:
        """Found through ``engine.json``: when the engine restarts (on another port, by
        default), reconnect to where it runs now; the durable consumers carry on."""
        while True:
            await asyncio.sleep(FOLLOW_EVERY)
            if self._nc.is_connected or self._closing:
                continue
            info = read_engine_info(self.settings.data_dir)
            url = info.get("url") if info and info.get("alive") else None
            if url and url != self.url:
                log.warning(
                    "the engine on %s now runs at %s: reconnecting", self.settings.data_dir, url
                )
                self._client_url = engine_client_url(info, self.settings.data_dir)
                self._nc.set_server_pool([self._client_url])
                self.url = url

    async def _run_def(self, run_id: str, workflow: str, def_hash: str = ""):
        """The definition version a task names (the built-in llm handler reads its step)."""
        return await self._defs.for_run(run_id, workflow, def_hash)


def _on_fault(message: str) -> None:
    log.error("%s", message)


async def _on_reconnect() -> None:
    log.warning("reconnected to NATS")

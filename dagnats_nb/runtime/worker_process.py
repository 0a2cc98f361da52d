"""Worker processes: ``dagnats worker MODULE[:ATTR]`` runs a module's ``@dn.task`` handlers.

A :class:`WorkerProcess` connects to the engine's NATS server and runs one
:class:`~dagnats_nb.runtime.workers.TaskWorker` per handler on the same durable consumer
(``worker-{task}``) as the engine's own workers, so every process of a task type takes its
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
import importlib
import importlib.util
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nats
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, NoKeysError, NotFoundError

from dagnats_nb.config import Settings
from dagnats_nb.errors import DagnatsError, ServerError
from dagnats_nb.runtime.handlers import Handler, make_handler
from dagnats_nb.runtime.loop import LoopThread
from dagnats_nb.runtime.threads import DaemonThreadPool
from dagnats_nb.runtime.workers import (
    HEARTBEAT_EVERY,
    TaskWorker,
    WorkerRegistry,
    ensure_task_consumer,
    new_worker_id,
)
from dagnats_nb.server.process import read_engine_info
from dagnats_nb.transport import jetstream
from dagnats_nb.transport.stores import DefinitionStore, PayloadStore
from dagnats_nb.wire import protocol

log = logging.getLogger("dagnats_nb.worker")

BUILTIN_LLM = "llm"
FOLLOW_EVERY = 1.0  # seconds between looks at engine.json while disconnected

HandlerMap = dict[str, tuple[Callable[..., Any], int | None]]


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
    ) -> None:
        """``handlers`` maps task names to ``(function, concurrency)`` (None: the default,
        64 for ``async def``, else 1); ``llm`` adds the built-in ``llm`` handler."""
        if not handlers and not llm:
            raise DagnatsError("a worker needs at least one handler: pass handlers or llm=True")
        self.settings = settings
        self.handlers: dict[str, Handler] = {
            name: make_handler(name, fn, conc) for name, (fn, conc) in handlers.items()
        }
        self.want_llm = llm and BUILTIN_LLM not in self.handlers
        self.url = url
        self.worker_id = worker_id or new_worker_id()
        if not protocol.is_token(self.worker_id):
            raise DagnatsError(
                f"worker id {self.worker_id!r} cannot be used as a KV key: use letters, "
                "digits, '-' or '_'"
            )
        self.workers: dict[str, TaskWorker] = {}
        self.registry: WorkerRegistry | None = None
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
        self.url = self.url or self.settings.nats_url or self._engine_url()
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

    def _engine_url(self) -> str:
        data_dir = self.settings.data_dir
        info = read_engine_info(data_dir)
        if not info or not info.get("alive"):
            raise ServerError(
                f"no engine is running on {data_dir}: start one with `dagnats serve` or "
                "Engine.start(), or pass --data-dir DIR or --nats-url URL"
            )
        return info["url"]

    async def _start_async(self) -> None:
        try:
            self._nc = await nats.connect(
                jetstream.server_list(self.url),
                name=f"dagnats-worker {self.worker_id}",
                max_reconnect_attempts=3,  # at start; forever once connected (below)
                reconnect_time_wait=0.5,
                connect_timeout=5,
                allow_reconnect=True,
                error_cb=_on_error,
                disconnected_cb=self._on_disconnect,
                reconnected_cb=_on_reconnect,
            )
        except Exception as exc:
            why = str(exc) or type(exc).__name__
            raise ServerError(
                f"cannot connect to NATS at {self.url} ({why}): check that the engine runs "
                "(`dagnats status`) and the URL"
            ) from None
        self._nc.options["max_reconnect_attempts"] = -1  # ride out server restarts
        domain = self.settings.jetstream_domain
        self._js = jetstream.jetstream(self._nc, domain, timeout=10)  # KV writes cross a leaf
        try:
            await self._js.stream_info(protocol.TASK_STREAM)
        except NotFoundError:
            where = f" (JetStream domain {domain})" if domain else ""
            raise ServerError(
                f"NATS at {self.url}{where} has no {protocol.TASK_STREAM} stream: start a dagnats "
                "engine on it first"
            ) from None
        payloads = PayloadStore(self._js, self._nc.max_payload)
        self._defs = DefinitionStore(self._js)
        self.registry = WorkerRegistry(self._js, self.worker_id)
        handlers = list(self.handlers.values())
        if self.want_llm:
            from dagnats_nb.llm import LLMService

            self.llm = LLMService(self.settings, self._nc, self._js, self.worker_id, self._run_def)
            handlers.append(make_handler(BUILTIN_LLM, self.llm.handle, self.tasks[BUILTIN_LLM]))
        for handler in handlers:
            ack_wait = await self._ack_wait(handler.task)
            w = TaskWorker(
                self._nc,
                self._js,
                payloads,
                handler,
                self.worker_id,
                ack_wait,
                self._executor,
                on_fault=_on_fault,
            )
            await w.start()
            self.workers[handler.task] = w
            self.registry.tasks[handler.task] = w
        await self.registry.start()
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
        drain = drain_timeout if online else 0.0
        stops = [w.stop(drain_timeout=drain) for w in self.workers.values()]
        results = await asyncio.gather(*stops, return_exceptions=True)
        for r in results:
            if isinstance(r, BaseException):
                log.debug("worker stop: %s", r)
        for w in self.workers.values():
            await _release_buffered(w)
        if self.registry is not None and online:
            await self.registry.stop()
            with contextlib.suppress(Exception):
                await self._share(leaving=True)
        if self.llm is not None:
            with contextlib.suppress(Exception):
                await self.llm.close()
        if self._nc is not None:
            await jetstream.close_connection(self._nc)

    async def _on_disconnect(self) -> None:
        if not self._closing:
            log.warning("disconnected from NATS at %s; reconnecting", self.url)

    # -- consumers -----------------------------------------------------------------------

    async def _ack_wait(self, task: str) -> float:
        """The existing consumer's ack wait, else this worker's setting."""
        try:
            info = await self._js.consumer_info(protocol.TASK_STREAM, protocol.consumer_name(task))
        except NotFoundError:
            return self.settings.ack_wait.total_seconds()
        return info.config.ack_wait or self.settings.ack_wait.total_seconds()

    async def _share(self, leaving: bool = False) -> None:
        """Set each task consumer's MaxAckPending to the sum of the concurrencies that the
        live workers declare for it (without this one when ``leaving``)."""
        totals = await registered_concurrency(self._js, exclude=self.worker_id)
        for task, w in self.workers.items():
            total = totals.get(task, 0) + (0 if leaving else w.handler.concurrency)
            if total < 1:
                continue  # the last worker leaves: the consumer keeps its value
            await ensure_task_consumer(self._js, task, w.ack_wait, total)

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
                self._nc.set_server_pool([url])
                self.url = url

    async def _run_def(self, run_id: str, workflow: str, def_hash: str = ""):
        """The definition version a task names (the built-in llm handler reads its step)."""
        return (await self._defs.get(workflow, def_hash or None))[1]


async def share_capacity(js, task: str, ack_wait: float) -> int:
    """Set the task consumer's MaxAckPending to the sum of the concurrencies the live
    workers declare for ``task`` in the ``workers`` KV (the engine calls this when it adds
    a handler, so worker processes already running keep their share); the sum."""
    total = (await registered_concurrency(js)).get(task, 0)
    if total >= 1:
        await ensure_task_consumer(js, task, ack_wait, total)
    return total


async def registered_concurrency(js, exclude: str | None = None) -> dict[str, int]:
    """Sum of the concurrency per task over the live entries of the ``workers`` KV."""
    kv = await js.key_value("workers")
    try:
        keys = await kv.keys()
    except (NoKeysError, NotFoundError):
        return {}
    totals: dict[str, int] = {}
    for key in keys:
        if key == exclude:
            continue
        try:
            body = json.loads((await kv.get(key)).value)
        except (KeyNotFoundError, NotFoundError, ValueError, TypeError):
            continue
        for task, info in (body.get("tasks") or {}).items():
            totals[task] = totals.get(task, 0) + int(info.get("concurrency") or 0)
    return totals


async def _release_buffered(w: TaskWorker) -> None:
    """NAK the tasks a stopped worker received but never started (still in the client-side
    buffers of its pull subscriptions: shared, and sticky when it has one), so another
    worker takes them now rather than after the ack wait."""
    for name in ("_psub", "_ssub"):
        queue = getattr(getattr(getattr(w, name, None), "_sub", None), "_pending_queue", None)
        while queue is not None and not queue.empty():
            msg = queue.get_nowait()
            if JetStreamContext.is_status_msg(msg):
                continue  # a pull request's status message, not a task
            with contextlib.suppress(Exception):
                await msg.nak()


def _on_fault(message: str) -> None:
    log.error("%s", message)


async def _on_error(exc: Exception) -> None:
    log.debug("nats: %s", exc)


async def _on_reconnect() -> None:
    log.warning("reconnected to NATS")


# -- which handlers ------------------------------------------------------------------------


def import_module(name: str):
    """Import ``name`` (a dotted module, cwd on sys.path) or load a ``.py`` file."""
    path = Path(name)
    try:
        if name.endswith(".py"):
            if not path.is_file():
                raise DagnatsError(f"module file {name} not found: check the path")
            spec = importlib.util.spec_from_file_location(path.stem, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[path.stem] = module
            sys.path.insert(0, str(path.resolve().parent))  # its sibling modules import too
            try:
                spec.loader.exec_module(module)
            except BaseException:
                sys.modules.pop(path.stem, None)
                raise
            return module
        cwd = os.getcwd()
        if cwd not in sys.path and "" not in sys.path:
            sys.path.insert(0, cwd)
        return importlib.import_module(name)
    except DagnatsError:
        raise
    except ModuleNotFoundError as exc:
        if exc.name and (name == exc.name or name.startswith(exc.name + ".")):
            raise DagnatsError(
                f"no module named {name!r}: run from its directory or pass a .py path"
            ) from None
        raise DagnatsError(f"importing module {name!r} failed: {exc}") from None
    except Exception as exc:
        raise DagnatsError(
            f"importing module {name!r} failed: {type(exc).__name__}: {exc}"
        ) from None


def load_handlers(
    spec: str | None,
    tasks: list[str] | None = None,
    concurrency: int | None = None,
) -> tuple[HandlerMap, bool]:
    """The handlers ``MODULE[:ATTR]`` names, filtered by ``tasks``, with ``concurrency`` (when
    given) for each; and whether the built-in ``llm`` handler is asked for."""
    from dagnats_nb.engine import default

    found: HandlerMap = {}
    if spec:
        modname, _, attr = spec.partition(":")
        if not modname:
            raise DagnatsError(f"{spec!r}: write MODULE or MODULE:ATTR, e.g. tasks:handlers")
        module = import_module(modname)
        if default.current() is not None:
            raise DagnatsError(
                f"importing {modname} started a dagnats engine: a worker module must only "
                "define handlers; start engines under `if __name__ == '__main__':`"
            )
        registered = dict(default._handlers)
        found = _from_attr(spec, module, attr, registered) if attr else registered
        if not found:
            raise DagnatsError(
                f"module {modname} registers no handlers: decorate functions with "
                "@dn.task('name') (or name them with MODULE:ATTR)"
            )
    llm = False
    if tasks:
        picked: HandlerMap = {}
        for t in tasks:
            if t in found:
                picked[t] = found[t]
            elif t == BUILTIN_LLM:
                llm = True
            else:
                have = ", ".join(sorted(found)) or "none"
                raise DagnatsError(
                    f"unknown task {t!r}: {spec or 'no module'} handles {have} "
                    f"(or --task {BUILTIN_LLM} for the built-in llm handler)"
                )
        found = picked
    elif not spec:
        raise DagnatsError(
            "name the handlers' module: dagnats worker MODULE[:ATTR] (or --task llm alone)"
        )
    if concurrency is not None:
        found = {name: (fn, concurrency) for name, (fn, _) in found.items()}
    return found, llm


def _from_attr(spec: str, module: Any, attr: str, registered: HandlerMap) -> HandlerMap:
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise DagnatsError(f"{spec}: module has no attribute {attr!r}") from None
    if isinstance(obj, dict):
        out: HandlerMap = {}
        for name, value in obj.items():
            fn, conc = value if isinstance(value, tuple) else (value, None)
            if not callable(fn):
                raise DagnatsError(f"{spec}: the handler of task {name!r} is not callable")
            out[str(name)] = (fn, conc)
        return out
    items = list(obj) if isinstance(obj, list | tuple) else [obj]
    out = {}
    for fn in items:
        names = [n for n, (f, _) in registered.items() if f is fn]
        if not names:
            what = getattr(fn, "__name__", repr(fn))
            raise DagnatsError(
                f"{spec}: {what} is not a @dn.task handler: decorate it with "
                "@dn.task('name'), or make ATTR a dict {task: function}"
            )
        out.update({n: registered[n] for n in names})
    return out


# -- the command ---------------------------------------------------------------------------


def run_worker(
    settings: Settings,
    spec: str | None,
    *,
    tasks: list[str] | None = None,
    concurrency: int | None = None,
    url: str | None = None,
    worker_id: str | None = None,
    drain_timeout: float = 10.0,
) -> int:
    """``dagnats worker``: run until SIGTERM or SIGINT, then drain; the exit code."""
    if concurrency is not None and concurrency < 1:
        raise DagnatsError(f"--concurrency must be at least 1, got {concurrency}")
    if drain_timeout < 0:
        raise DagnatsError(f"--drain-timeout must be >= 0 seconds, got {drain_timeout:g}")
    logging.basicConfig(level=logging.WARNING, format="dagnats worker: %(message)s")
    handlers, llm = load_handlers(spec, tasks, concurrency)
    if llm and concurrency is not None:
        settings = settings.replace(llm_concurrency=concurrency)
    worker = WorkerProcess(settings, handlers, url=url, worker_id=worker_id, llm=llm)
    stop = threading.Event()
    sigs = (signal.SIGINT, signal.SIGTERM)
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in sigs}
    try:
        worker.start()
        tasks_text = ", ".join(f"{t} (x{c})" for t, c in worker.tasks.items())
        print(f"dagnats worker {worker.worker_id} ready: {tasks_text} on {worker.url}", flush=True)
        try:
            while not stop.wait(0.5):
                pass
        finally:
            inflight = sum(s["inflight"] for s in worker.stats().values())
            print(f"dagnats worker {worker.worker_id} draining ({inflight} in flight)", flush=True)
            worker.stop(drain_timeout)
            done = sum(s["completed"] + s["failed"] for s in worker.stats().values())
            print(f"dagnats worker {worker.worker_id} stopped after {done} tasks", flush=True)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0

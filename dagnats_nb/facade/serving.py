"""Handlers this engine runs: ``@eng.task(name)`` / ``add_handler`` and the built-in
``llm`` task, a mixin of :class:`~dagnats_nb.facade.engine.Engine` (the worker host lives
on the engine's loop)."""

from __future__ import annotations

from collections.abc import Callable

from dagnats_nb.dag import WorkflowDef
from dagnats_nb.errors import DagnatsError
from dagnats_nb.facade.twins import twins
from dagnats_nb.runtime.capacity import share_capacity
from dagnats_nb.runtime.handlers import make_handler


class Serving:
    """Task handlers of an embedded engine (see the module docstring)."""

    def task(
        self,
        name: str,
        *,
        concurrency: int | None = None,
        group: str = "",
        capabilities: list[str] | tuple[str, ...] = (),
        cache: bool = False,
        version: str | None = None,
    ) -> Callable:
        """Decorator: run the function for every step whose ``task`` is ``name`` (of worker
        group ``group``: only steps with that ``worker_group``; with ``capabilities``, also
        the steps whose ``required_capabilities`` they cover, else only those needing none).
        ``concurrency``: tasks it runs at once, by default 64 for ``async def`` and 8 for a
        plain ``def`` (each in a thread of the engine's pool; 1 for one not thread-safe).
        ``cache``: serve its steps' results from the step cache when the same step ran on
        the same input before (a step's ``metadata.cache: "false"`` opts out); ``version``:
        the handler's version in the cache key (default: a hash of its code, which does not
        see the functions it calls: change ``version`` when they change)."""

        def register(fn: Callable) -> Callable:
            self.add_handler(
                name,
                fn,
                concurrency=concurrency,
                group=group,
                capabilities=capabilities,
                cache=cache,
                version=version,
            )
            return fn

        return register

    async def _add_handler(
        self,
        name: str,
        fn: Callable,
        *,
        concurrency: int | None = None,
        group: str = "",
        capabilities: list[str] | tuple[str, ...] = (),
        cache: bool = False,
        version: str | None = None,
    ):
        """Run ``fn`` for every step whose ``task`` is ``name`` (``concurrency`` at once:
        by default 64 for ``async def``, 8 for a plain ``def``, each in a thread of the
        engine's pool, which grows to fit: pass 1 for a handler that is not thread-safe;
        with ``group``, only the steps whose ``worker_group`` it is, from the consumer
        ``workers-{name}-{group}``; ``cache`` and ``version``: see :meth:`task`)."""
        handler = make_handler(
            name, fn, concurrency, group, capabilities, cache=cache, version=version
        )
        if self.host is None:
            raise DagnatsError(
                "cannot register a handler on an attached engine: handlers run in an engine "
                "started with Engine.start(), or in a worker process: `dagnats worker MODULE`"
            )
        await self._add_worker(handler)

    add_handler, add_handler_async = twins(_add_handler)

    async def _add_worker(self, handler) -> None:
        if not handler.is_async:
            sync = sum(
                w.handler.concurrency for w in self.workers.values() if not w.handler.is_async
            )
            self._executor.max_workers = max(32, sync + handler.concurrency)
        ack_wait = self.settings.ack_wait.total_seconds()
        await self.host.add(handler, ack_wait)
        await self.host.registry.beat()
        await share_capacity(self._js, handler.task, ack_wait, handler.group)
        self._setting_up()  # a workflow registered now is no forgotten handler

    # -- llm -----------------------------------------------------------------------------

    async def _start_llm(self) -> None:
        from dagnats_nb.llm import LLMService

        self.llm = LLMService(self.settings, self._nc, self._js, self.worker_id, self._run_def)
        self.llm.cache_on = self.settings.llm_cache == "true" or (
            self.settings.llm_cache == "auto" and self.notebook
        )
        await self._add_worker(self.llm.handler())

    async def _run_def(self, run_id: str, workflow: str, def_hash: str = "") -> WorkflowDef:
        """The definition a run follows: the orchestrator's, else the version its tasks name
        (a worker in another process), else the latest."""
        defn = self.orchestrator.run_defs.get(run_id) if self.orchestrator else None
        return defn if defn is not None else await self.defs.for_run(run_id, workflow, def_hash)

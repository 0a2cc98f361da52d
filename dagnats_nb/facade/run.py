"""A handle on one run: its status, output and error, and waiting on it.

A :class:`Run` holds the narrow :class:`RunHandle` of its engine (what it reads and does is
the engine's, each call a snapshot taken on the engine loop), not the engine module.
"""

from __future__ import annotations

from typing import Any, Protocol

from dagnats_nb.dag.state import RUN_TERMINAL
from dagnats_nb.errors import RunError
from dagnats_nb.facade.tokens import TokenSource, TokenStream


class RunTimeout(RunError, TimeoutError):
    """A run did not end within the time a caller waited."""


class RunHandle(TokenSource, Protocol):
    """What a :class:`Run` needs of its engine (the :class:`~dagnats_nb.facade.Engine`)."""

    @property
    def running(self) -> bool: ...

    def run_state(self, run_id: str) -> dict[str, Any] | None: ...

    def run_output(self, run_id: str) -> Any: ...

    async def run_output_async(self, run_id: str) -> Any: ...

    def wait_run(self, run_id: str, timeout: float | None = 60) -> str: ...

    async def wait_run_async(self, run_id: str, timeout: float | None = 60) -> str: ...

    def cancel_run(self, run_id: str, reason: str = "cancelled by user") -> None: ...

    async def cancel_run_async(self, run_id: str, reason: str = "cancelled by user") -> None: ...

    def events(self, run_id: str) -> Any: ...

    def steps(self, run_id: str) -> Any: ...


class Run:
    """One run of a workflow. Status and output are read live from the engine."""

    def __init__(self, engine: RunHandle, run_id: str, workflow: str) -> None:
        self.engine = engine
        self.id = run_id
        self.workflow = workflow
        self._last: dict[str, Any] | None = None  # what was last read of a finished run
        # the task types no live worker served when this handle started the run (empty when
        # all were served, or the handle came from get_run): its steps of those tasks wait
        self.unserved: list[str] = []
        # a fork (eng.fork) started by this handle: the run it was forked from, and the
        # steps it completed with that run's outputs, and the steps it ran again from
        # ("" and [] otherwise, or from get_run)
        self.forked_from = ""
        self.reused: list[str] = []
        self.fork_steps: list[str] = []

    def _summary(self) -> dict[str, Any]:
        """The engine's summary of the run; once the engine has stopped, what was last seen
        of it when it had ended (a stopped engine can be asked nothing)."""
        if self._last is not None and not self.engine.running:
            return self._last
        summary = self.engine.run_state(self.id) or {
            "status": "pending",
            "output": None,
            "error": None,
        }
        if summary["status"] in RUN_TERMINAL:
            self._last = {k: v for k, v in summary.items() if k != "state"}
        return summary

    def _ended(self, status: str) -> None:
        if self._last is None or self._last["status"] != status:
            self._last = {"status": status, "output": None, "error": None}

    @property
    def status(self) -> str:
        """``pending`` (not yet seen by the orchestrator), ``running``, ``completed``,
        ``failed`` or ``cancelled``."""
        return self._summary()["status"]

    @property
    def output(self) -> Any:
        """The run's output (the single terminal step's output, or ``{step_id: output}``)."""
        return self.engine.run_output(self.id)

    async def output_async(self) -> Any:
        """The awaitable twin of :attr:`output`."""
        return await self.engine.run_output_async(self.id)

    @property
    def error(self) -> str | None:
        return self._summary().get("error")

    @property
    def done(self) -> bool:
        return self.status in RUN_TERMINAL

    def wait(self, timeout: float | None = 60) -> Run:
        """Block until the run ends; return it. Raises :class:`RunTimeout` after ``timeout`` s."""
        self._ended(self.engine.wait_run(self.id, timeout))
        return self

    async def wait_async(self, timeout: float | None = 60) -> Run:
        """The awaitable twin of :meth:`wait`."""
        self._ended(await self.engine.wait_run_async(self.id, timeout))
        return self

    def cancel(self, reason: str = "cancelled by user") -> None:
        """Cancel the run: queued and running steps are abandoned, the run ends ``cancelled``."""
        self.engine.cancel_run(self.id, reason)

    async def cancel_async(self, reason: str = "cancelled by user") -> None:
        """The awaitable twin of :meth:`cancel`."""
        await self.engine.cancel_run_async(self.id, reason)

    def stream(
        self, step_id: str, *, map_index: int | None = None, timeout: float | None = None
    ) -> TokenStream:
        """The tokens of a streaming ``llm`` step as they arrive (``for t in run.stream(...)``
        or ``async for``); live only: tokens sent before the call are not replayed."""
        return TokenStream(self.engine, self.id, step_id, map_index=map_index, timeout=timeout)

    def events(self):
        return self.engine.events(self.id)

    def steps(self):
        return self.engine.steps(self.id)

    def __repr__(self) -> str:
        return f"<Run {self.id} {self.workflow} {self.status}>"

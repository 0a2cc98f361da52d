"""A handle on one run: its status, output and error, and waiting on it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dagnats_nb.dag.state import RUN_TERMINAL
from dagnats_nb.errors import RunError

if TYPE_CHECKING:
    from dagnats_nb.facade.engine import Engine


class RunTimeout(RunError, TimeoutError):
    """A run did not end within the time a caller waited."""


class Run:
    """One run of a workflow. Status and output are read live from the engine."""

    def __init__(self, engine: Engine, run_id: str, workflow: str) -> None:
        self.engine = engine
        self.id = run_id
        self.workflow = workflow

    def _summary(self) -> dict[str, Any]:
        return self.engine.run_state(self.id) or {
            "status": "pending",
            "output": None,
            "error": None,
        }

    @property
    def status(self) -> str:
        """``pending`` (not yet seen by the orchestrator), ``running``, ``completed``,
        ``failed`` or ``cancelled``."""
        return self._summary()["status"]

    @property
    def output(self) -> Any:
        """The run's output (the single terminal step's output, or ``{step_id: output}``)."""
        summary = self._summary()
        if _from_history(summary):  # an attached engine: read it from the history
            return self.engine._call(self.engine.history_output(self.id))
        value = summary.get("output")
        return self.engine._call(self.engine.expand(value)) if value is not None else None

    async def output_async(self) -> Any:
        summary = self._summary()
        if _from_history(summary):
            return await self.engine._call_async(self.engine.history_output(self.id))
        value = summary.get("output")
        return (
            await self.engine._call_async(self.engine.expand(value)) if value is not None else None
        )

    @property
    def error(self) -> str | None:
        return self._summary().get("error")

    @property
    def done(self) -> bool:
        return self.status in RUN_TERMINAL

    def wait(self, timeout: float | None = 60) -> Run:
        """Block until the run ends; return it. Raises :class:`RunTimeout` after ``timeout`` s."""
        try:
            self.engine._call(self.engine.wait_run(self.id, timeout))
        except TimeoutError:
            raise self._timeout(timeout) from None
        return self

    async def wait_async(self, timeout: float | None = 60) -> Run:
        try:
            await self.engine._call_async(self.engine.wait_run(self.id, timeout))
        except TimeoutError:
            raise self._timeout(timeout) from None
        return self

    def _timeout(self, timeout: float | None) -> RunTimeout:
        return RunTimeout(
            f"run {self.id} of workflow '{self.workflow}' is still {self.status} after "
            f"{timeout}s: wait longer, or look at eng.steps('{self.id}') to see which step waits"
        )

    def cancel(self, reason: str = "cancelled by user") -> None:
        """Cancel the run: queued and running steps are abandoned, the run ends ``cancelled``."""
        self.engine._call(self.engine.cancel_run(self.id, reason))

    async def cancel_async(self, reason: str = "cancelled by user") -> None:
        await self.engine._call_async(self.engine.cancel_run(self.id, reason))

    def stream(self, step_id: str, *, map_index: int | None = None, timeout: float | None = None):
        """The tokens of a streaming ``llm`` step as they arrive (``for t in run.stream(...)``
        or ``async for``); live only: tokens sent before the call are not replayed."""
        from dagnats_nb.llm.streaming import TokenStream

        return TokenStream(self.engine, self.id, step_id, map_index=map_index, timeout=timeout)

    def events(self):
        return self.engine.events(self.id)

    def steps(self):
        return self.engine.steps(self.id)

    def __repr__(self) -> str:
        return f"<Run {self.id} {self.workflow} {self.status}>"


def _from_history(summary: dict[str, Any]) -> bool:
    """A completed run's KV summary (no run state, no output): the output is in its history."""
    return "state" not in summary and summary.get("status") == "completed"

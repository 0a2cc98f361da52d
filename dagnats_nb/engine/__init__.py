"""The facade: :class:`Engine` (life cycle, workflows, runs, reads) and :class:`Run`."""

from dagnats_nb.engine.facade import Engine, new_run_id
from dagnats_nb.engine.run import Run, RunTimeout

__all__ = ["Engine", "Run", "RunTimeout", "new_run_id"]

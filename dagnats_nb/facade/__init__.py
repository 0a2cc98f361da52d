"""The facade: :class:`Engine` (life cycle, workflows, runs, reads) and :class:`Run`."""

from dagnats_nb.facade.engine import Engine, new_run_id
from dagnats_nb.facade.run import Run, RunTimeout

__all__ = ["Engine", "Run", "RunTimeout", "new_run_id"]

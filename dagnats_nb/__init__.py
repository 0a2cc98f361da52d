"""dagnats-nb: a durable DAG workflow engine on NATS JetStream, with the notebook as its console.

import dagnats_nb as dn
with dn.Engine.start(data_dir=".dagnats") as eng:
    @eng.task("greet")
    async def greet(ctx):
        return {"msg": "hello " + ctx.input["name"]}
    eng.register("workflow.json")
    run = eng.run("hello-world", input={"name": "ada"})
"""

from dagnats_nb.facade.engine import Engine, new_run_id
from dagnats_nb.facade.run import Run, RunTimeout
from dagnats_nb.runtime.handlers import Continue, Permanent, RetryAfter, TaskContext

from .dag import WorkflowDef, load_workflow
from .errors import (
    ConfigError,
    DagnatsError,
    EngineLocked,
    RunError,
    ServerError,
    UnservedTaskWarning,
    UnsupportedStepType,
    WorkflowError,
)

# isort: split
# After `.task`: `dn.task` is the decorator of the kernel's default engine, not the module.
from dagnats_nb.adapters.notebook import load_ipython_extension, unload_ipython_extension
from dagnats_nb.facade.default import engine, start_engine, stop_engine, task

__all__ = [
    "ConfigError",
    "Continue",
    "DagnatsError",
    "Engine",
    "EngineLocked",
    "Permanent",
    "RetryAfter",
    "Run",
    "RunError",
    "RunTimeout",
    "ServerError",
    "TaskContext",
    "UnservedTaskWarning",
    "UnsupportedStepType",
    "WorkflowDef",
    "WorkflowError",
    "dashboard",
    "load_workflow",
    "engine",
    "load_ipython_extension",
    "new_run_id",
    "start_engine",
    "stop_engine",
    "task",
    "unload_ipython_extension",
]

__version__ = "0.2.0"

# The composition root: the adapters plug into the engine here (it never imports them).
from dagnats_nb.adapters.http.extension import http_extension  # noqa: E402
from dagnats_nb.adapters.notebook import register_if_ipython  # noqa: E402
from dagnats_nb.adapters.notebook.dashboard import dashboard  # noqa: E402
from dagnats_nb.adapters.notebook.progress import default_progress  # noqa: E402
from dagnats_nb.facade import extensions  # noqa: E402

extensions.add_extension(http_extension)
extensions.set_progress_display(default_progress)
register_if_ipython()

"""dagnats-nb: a durable DAG workflow engine on NATS JetStream, with the notebook as its console.

import dagnats_nb as dn
with dn.Engine.start(data_dir=".dagnats") as eng:
    @eng.task("greet")
    async def greet(ctx):
        return {"msg": "hello " + ctx.input["name"]}
    eng.register("workflow.json")
    run = eng.run("hello-world", input={"name": "ada"})
"""

from dagnats_nb.engine.facade import Engine, new_run_id
from dagnats_nb.engine.run import Run, RunTimeout
from dagnats_nb.runtime.handlers import Continue, Permanent, RetryAfter, TaskContext

from .dag import WorkflowDef, load_workflow
from .errors import (
    ConfigError,
    DagnatsError,
    EngineLocked,
    RunError,
    ServerError,
    UnsupportedStepType,
    WorkflowError,
)

# isort: split
# After `.task`: `dn.task` is the decorator of the kernel's default engine, not the module.
from dagnats_nb.adapters.notebook import load_ipython_extension, unload_ipython_extension
from dagnats_nb.engine.default import engine, start_engine, stop_engine, task

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
    "UnsupportedStepType",
    "WorkflowDef",
    "WorkflowError",
    "load_workflow",
    "engine",
    "load_ipython_extension",
    "new_run_id",
    "start_engine",
    "stop_engine",
    "task",
    "unload_ipython_extension",
]

__version__ = "0.1.0"

from dagnats_nb.adapters.notebook import register_if_ipython  # noqa: E402

register_if_ipython()

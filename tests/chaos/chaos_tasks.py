"""The chaos suite's task: each execution leaves fsync'd lines in a side-effect log.

``run_id step_id attempt pid start`` when the handler begins (an execution, counted even if
the process dies before it ends) and ``... end`` when it returns. The log is named by
``DAGNATS_CHAOS_LOG``; each line is one ``O_APPEND`` write followed by ``fsync``, so lines
from several processes never mix and a line written before a ``kill -9`` is on disk.

Served by the engine child (tests/chaos/engine_child.py) and by ``dagnats worker
tests.chaos.chaos_tasks:work`` processes.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import dagnats_nb as dn

LOG_ENV = "DAGNATS_CHAOS_LOG"
SLOTS = 4  # tasks in flight per worker: the at-least-once window of one fault


def record(ctx: dn.TaskContext, phase: str) -> None:
    line = f"{ctx.run_id} {ctx.step_id} {ctx.attempt} {os.getpid()} {phase}\n"
    fd = os.open(os.environ[LOG_ENV], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line.encode())
        os.fsync(fd)
    finally:
        os.close(fd)


@dn.task("chaos", concurrency=SLOTS)
def work(ctx: dn.TaskContext) -> dict:
    """``input``: ``{"n", "sleep"?, "hold"?, "blob"?}``, or the previous step's output.

    Sleeps ``sleep`` seconds (simulated work, so tasks are in flight when a fault hits),
    waits while the file ``hold`` does not exist, returns ``{"n": n + 1, ...}`` with a
    ``blob`` of that many bytes when asked (an output for the object store)."""
    record(ctx, "start")
    value = ctx.input or {}
    time.sleep(float(value.get("sleep", 0.05)))
    hold = value.get("hold")
    while hold and not Path(hold).exists():
        time.sleep(0.02)
    out = {k: value[k] for k in ("sleep", "hold", "blob") if k in value}
    out["n"] = int(value["n"]) + 1
    out["pid"] = os.getpid()
    if "blob" in value:
        out["data"] = "x" * int(value["blob"])
        out["seen"] = len(value.get("data", ""))  # the previous step's blob, read back
    record(ctx, "end")
    return out

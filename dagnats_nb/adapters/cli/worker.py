"""``dagnats worker MODULE[:ATTR]``: run a module's handlers until SIGTERM or SIGINT."""

from __future__ import annotations

import logging
import signal
import threading

from dagnats_nb.config import Settings
from dagnats_nb.errors import DagnatsError
from dagnats_nb.facade.handler_modules import load_handlers
from dagnats_nb.facade.worker_process import WorkerProcess


def run_worker(
    settings: Settings,
    spec: str | None,
    *,
    tasks: list[str] | None = None,
    concurrency: int | None = None,
    url: str | None = None,
    worker_id: str | None = None,
    drain_timeout: float = 10.0,
    group: str = "",
    capabilities: list[str] | None = None,
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
    worker = WorkerProcess(
        settings,
        handlers,
        url=url,
        worker_id=worker_id,
        llm=llm,
        group=group,
        capabilities=capabilities or (),
    )
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

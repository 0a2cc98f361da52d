"""Handlers for tests/test_worker_process.py, run by ``dagnats worker tests.worker_tasks``.

Each call appends one line ``run_id step_id attempt pid`` to the file named by
``DAGNATS_TEST_WORKER_LOG`` (an O_APPEND write of one short line: whole lines even with
several processes), so a test can tell which process ran which task and how often.
"""

from __future__ import annotations

import asyncio
import os
import time

import dagnats_nb as dn

LOG_ENV = "DAGNATS_TEST_WORKER_LOG"


def record(ctx: dn.TaskContext, what: str = "done") -> None:
    line = f"{ctx.run_id} {ctx.step_id} {ctx.attempt} {os.getpid()} {what}\n"
    fd = os.open(os.environ[LOG_ENV], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


@dn.task("echo", concurrency=4)
async def echo(ctx):
    """A few milliseconds of work, so every process gets its share of a burst."""
    await asyncio.sleep(0.005)
    record(ctx)
    return {"echo": ctx.input, "pid": os.getpid()}


@dn.task("slow", concurrency=4)
async def slow(ctx):
    """Records its start, sleeps ``input.sleep`` seconds, records its end."""
    record(ctx, "start")
    await asyncio.sleep(float((ctx.input or {}).get("sleep", 3)))
    record(ctx)
    return {"pid": os.getpid()}


@dn.task("slow_sync", concurrency=2)
def slow_sync(ctx):
    """A plain ``def`` handler (runs on a thread): same as ``slow``."""
    record(ctx, "start")
    time.sleep(float((ctx.input or {}).get("sleep", 3)))
    record(ctx)
    return {"pid": os.getpid()}


@dn.task("boom")
def boom(ctx):
    raise dn.Permanent("boom from the worker process")


@dn.task("not_json")
def not_json(ctx):
    return {"value": object()}


def undecorated(ctx):
    return None


ONLY_ECHO = {"echo": (echo, 2)}
SLOW_ONES = [slow, slow_sync]

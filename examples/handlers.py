"""Handlers of the example workflows in this folder.

Serve them from another process with ``dagnats worker examples/handlers.py``, or in one
with ``dn.Engine.start(handlers=HANDLERS)``. ``@dn.task`` only records a handler while no
kernel engine runs (``dagnats worker`` reads the records); in a notebook whose engine runs,
importing this module adds them to that engine.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import dagnats_nb as dn


@dn.task("greet")
async def greet(ctx: dn.TaskContext) -> dict[str, str]:
    """hello-world: an ``async def`` handler runs on the engine's event loop."""
    return {"msg": "hello " + ctx.input["name"]}


@dn.task("uppercase")
def uppercase(ctx: dn.TaskContext) -> dict[str, str]:
    """hello-world: a plain ``def`` handler runs in a thread of the engine's pool."""
    return {"msg": ctx.input["msg"].upper()}


@dn.task("fetch")
def fetch(ctx: dn.TaskContext) -> list[str]:
    """digest: the list the map step ``summarize`` fans out over."""
    return [f"doc-{i}" for i in range(ctx.input["n"])]


@dn.task("summarize", concurrency=8)
async def summarize(ctx: dn.TaskContext) -> dict[str, str]:
    """digest: one element of the map step (``ctx.input`` is one document)."""
    await asyncio.sleep(0.01)  # an LLM or HTTP call would wait here
    return {"doc": ctx.input, "summary": ctx.input.upper()}


@dn.task("report")
def report(ctx: dn.TaskContext) -> dict[str, Any]:
    """digest: the map step's outputs, in input order."""
    return {"count": len(ctx.input), "first": ctx.input[0]["summary"] if ctx.input else None}


@dn.task("charge")
def charge(ctx: dn.TaskContext) -> dict[str, Any]:
    """invoice: a negative amount fails at once (no retries), and is dead-lettered."""
    amount = ctx.input["amount"]
    if amount < 0:
        raise dn.Permanent(f"cannot charge {amount}")
    return {"charged": amount}


@dn.task("receipt")
def receipt(ctx: dn.TaskContext) -> dict[str, Any]:
    """invoice: runs after ``charge`` with its output."""
    return {"receipt": f"paid {ctx.input['charged']}"}


@dn.task("refund")
def refund(ctx: dn.TaskContext) -> dict[str, Any]:
    """invoice: ``charge``'s on_failure step, input ``{"step_id", "error", "input"}``."""
    return {"refunded": ctx.input["input"]["amount"], "why": ctx.input["error"]}


@dn.task("wake")
def wake(ctx: dn.TaskContext) -> dict[str, bool]:
    """nap: runs after the sleep step, whose output is null."""
    return {"awake": ctx.input is None}


@dn.task("draft")
def draft(ctx: dn.TaskContext) -> dict[str, str]:
    """review: the text a person approves."""
    return {"text": f"Release notes for {ctx.input['release']}"}


@dn.task("publish")
def publish(ctx: dn.TaskContext) -> dict[str, Any]:
    """review: runs once the draft is approved; ``ctx.input`` is the decision as recorded."""
    return {"published": True, "by": ctx.input.get("by")}


@dn.task("collect")
def collect(ctx: dn.TaskContext) -> list[str]:
    """llm-labels: the messages to label."""
    return list(ctx.input["messages"])


@dn.task("tally")
def tally(ctx: dn.TaskContext) -> dict[str, int]:
    """llm-labels: count the labels the llm map step answered (``{"json": {...}}`` each)."""
    return dict(Counter(item["json"]["label"] for item in ctx.input))


@dn.task("build")
def build(ctx: dn.TaskContext) -> dict[str, Any]:
    """morning-report: ``ctx.input`` is the trigger's envelope, or a run's own input."""
    return {"built": True, "trigger": (ctx.input or {}).get("trigger")}


@dn.task("echo")
def echo(ctx: dn.TaskContext) -> Any:
    """http-echo: the run's input (the HTTP request's envelope) as its output."""
    return ctx.input


HANDLERS = {
    fn.__name__: fn
    for fn in (
        greet,
        uppercase,
        fetch,
        summarize,
        report,
        charge,
        receipt,
        refund,
        wake,
        draft,
        publish,
        collect,
        tally,
        build,
        echo,
    )
}

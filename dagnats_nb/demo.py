"""``dagnats demo``: a small document pipeline on an embedded engine.

fetch -> analyze (map over documents, flaky: retried) -> rank + stats -> alert (skip_if) -> report
"""

from __future__ import annotations

import asyncio
import random
import tempfile
import time
from collections import Counter
from typing import Any

import pandas as pd

DOCS = [
    "The new release is fast and the install was easy.",
    "Support never answered; the outage lasted all night and we lost data.",
    "Great docs, clear examples, a pleasant upgrade.",
    "The dashboard is slow and the export is broken again.",
    "Retries saved our batch job when the provider throttled us.",
    "Billing doubled without warning, which is a bad surprise.",
    "Latency is stable and the team loves the notebook console.",
    "Setup was painless and the defaults are sane.",
]
GOOD = {
    "fast",
    "easy",
    "great",
    "clear",
    "pleasant",
    "saved",
    "stable",
    "loves",
    "painless",
    "sane",
}
BAD = {"never", "outage", "lost", "slow", "broken", "throttled", "doubled", "bad"}

WORKFLOW = {
    "name": "doc-digest",
    "version": "1.0",
    "default_retry": {
        "max_attempts": 3,
        "strategy": "exponential",
        "initial_delay": "50ms",
        "max_delay": "1s",
        "multiplier": 2,
    },
    "steps": [
        {"id": "fetch", "task": "fetch"},
        {
            "id": "analyze",
            "task": "analyze",
            "type": "map",
            "depends_on": ["fetch"],
            "config": {"max_items": 100},
        },
        {"id": "rank", "task": "rank", "depends_on": ["analyze"]},
        {"id": "stats", "task": "stats", "depends_on": ["analyze"]},
        {
            "id": "alert",
            "task": "alert",
            "depends_on": ["stats"],
            "skip_if": {"step_id": "stats", "field": "negative", "op": "==", "value": 0},
        },
        {"id": "report", "task": "report", "depends_on": ["rank", "stats", "alert"]},
    ],
}


def register_handlers(eng: Any, seed: int = 7) -> None:
    rng = random.Random(seed)

    @eng.task("fetch")
    def fetch(ctx):
        k = ctx.input.get("docs", len(DOCS)) if isinstance(ctx.input, dict) else len(DOCS)
        return DOCS[:k]

    @eng.task("analyze", concurrency=16)
    async def analyze(ctx):
        await asyncio.sleep(rng.uniform(0.01, 0.05))  # stands in for an I/O-bound call
        if ctx.attempt == 1 and rng.random() < 0.2:
            raise ConnectionError("transient: upstream reset the connection")
        words = [w.strip(".,;").lower() for w in ctx.input.split()]
        score = sum(w in GOOD for w in words) - sum(w in BAD for w in words)
        return {"doc": ctx.input[:40], "words": len(words), "score": score}

    @eng.task("rank")
    def rank(ctx):
        return sorted(ctx.input, key=lambda d: d["score"], reverse=True)[:3]

    @eng.task("stats")
    def stats(ctx):
        scores = Counter(
            "positive" if d["score"] > 0 else "negative" if d["score"] < 0 else "neutral"
            for d in ctx.input
        )
        return {
            "documents": len(ctx.input),
            "words": sum(d["words"] for d in ctx.input),
            "positive": scores["positive"],
            "negative": scores["negative"],
        }

    @eng.task("alert")
    def alert(ctx):
        return f"{ctx.input['negative']} unhappy document(s) need a reply"

    @eng.task("report")
    def report(ctx):
        return {
            "best": ctx.input["rank"][0]["doc"],
            "stats": ctx.input["stats"],
            "alert": ctx.input["alert"],
        }


def run_demo(data_dir: str | None = None, runs: int = 3) -> int:
    from .engine import Engine

    tmp = None
    if data_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="dagnats-demo-")
        data_dir = tmp.name
    pd.set_option("display.width", 160)
    pd.set_option("display.max_colwidth", 60)
    t0 = time.perf_counter()
    with Engine.start(data_dir=data_dir) as eng:
        print(f"engine up in {time.perf_counter() - t0:.2f}s: {eng.url}, data in {data_dir}")
        register_handlers(eng)
        eng.register(WORKFLOW)
        started = [eng.start_run("doc-digest", input={"docs": 8 - i}) for i in range(runs)]
        done = [r.wait(timeout=60) for r in started]
        print("\nruns:")
        print(eng.runs()[["run_id", "workflow", "status", "duration_s", "error"]].to_string())
        first = done[0]
        print(f"\nsteps of run {first.id}:")
        cols = ["step_id", "type", "status", "attempt", "items", "duration_s", "error"]
        print(eng.steps(first.id)[cols].to_string())
        print(f"\noutput of run {first.id}:\n{first.output}")
        events = eng.events(first.id)
        print(f"\n{len(events)} events in its history:")
        print(events.groupby("type").size().to_string())
        history = next(s for s in eng.status()["streams"] if s["stream"] == "WORKFLOW_HISTORY")
        per_event = history["bytes"] / max(1, history["messages"])
        print(
            f"\nWORKFLOW_HISTORY: {history['messages']} events, {history['bytes']} bytes "
            f"({per_event:.0f} bytes per event)"
        )
        failed = [r for r in done if r.status != "completed"]
    if tmp is not None:
        tmp.cleanup()
    return 1 if failed else 0

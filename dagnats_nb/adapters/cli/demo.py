"""``dagnats demo``: an LLM document pipeline on an embedded engine and the offline simulator.

docs -> summarise (llm, map) -> collect -> classify (llm, map, JSON) -> aggregate
-> digest (llm, streamed). ``collect`` pairs each document with its summary (a map step
cannot depend on another map step directly).

The same pipeline is the subject of ``notebooks/02-llm-pipeline.ipynb``. Every LLM call goes
to the simulator (named ``simulated:<model>`` in outputs and tables), which here also
throttles (429 with Retry-After) and fails (500) now and then, so the retries show.
"""

from __future__ import annotations

import random
import tempfile
import time
from collections import Counter
from typing import Any

import pandas as pd

SUBJECTS = [
    "the new release",
    "the install",
    "support",
    "the dashboard",
    "the export",
    "billing",
    "the docs",
    "the notebook console",
    "the upgrade",
    "the API",
]
PRAISE = [
    "is fast and pleasant",
    "was painless",
    "saved our batch job",
    "is clear and well explained",
    "works well with our team",
]
COMPLAINTS = [
    "is slow again",
    "broke last night and we lost data",
    "doubled without warning",
    "never answered our ticket",
    "throttled us all week",
]
NEUTRAL = ["changed its layout", "moved to a new page", "was discussed at the meeting"]

# Simulator settings of the demo (and the notebook's default): replies in ~0.3 s, some
# throttling and failures so that retries show, streaming at 80 tokens/s.
SIMULATOR = {
    "llm_provider": "simulated",
    "llm_sim_latency_ms": 300,
    "llm_sim_latency_sigma": 0.5,
    "llm_sim_tokens_per_s": 80,
    "llm_sim_429_rate": 0.05,
    "llm_sim_500_rate": 0.03,
    "llm_sim_retry_after": "200ms",
    "llm_sim_seed": 7,
}

WORKFLOW: dict[str, Any] = {
    "name": "doc-digest",
    "version": "2.0",
    "default_retry": {
        "max_attempts": 5,
        "strategy": "exponential",
        "initial_delay": "100ms",
        "max_delay": "2s",
        "multiplier": 2,
    },
    "steps": [
        {"id": "docs", "task": "load-docs"},
        {
            "id": "summarise",
            "task": "llm",
            "type": "map",
            "depends_on": ["docs"],
            "config": {
                "system": "You summarise customer feedback in one short sentence.",
                "prompt": "Summarise this message:\n{input.text}",
                "max_tokens": 40,
                "temperature": 0.2,
            },
        },
        {"id": "collect", "task": "collect", "depends_on": ["docs", "summarise"]},
        {
            "id": "classify",
            "task": "llm",
            "type": "map",
            "depends_on": ["collect"],
            "config": {
                "prompt": (
                    "Classify the sentiment of this summary as one of: positive, negative, "
                    'neutral. Reply with JSON {{"label": ..., "confidence": 0..1}}.\n'
                    "Summary: {input.summary}"
                ),
                "response_format": "json",
                "temperature": 0,
            },
        },
        {"id": "aggregate", "task": "aggregate", "depends_on": ["collect", "classify"]},
        {
            "id": "digest",
            "task": "llm",
            "depends_on": ["aggregate"],
            "config": {
                "prompt": (
                    "Write a two-sentence digest for the product team. Label counts: "
                    "{aggregate.counts}. Most negative: {aggregate.worst}"
                ),
                "max_tokens": 60,
                "stream": True,
            },
        },
    ],
}


def documents(n: int = 50, seed: int = 1) -> list[dict[str, Any]]:
    """``n`` short customer messages ``{"id", "text"}``, the same for a seed."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        mood = rng.choice([PRAISE, PRAISE, COMPLAINTS, COMPLAINTS, NEUTRAL])
        text = f"{rng.choice(SUBJECTS).capitalize()} {rng.choice(mood)}."
        if rng.random() < 0.5:
            text += f" Also, {rng.choice(SUBJECTS)} {rng.choice(mood)}."
        out.append({"id": f"doc-{i:03d}", "text": text})
    return out


def register_handlers(eng: Any) -> None:
    """The plain Python steps of the pipeline (the others are built-in ``llm`` steps)."""

    @eng.task("load-docs")
    def load_docs(ctx):
        n = ctx.input.get("docs", 50) if isinstance(ctx.input, dict) else 50
        return documents(n)

    @eng.task("collect")
    def collect(ctx):
        docs, summaries = ctx.input["docs"], ctx.input["summarise"]
        return [{**d, "summary": s["text"]} for d, s in zip(docs, summaries, strict=True)]

    @eng.task("aggregate")
    def aggregate(ctx):
        docs, labels = ctx.input["collect"], ctx.input["classify"]
        rows = [
            {
                "id": d["id"],
                "summary": d["summary"][:80],
                "label": c["json"].get("label"),
                "confidence": c["json"].get("confidence", 0),
            }
            for d, c in zip(docs, labels, strict=True)
        ]
        counts = Counter(r["label"] for r in rows)
        negative = [r for r in rows if r["label"] == "negative"]
        worst = max(negative, key=lambda r: r["confidence"])["id"] if negative else None
        return {"documents": len(rows), "counts": dict(counts), "worst": worst, "rows": rows}


def run_demo(data_dir: str | None = None, runs: int = 3) -> int:
    from dagnats_nb.facade.engine import Engine

    tmp = None
    if data_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="dagnats-demo-")
        data_dir = tmp.name
    pd.set_option("display.width", 160)
    pd.set_option("display.max_colwidth", 60)
    t0 = time.perf_counter()
    with Engine.start(data_dir=data_dir, **SIMULATOR) as eng:
        print(f"engine up in {time.perf_counter() - t0:.2f}s: {eng.url}, data in {data_dir}")
        print("LLM provider: the offline simulator (outputs name models 'simulated:...')")
        register_handlers(eng)
        eng.register(WORKFLOW)
        started = [eng.start_run("doc-digest", input={"docs": 50 - 10 * i}) for i in range(runs)]
        print(f"\ndigest of run {started[0].id}, streamed as it is written:")
        for token in started[0].stream("digest", timeout=120):
            print(token, end="", flush=True)
        print()
        done = [r.wait(timeout=120) for r in started]
        print("\nruns:")
        print(eng.runs()[["run_id", "workflow", "status", "duration_s", "error"]].to_string())
        first = done[0]
        print(f"\nsteps of run {first.id}:")
        cols = ["step_id", "type", "status", "attempt", "items", "duration_s", "error"]
        print(eng.steps(first.id)[cols].to_string())
        if first.status == "completed":
            out = first.output
            print(f"\noutput of run {first.id} ({out['model']}):\n{out['text']}")
        print("\nLLM usage (from TELEMETRY):")
        print(eng.llm_usage().to_string(index=False))
        events = eng.events(first.id)
        print(f"\n{len(events)} events in the history of run {first.id}:")
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

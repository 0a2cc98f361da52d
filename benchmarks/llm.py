#!/usr/bin/env python
"""I/O-bound LLM calls through the engine: simulated calls of fixed latency through a map
step of the built-in ``llm`` task type, against the floor of plain ``asyncio.gather``.

    python benchmarks/llm.py [--quick] [--calls N] [--latency-ms MS]

Prints ONE JSON object on stdout (progress goes to stderr). For each concurrency (100 and
500): the floor (``asyncio.gather`` of the same sleeps, at most ``concurrency`` at once,
on a fresh loop in this process), the engine's wall time for one run whose map step makes
the calls (from ``start_run`` to the run's end, including the step that makes the list),
the ideal (calls / concurrency x latency), and the engine's overhead per call.
``targets`` (issue 15): wall <= 1.10 x ideal at concurrency 100, <= 1.25 x ideal at 500.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import json
import os
import platform
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dagnats_nb as dn

CONCURRENCIES = (100, 500)
TARGET_RATIOS = {100: 1.10, 500: 1.25}  # wall / ideal, per concurrency (issue 15)


def log(msg: str) -> None:
    print(f"[llm-bench] {msg}", file=sys.stderr, flush=True)


def workflow(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "steps": [
            {"id": "items", "task": "bench-items"},
            {
                "id": "call",
                "task": "llm",
                "type": "map",
                "depends_on": ["items"],
                "config": {"prompt": "item {input}", "max_items": 10_000, "max_tokens": 8},
            },
        ],
    }


async def floor(calls: int, latency: float, concurrency: int) -> float:
    """Plain asyncio: the same sleeps, at most ``concurrency`` at once."""
    slots = asyncio.Semaphore(concurrency)

    async def one() -> None:
        async with slots:
            await asyncio.sleep(latency)

    t0 = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(calls)))
    return time.perf_counter() - t0


def engine_case(root: Path, calls: int, latency_ms: float, concurrency: int) -> dict[str, Any]:
    latency = latency_ms / 1000
    with dn.Engine.start(
        data_dir=root / f"c{concurrency}",
        llm_provider="simulated",
        llm_concurrency=concurrency,
        llm_sim_latency_ms=latency_ms,
        llm_sim_latency_sigma=0,
        llm_sim_tokens_per_s=0,
    ) as eng:

        @eng.task("bench-items")
        async def items(ctx):
            return list(range(ctx.input))

        eng.register(workflow("llm-bench"))
        warm = eng.run("llm-bench", input=min(concurrency, calls), timeout=120)
        assert warm.status == "completed", warm.error
        floor_s = asyncio.run(floor(calls, latency, concurrency))
        t0 = time.perf_counter()
        run = eng.start_run("llm-bench", input=calls)
        run.wait(timeout=600)
        wall = time.perf_counter() - t0
        usage = eng.llm_usage(run.id)
        out = run.output if run.status == "completed" else []
    ideal = calls / concurrency * latency
    waves = calls / concurrency
    return {
        "concurrency": concurrency,
        "calls": calls,
        "latency_ms": latency_ms,
        "status": run.status,
        "outputs": len(out),
        "recorded_calls": int(usage["calls"].sum()) if len(usage) else 0,
        "ideal_s": round(ideal, 3),
        "floor_s": round(floor_s, 3),
        "engine_s": round(wall, 3),
        "engine_to_ideal": round(wall / ideal, 3),
        "engine_to_floor": round(wall / floor_s, 3),
        "calls_per_s": round(calls / wall, 1),
        # extra time each call holds its slot, beyond the floor's: (wall - floor) / waves
        "overhead_per_call_ms": round((wall - floor_s) / waves * 1000, 2),
        # engine wall time per call beyond the floor's, as if the calls ran one at a time
        "overhead_wall_per_call_ms": round((wall - floor_s) / calls * 1000, 3),
        "simulated_latency_p50_ms": float(usage["latency_p50_ms"].iloc[0]) if len(usage) else 0,
    }


def run_all(mode: str, root: Path, calls: int, latency_ms: float) -> dict[str, Any]:
    started = datetime.now(UTC)
    t0 = time.perf_counter()
    load = [round(x, 2) for x in os.getloadavg()]
    cases = []
    for c in CONCURRENCIES:
        log(f"{calls} simulated calls of {latency_ms:g} ms, concurrency {c}")
        case = engine_case(root, calls, latency_ms, c)
        log(f"  engine {case['engine_s']} s, floor {case['floor_s']} s, ideal {case['ideal_s']} s")
        cases.append(case)
    targets = {
        f"concurrency_{c['concurrency']}_wall_s": {
            "target": round(TARGET_RATIOS[c["concurrency"]] * c["ideal_s"], 3),
            "measured": c["engine_s"],
            "met": c["engine_s"] <= TARGET_RATIOS[c["concurrency"]] * c["ideal_s"],
        }
        for c in cases
    }
    return {
        "benchmark": "dagnats-nb llm",
        "mode": mode,
        "sizes": {"calls": calls, "latency_ms": latency_ms, "concurrencies": list(CONCURRENCIES)},
        "cases": cases,
        "targets": targets,
        "machine": {
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "dagnats_nb": importlib.metadata.version("dagnats-nb"),
            "httpx": importlib.metadata.version("httpx"),
            "nats_py": importlib.metadata.version("nats-py"),
            "loadavg_at_start": load,
            "loadavg_at_end": [round(x, 2) for x in os.getloadavg()],
        },
        "started_at": started.isoformat(timespec="seconds").replace("+00:00", "Z"),
        "duration_s": round(time.perf_counter() - t0, 1),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="200 calls instead of 1,000")
    ap.add_argument("--calls", type=int, help="number of calls (default 1000, quick 200)")
    ap.add_argument("--latency-ms", type=float, default=200.0, help="fixed simulated latency")
    args = ap.parse_args(argv)
    mode = "quick" if args.quick else "full"
    calls = args.calls or (200 if args.quick else 1000)
    if calls < 1 or args.latency_ms <= 0:
        ap.error("--calls and --latency-ms must be positive")
    with tempfile.TemporaryDirectory(prefix="dagnats-llm-bench-") as tmp:
        result = run_all(mode, Path(tmp), calls, args.latency_ms)
    json.dump(result, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

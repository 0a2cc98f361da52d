#!/usr/bin/env python
"""Iterating on an LLM pipeline: what running it again after a prompt edit costs, with and
without a fork or the step cache, next to the time of the calls alone.

    python benchmarks/iterate.py [--quick] [--docs N] [--repeat R] [--latency-ms MS]
                                 [--concurrency C]

The pipeline is the demo's ``doc-digest`` (``dagnats_nb/adapters/cli/demo.py``): docs ->
summarise (llm, map) -> collect -> classify (llm, map, JSON) -> aggregate -> digest (llm,
streamed), its handlers from ``demo.register_handlers``, on embedded engines in a temp dir
and the offline simulator set to fixed ``--latency-ms`` calls (200; sigma 0, no 429/500/
timeouts, ``llm_sim_tokens_per_s`` 0 so streaming adds no time, seed 7) with at most
``--concurrency`` calls in flight (``llm_concurrency`` 8: the ``llm`` worker's MaxAckPending,
a realistic per-key limit; the map steps set no concurrency of their own). One change to the
demo's definition on the engine with the cache: ``summarise`` (``temperature: 0.2``) says
``metadata: {cache: "true"}``, since an llm step with a temperature above 0 is cached only
when it asks.

The edit is the last step's prompt (``digest``); each repetition edits it anew. Measured in
one process, one after the other:

- ``full_run``: the pipeline, cache off (engine ``llm_cache: false``);
- ``full_rerun``: the edited pipeline again from scratch, cache off: the baseline, what
  running it again costs without a fork or a cache;
- ``fork_rerun``: ``eng.rerun(full_run)`` after the edit (forks from ``digest``), cache off;
- ``cached_run``: a fresh ``start_run`` of the edited pipeline on a second engine with
  ``llm_cache: true`` whose cache a run of the unedited pipeline (``cache_fill_run``) filled.

Each: wall seconds from the call that starts the run to the run's end (median of the
repetitions, and each), LLM calls made (TELEMETRY records that are not cache hits),
calls made by the unchanged llm steps (``summarise``, ``classify``), cache hits, steps reused
/ served from the cache, and the speed-up against ``full_rerun``. ``ideal_s`` is the calls
alone on the critical path (waves of ``concurrency`` calls x latency); ``floor_s`` the same
sleeps with ``asyncio.gather`` behind a semaphore in this process. Prints ONE JSON object on
stdout (progress on stderr). ``targets`` (issue 14): the fork and the cache each make the
re-run >= 10x faster than ``full_rerun`` and the unchanged steps make no call; reported,
never enforced.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import math
import os
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from engine import log, machine_info  # noqa: E402  (benchmarks/engine.py)

import dagnats_nb as dn  # noqa: E402
from dagnats_nb.adapters.cli import demo  # noqa: E402

LLM_STEPS = ("summarise", "classify", "digest")
UNCHANGED_LLM = ("summarise", "classify")
TARGET_SPEEDUP = 10.0
SIZES = {"full": {"docs": 50, "repeat": 3}, "quick": {"docs": 8, "repeat": 1}}


def pipeline(edit: int | None = None, cache: bool = False) -> dict[str, Any]:
    """The demo's doc-digest; ``edit`` k rewrites the digest prompt (the k-th edit);
    ``cache``: ``summarise`` asks for the cache (its temperature 0.2 keeps it out by
    default; a step's ``metadata.cache`` wins over the engine's ``llm_cache``, so the
    pipeline of the engine without a cache must not say it)."""
    wf = copy.deepcopy(demo.WORKFLOW)
    steps = {s["id"]: s for s in wf["steps"]}
    if cache:
        steps["summarise"]["metadata"] = {"cache": "true"}
    if edit is not None:
        steps["digest"]["config"]["prompt"] = (
            f"Edit {edit}: write three short bullet points for the support team, most urgent "
            "first. Label counts: {aggregate.counts}. Most negative: {aggregate.worst}"
        )
    return wf


def warm_workflow() -> dict[str, Any]:
    """A small run first on each engine (other prompts: nothing it stores is reused)."""
    return {
        "name": "warm",
        "steps": [
            {"id": "docs", "task": "load-docs"},
            {
                "id": "probe",
                "task": "llm",
                "type": "map",
                "depends_on": ["docs"],
                "config": {"prompt": "Warm-up: {input.text}", "max_tokens": 8},
            },
        ],
    }


async def floor(waves: list[int], latency: float, concurrency: int) -> float:
    """Plain asyncio: each wave's sleeps, at most ``concurrency`` at once, one wave after
    the other (the pipeline's llm steps on its critical path)."""
    slots = asyncio.Semaphore(concurrency)

    async def one() -> None:
        async with slots:
            await asyncio.sleep(latency)

    t0 = time.perf_counter()
    for calls in waves:
        await asyncio.gather(*(one() for _ in range(calls)))
    return time.perf_counter() - t0


def ideal(waves: list[int], latency: float, concurrency: int) -> float:
    return sum(math.ceil(n / concurrency) for n in waves) * latency


def measure(eng: dn.Engine, start: Any) -> dict[str, Any]:
    """Start a run (``start()`` returns it), wait for its end, and count what it did."""
    t0 = time.perf_counter()
    run = start()
    run.wait(timeout=600)
    wall = time.perf_counter() - t0
    calls = eng.llm_calls(run.id)
    made = calls[calls["status"] != "cached"] if len(calls) else calls
    hits = calls[calls["status"] == "cached"] if len(calls) else calls
    by_step = {s: int((made["step_id"] == s).sum()) if len(made) else 0 for s in LLM_STEPS}
    steps = eng.steps(run.id)
    duration = eng.runs().set_index("run_id").loc[run.id, "duration_s"]
    return {
        "run_id": run.id,
        "status": run.status,
        "wall_s": round(wall, 3),
        "run_duration_s": round(float(duration), 3),
        "llm_calls": len(made),
        "llm_calls_by_step": by_step,
        "llm_calls_unchanged_steps": sum(by_step[s] for s in UNCHANGED_LLM),
        "llm_errors": int((made["status"] != "ok").sum()) if len(made) else 0,
        "cache_hits": len(hits),
        "steps_reused": [str(s) for s in steps.loc[steps["reused"], "step_id"]],
        "steps_cached": [str(s) for s in steps.loc[steps["cached"], "step_id"]],
    }


def summary(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """The repetitions of one case: the median wall time, each one, and the first's counts
    (the counts of every repetition must agree, or the case says so)."""
    first = dict(samples[0])
    walls = [s["wall_s"] for s in samples]
    first["wall_s"] = round(statistics.median(walls), 3)
    first["wall_s_each"] = walls
    first["run_duration_s"] = round(statistics.median(s["run_duration_s"] for s in samples), 3)
    keys = ("llm_calls", "llm_calls_unchanged_steps", "cache_hits", "status")
    first["counts_agree"] = all(s[k] == first[k] for s in samples for k in keys)
    first["run_ids"] = [s["run_id"] for s in samples]
    del first["run_id"]
    return first


def start_engine(root: Path, name: str, cache: bool, args: argparse.Namespace) -> dn.Engine:
    eng = dn.Engine.start(
        data_dir=root / name,
        llm_provider="simulated",
        llm_sim_latency_ms=args.latency_ms,
        llm_sim_latency_sigma=0,
        llm_sim_tokens_per_s=0,
        llm_sim_429_rate=0,
        llm_sim_500_rate=0,
        llm_sim_timeout_rate=0,
        llm_sim_seed=7,
        llm_concurrency=args.concurrency,
        llm_cache="true" if cache else "false",
        max_store_bytes="1GiB",
    )
    demo.register_handlers(eng)
    eng.register(warm_workflow())
    warm = eng.run("warm", input={"docs": args.concurrency}, timeout=120)
    assert warm.status == "completed", warm.error
    return eng


def run_all(mode: str, root: Path, args: argparse.Namespace) -> dict[str, Any]:
    started = datetime.now(UTC)
    t0 = time.perf_counter()
    load = [round(x, 2) for x in os.getloadavg()]
    docs, repeat, latency = args.docs, args.repeat, args.latency_ms / 1000
    inp = {"docs": docs}

    log(f"engine with llm_cache false: full run, then {repeat} x (edit, full re-run, rerun)")
    eng = start_engine(root, "no-cache", False, args)
    try:
        eng.register(pipeline())
        full = measure(eng, lambda: eng.start_run("doc-digest", input=inp))
        log(f"  full run {full['wall_s']} s, {full['llm_calls']} calls")
        baseline, forks = [], []
        for k in range(repeat):
            eng.register(pipeline(edit=k))
            baseline.append(measure(eng, lambda: eng.start_run("doc-digest", input=inp)))
            forks.append(measure(eng, lambda: eng.rerun(full["run_id"])))
            log(
                f"  edit {k}: full re-run {baseline[-1]['wall_s']} s "
                f"({baseline[-1]['llm_calls']} calls), rerun {forks[-1]['wall_s']} s "
                f"({forks[-1]['llm_calls']} calls)"
            )
        server_version = eng.server.version if eng.server is not None else None
    finally:
        eng.stop()

    log(f"engine with llm_cache true: a run fills the cache, then {repeat} x (edit, new run)")
    eng = start_engine(root, "cache", True, args)
    try:
        eng.register(pipeline(cache=True))
        fill = measure(eng, lambda: eng.start_run("doc-digest", input=inp))
        log(f"  cache fill run {fill['wall_s']} s, {fill['llm_calls']} calls")
        cached = []
        for k in range(repeat):
            eng.register(pipeline(edit=k, cache=True))
            cached.append(measure(eng, lambda: eng.start_run("doc-digest", input=inp)))
            log(
                f"  edit {k}: new run {cached[-1]['wall_s']} s ({cached[-1]['llm_calls']} "
                f"calls, {cached[-1]['cache_hits']} cache hits)"
            )
        stats = eng.cache_stats()
    finally:
        eng.stop()

    conc = args.concurrency
    full_waves, last_waves = [docs, docs, 1], [1]
    floors = {
        "full": asyncio.run(floor(full_waves, latency, conc)),
        "last_step": asyncio.run(floor(last_waves, latency, conc)),
    }
    cases = {
        "full_run": summary([full]),
        "full_rerun": summary(baseline),
        "fork_rerun": summary(forks),
        "cache_fill_run": summary([fill]),
        "cached_run": summary(cached),
    }
    base = cases["full_rerun"]["wall_s"]
    for name, case in cases.items():
        waves = last_waves if name in ("fork_rerun", "cached_run") else full_waves
        case["ideal_s"] = round(ideal(waves, latency, conc), 3)
        case["floor_s"] = round(floors["last_step" if waves is last_waves else "full"], 3)
        case["wall_to_ideal"] = round(case["wall_s"] / case["ideal_s"], 2)
        case["overhead_s"] = round(case["wall_s"] - case["floor_s"], 3)
        case["speedup_vs_full_rerun"] = round(base / case["wall_s"], 2)
    fork, cache = cases["fork_rerun"], cases["cached_run"]
    targets = {
        "fork_speedup_10x": fork["speedup_vs_full_rerun"] >= TARGET_SPEEDUP,
        "cache_speedup_10x": cache["speedup_vs_full_rerun"] >= TARGET_SPEEDUP,
        "zero_calls_unchanged": fork["llm_calls_unchanged_steps"] == 0
        and cache["llm_calls_unchanged_steps"] == 0,
    }
    machine = machine_info(server_version)
    machine["loadavg_at_start"] = load
    return {
        "benchmark": "dagnats-nb iterate",
        "mode": mode,
        "sizes": {
            "docs": docs,
            "repeat": repeat,
            "llm_calls_full_pipeline": 2 * docs + 1,
            "latency_ms": args.latency_ms,
            "llm_concurrency": conc,
        },
        "simulator": {
            "llm_sim_latency_ms": args.latency_ms,
            "llm_sim_latency_sigma": 0,
            "llm_sim_tokens_per_s": 0,
            "llm_sim_429_rate": 0,
            "llm_sim_500_rate": 0,
            "llm_sim_timeout_rate": 0,
            "llm_sim_seed": 7,
        },
        "cases": cases,
        # the most a re-run of the last step can gain at these sizes: calls alone
        "ideal_speedup": round(cases["full_rerun"]["ideal_s"] / fork["ideal_s"], 2),
        "cache_stats": {k: stats[k] for k in ("entries", "hits", "misses", "stored", "saved_s")},
        "targets": targets,
        "target_speedup": TARGET_SPEEDUP,
        "machine": machine,
        "started_at": started.isoformat(timespec="seconds").replace("+00:00", "Z"),
        "duration_s": round(time.perf_counter() - t0, 1),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="8 documents, 1 repetition")
    ap.add_argument("--docs", type=int, help="documents (default 50, as the demo, quick 8)")
    ap.add_argument("--repeat", type=int, help="edits measured (default 3, quick 1)")
    ap.add_argument("--latency-ms", type=float, default=200.0, help="fixed simulated latency")
    ap.add_argument("--concurrency", type=int, default=8, help="llm_concurrency (default 8)")
    args = ap.parse_args(argv)
    mode = "quick" if args.quick else "full"
    args.docs = args.docs or SIZES[mode]["docs"]
    args.repeat = args.repeat or SIZES[mode]["repeat"]
    if min(args.docs, args.repeat, args.concurrency) < 1 or args.latency_ms <= 0:
        ap.error("--docs, --repeat, --concurrency and --latency-ms must be positive")
    with tempfile.TemporaryDirectory(prefix="dagnats-iterate-bench-") as tmp:
        result = run_all(mode, Path(tmp), args)
    json.dump(result, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""Steps/s of a no-op workload with the engine's own worker and with 1, 2 and 4 worker
processes (``dagnats worker``), and the raw NATS ceiling measured in the same run.

    python benchmarks/workers.py [--quick] [--processes 0,1,2,4] [--in-flight N]

Prints ONE JSON object on stdout (progress goes to stderr). Each case runs on a fresh
engine: ``0`` registers the no-op handler in the engine (the in-kernel worker); ``N > 0``
starts N ``dagnats worker benchmarks/noop_worker.py`` processes and registers nothing in the
engine, so every task goes through another process. The workload is benchmarks/engine.py's:
10-step linear runs of one shared task type ``noop`` (async, returns its input), 200 runs in
flight (``--in-flight``), ``rounds`` times (steps/s is the median round). Per case: steps/s,
runs/s, step latency, and CPU busy (CPU seconds / wall seconds) of the engine thread, the
engine process, nats-server and each worker process, so the bound is visible. See
benchmarks/README.md ("Worker processes").
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import select
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import engine as bench  # noqa: E402 - benchmarks/engine.py: raw ceiling, driver, helpers
from noop_worker import CONCURRENCY, TASK  # noqa: E402

import dagnats_nb as dn  # noqa: E402
from dagnats_nb.server.process import EmbeddedServer  # noqa: E402
from dagnats_nb.wire import protocol  # noqa: E402

SIZES: dict[str, dict[str, Any]] = {
    "full": {
        **bench.SIZES["full"],
        "warmup_runs": 50,
        "case_runs": 500,
        "rounds": 3,
        "in_flight": 200,
    },
    "quick": {
        **bench.SIZES["quick"],
        "warmup_runs": 10,
        "case_runs": 150,
        "rounds": 1,
        "in_flight": 200,
    },
}
WORKFLOW = bench.LINEAR  # the workflow bench.drive runs
log = bench.log


def proc_cpu(pid: int) -> float | None:
    """CPU seconds (user + system) of a process so far."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_workers(n: int, url: str) -> list[subprocess.Popen]:
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "dagnats_nb",
                "worker",
                str(HERE / "noop_worker.py"),
                "--nats-url",
                url,
                "--worker-id",
                f"bench-{i}",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(n)
    ]
    for proc in procs:
        ready, _, _ = select.select([proc.stdout], [], [], 60)
        line = proc.stdout.readline() if ready else ""
        if "ready:" not in line:
            stop_workers(procs)
            raise RuntimeError(f"worker did not start: {line!r} {proc.stderr.read()[-2000:]}")
    return procs


def stop_workers(procs: list[subprocess.Popen]) -> list[int]:
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    codes = []
    for proc in procs:
        try:
            proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
        codes.append(proc.returncode)
    return codes


def busy(c0: float | None, c1: float | None, seconds: float) -> float | None:
    return None if c0 is None or c1 is None else round((c1 - c0) / seconds, 3)


def run_case(n: int, root: Path, size: dict[str, Any]) -> dict[str, Any]:
    """One case on a fresh engine: ``n`` worker processes (0: the engine's own worker)."""
    eng = dn.Engine.start(data_dir=root / f"case-{n}", llm_enabled=False)
    procs: list[subprocess.Popen] = []
    try:
        eng.register(bench.linear_workflow(WORKFLOW, [TASK] * bench.STEPS))
        if n == 0:

            async def noop(ctx):
                return ctx.input

            eng.add_handler(TASK, noop, concurrency=CONCURRENCY)
        else:
            procs = start_workers(n, eng.connect_url)
        asyncio.run(bench.drive(eng, size["warmup_runs"], size["in_flight"]))
        seq = eng.orchestrator.last_seq + 1
        c0, w0 = bench.cpu_seconds(eng), [proc_cpu(pr.pid) for pr in procs]
        ids, rounds = [], []
        for _ in range(size["rounds"]):
            got, seconds = asyncio.run(bench.drive(eng, size["case_runs"], size["in_flight"]))
            ids += got
            rounds.append(seconds)
        elapsed = sum(rounds)
        c1, w1 = bench.cpu_seconds(eng), [proc_cpu(pr.pid) for pr in procs]
        events, _ = asyncio.run(bench.history_since(eng.connect_url, seq))
        completed = {e.run_id for e in events if e.type == protocol.WORKFLOW_COMPLETED}
        failed = sum(1 for r in ids if r not in completed)  # ended runs leave memory
        by_worker = Counter(
            e.worker_id
            for e in events
            if e.type == protocol.STEP_COMPLETED and e.run_id in set(ids)
        )
        intervals = bench.step_latencies(events, set(ids))
        step_lat = intervals["step"]
        lat = bench.latency_summary(intervals)
        steps = len(ids) * bench.STEPS
        round_rates = [bench.rate(size["case_runs"] * bench.STEPS, t) for t in rounds]
        worker_cpu = sum(b - a for a, b in zip(w0, w1, strict=True) if None not in (a, b))
        out: dict[str, Any] = {
            "worker_processes": n,
            "in_kernel_worker": n == 0,
            "runs": len(ids),
            "seconds": round(elapsed, 3),
            "steps_per_s": statistics.median(round_rates),
            "steps_per_s_rounds": round_rates,
            "steps_per_s_overall": bench.rate(steps, elapsed),
            "runs_per_s": bench.rate(len(ids), elapsed),
            "failed_runs": failed,
            "step_latency_p50_ms": lat["step_p50_ms"],
            "step_latency_p99_ms": lat["step_p99_ms"],
            "step_latency_max_ms": bench.ms(max(step_lat, default=None)),
            "steps_over_1s": sum(1 for x in step_lat if x > 1.0),
            "steps_by_worker": dict(sorted(by_worker.items())),
            "busy": {
                "engine_thread": busy(c0["engine_thread"], c1["engine_thread"], elapsed),
                "engine_process": busy(c0["python_process"], c1["python_process"], elapsed),
                "nats_server": busy(c0["nats_server"], c1["nats_server"], elapsed),
                "worker_processes": [busy(a, b, elapsed) for a, b in zip(w0, w1, strict=True)],
            },
            "cpu_ms_per_step": {
                **bench.cpu_per_step(c0, c1, steps),
                "worker_processes": round(worker_cpu * 1000 / steps, 3),
            },
        }
        load = [round(x, 2) for x in os.getloadavg()]
        out["loadavg_1m_after"] = load[0]
        log(
            f"{n} worker processes: {out['steps_per_s']:.0f} steps/s, engine thread busy "
            f"{out['busy']['engine_thread']}, workers {out['busy']['worker_processes']}, "
            f"nats-server {out['busy']['nats_server']}, load {load[0]}"
        )
    finally:
        codes = stop_workers(procs)
        eng.stop()
    if any(codes):
        raise RuntimeError(f"worker processes exited with {codes}")
    out["worker_exit_codes"] = codes
    return out


def run_all(mode: str, root: Path, cases: list[int]) -> dict[str, Any]:
    size = SIZES[mode]
    started = datetime.now(UTC)
    load_start = [round(x, 2) for x in os.getloadavg()]
    result: dict[str, Any] = {
        "benchmark": "dagnats-nb worker processes",
        "mode": mode,
        "sizes": {k: size[k] for k in ("warmup_runs", "case_runs", "rounds", "in_flight")},
        "workflow": f"{bench.STEPS}-step linear, one task type '{TASK}' (async no-op, "
        f"concurrency {CONCURRENCY} per worker)",
    }
    log(f"mode {mode}; raw ceiling on a fresh nats-server")
    server = EmbeddedServer(data_dir=root / "raw").start()
    try:
        result["raw"] = asyncio.run(bench.raw_ceiling(server.client_url, size))
        version = server.version
    finally:
        server.stop()
    result["cases"] = [run_case(n, root, size) for n in cases]
    base = next((c["steps_per_s"] for c in result["cases"] if c["worker_processes"] == 0), None)
    result["speedup_vs_in_kernel"] = {
        str(c["worker_processes"]): round(c["steps_per_s"] / base, 2) if base else None
        for c in result["cases"]
    }
    result["ceiling"] = {
        "rule": "raw pipelined publish/s / 5 (a step needs at least ~5 JetStream publishes)",
        "steps_per_s": round(result["raw"]["publish_async_per_s"] / 5, 1),
    }
    result["machine"] = {**bench.machine_info(version), "loadavg_at_start": load_start}
    result["started_at"] = started.isoformat(timespec="seconds").replace("+00:00", "Z")
    result["duration_s"] = round(time.perf_counter() - bench._T0, 1)
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (well under a minute)")
    ap.add_argument("--processes", default="0,1,2,4", help="cases, e.g. 0,1,2,4")
    ap.add_argument("--in-flight", type=int, help="runs kept going at once (default 200)")
    args = ap.parse_args(argv)
    if args.in_flight:
        for size in SIZES.values():
            size["in_flight"] = args.in_flight
    cases = [int(x) for x in args.processes.split(",") if x.strip()]
    mode = "quick" if args.quick else "full"
    with tempfile.TemporaryDirectory(prefix="dagnats-bench-workers-") as tmp:
        result = run_all(mode, Path(tmp), cases)
    json.dump(result, sys.stdout, indent=2)
    sys.stdout.write("\n")
    log("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())

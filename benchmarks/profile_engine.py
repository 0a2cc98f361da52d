#!/usr/bin/env python
"""Where the engine thread spends its time, sampled with py-spy (``pip install py-spy``).

    python benchmarks/profile_engine.py                 # 50 runs in flight, 3000 runs
    python benchmarks/profile_engine.py --replay        # restart replay of ~20k events
    python benchmarks/profile_engine.py --raw out.txt   # keep py-spy's collapsed stacks

Only samples of the ``dagnats-engine`` thread are counted (its stacks go through
``LoopThread._run``). Prints shares by component, then by function (self and inclusive).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import engine as bench  # noqa: E402  (benchmarks/engine.py)

import dagnats_nb as dn  # noqa: E402

COMPONENTS = [  # first match (outermost frame first) names the sample's component
    ("Orchestrator._consume", "orchestrator: apply history events (decode, dag.advance)"),
    ("Orchestrator._dispatch", "orchestrator: dispatch task + publish step.queued"),
    ("Orchestrator._publish_event", "orchestrator: publish decided events"),
    ("Orchestrator._snapshot", "orchestrator: KV snapshot of ended runs"),
    ("TaskWorker._pull_loop", "worker: pull loop (fetch)"),
    ("TaskWorker._run", "worker: run task (decode, handler, step events, ack)"),
    ("TaskWorker._heartbeat", "worker: heartbeat tasks"),
    ("Engine.", "engine API (start_run, wait)"),
    ("Client._read_loop", "nats-py: read loop (parse, route messages)"),
    ("Subscription._wait_for_msgs", "nats-py: subscription callbacks (replies, pushes)"),
    ("Client._flusher", "nats-py: flusher (socket writes)"),
]


def child_load(runs: int, in_flight: int) -> None:
    with tempfile.TemporaryDirectory(prefix="dagnats-prof-") as tmp:
        eng = dn.Engine.start(data_dir=Path(tmp) / "engine")
        try:

            @eng.task(bench.TASK, concurrency=bench.TASK_CONCURRENCY)
            async def noop(ctx):
                return ctx.input

            eng.register(bench.linear_workflow(bench.LINEAR, [bench.TASK] * bench.STEPS))
            asyncio.run(bench.drive(eng, 20, 20))
            _, elapsed = asyncio.run(bench.drive(eng, runs, in_flight))
            bench.log(f"{runs * bench.STEPS / elapsed:.0f} steps/s under the profiler")
        finally:
            eng.stop()


def child_prepare(data_dir: Path, runs: int) -> None:
    eng = dn.Engine.start(data_dir=data_dir)
    try:

        @eng.task(bench.TASK, concurrency=bench.TASK_CONCURRENCY)
        async def noop(ctx):
            return ctx.input

        eng.register(bench.linear_workflow(bench.LINEAR, [bench.TASK] * bench.STEPS))
        asyncio.run(bench.drive(eng, runs, 50))
    finally:
        eng.stop()


def child_restart(data_dir: Path, repeat: int) -> None:
    for _ in range(repeat):
        t = time.perf_counter()
        eng = dn.Engine.start(data_dir=data_dir)
        o = eng.orchestrator
        bench.log(
            f"ready in {time.perf_counter() - t:.2f}s: {o.replayed_events} events "
            f"in {o.replay_seconds:.2f}s"
        )
        eng.stop()


def aggregate(raw: Path, top: int) -> str:
    self_n: collections.Counter = collections.Counter()
    incl: collections.Counter = collections.Counter()
    comp: collections.Counter = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if "LoopThread._run" not in stack:
            continue
        n = int(count)
        total += n
        frames = [re.sub(r":\d+\)$", ")", f) for f in stack.split(";")]
        self_n[frames[-1]] += n
        for f in set(frames):
            incl[f] += n
        joined = ";".join(frames)
        comp[next((name for key, name in COMPONENTS if key in joined), "asyncio loop (other)")] += n
    if not total:
        return "no samples of the engine thread"
    out = [f"engine thread: {total} samples", "", "by component:"]
    out += [f"{100 * c / total:5.1f}%  {name}" for name, c in comp.most_common()]
    out += ["", "self time:"]
    out += [f"{100 * c / total:5.1f}%  {f}" for f, c in self_n.most_common(top)]
    out += ["", "inclusive (dagnats_nb, json, copy, nats):"]
    keep = ("dagnats_nb/", "json/", "copy.py", "nats/")
    rows = [(f, c) for f, c in incl.most_common() if any(k in f for k in keep)]
    out += [f"{100 * c / total:5.1f}%  {f}" for f, c in rows[:top]]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3000, help="runs to profile (default 3000)")
    ap.add_argument("--in-flight", type=int, default=50)
    ap.add_argument("--replay", action="store_true", help="profile restart replay instead")
    ap.add_argument("--rate", type=int, default=250, help="samples per second")
    ap.add_argument("--top", type=int, default=30)
    ap.add_argument("--raw", metavar="FILE", help="keep py-spy's collapsed stacks here")
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        kind, *rest = args.child
        if kind == "load":
            child_load(args.runs, args.in_flight)
        elif kind == "prepare":
            child_prepare(Path(rest[0]), args.runs)
        else:
            child_restart(Path(rest[0]), int(rest[1]))
        return 0

    pyspy = shutil.which("py-spy")
    if pyspy is None:
        sys.exit("py-spy not found: pip install py-spy")
    me = [sys.executable, __file__]
    with tempfile.TemporaryDirectory(prefix="dagnats-prof-") as tmp:
        raw = Path(args.raw) if args.raw else Path(tmp) / "stacks.txt"
        if args.replay:
            data_dir = Path(tmp) / "engine"
            runs = min(args.runs, 600)  # ~19k events
            prepare = [*me, "--runs", str(runs), "--child", "prepare", str(data_dir)]
            subprocess.run(prepare, check=True)
            target = [*me, "--child", "restart", str(data_dir), "3"]
        else:
            target = [*me, "--runs", str(args.runs), "--in-flight", str(args.in_flight)]
            target += ["--child", "load"]
        cmd = [pyspy, "record", "-r", str(args.rate), "--format", "raw", "-o", str(raw), "--"]
        subprocess.run([*cmd, *target], check=True)
        print(aggregate(raw, args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""What 1,000 cron triggers cost between firings, next to the raw NATS ceiling.

    python benchmarks/triggers.py [--triggers 1000] [--idle 10] [--quick]

Prints ONE JSON object on stdout (progress on stderr):

- ``raw``: the raw NATS publish ceiling on a fresh nats-server, measured in this run as
  ``benchmarks/engine.py`` measures it (``raw_ceiling``);
- ``idle``: CPU time (``time.process_time``: every thread of this process, the engine loop
  included) over an idle window of ``--idle`` seconds, with 0 and then N cron triggers
  registered and scheduled (none due in the window), and the embedded nats-server's CPU
  over the same windows; ``extra_cpu_per_s`` is the difference, the triggers' cost;
- ``schedule``: how long registering the N triggers and scheduling them took.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from engine import SIZES, log, raw_ceiling  # noqa: E402  (benchmarks/engine.py)

import dagnats_nb as dn  # noqa: E402
from dagnats_nb.server.process import EmbeddedServer  # noqa: E402


def server_cpu(eng) -> float | None:
    """CPU seconds of the engine's nats-server child (Linux /proc), or None."""
    pid = getattr(eng.server, "pid", None)
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, TypeError):
        return None


def idle_window(eng, seconds: float) -> dict[str, Any]:
    srv0, cpu0, t0 = server_cpu(eng), time.process_time(), time.perf_counter()
    time.sleep(seconds)
    cpu, wall, srv1 = time.process_time() - cpu0, time.perf_counter() - t0, server_cpu(eng)
    out = {"wall_s": round(wall, 3), "cpu_s": round(cpu, 4), "cpu_per_s": round(cpu / wall, 5)}
    if srv0 is not None and srv1 is not None:
        out["server_cpu_per_s"] = round((srv1 - srv0) / wall, 5)
    return out


def not_due(i: int) -> str:
    """A cron expression that is not due in the next minutes: 1 January, some hour."""
    return f"{i % 60} {i % 24} 1 1 *"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--triggers", type=int, default=1000)
    ap.add_argument("--idle", type=float, default=10.0, help="seconds of each idle window")
    ap.add_argument("--quick", action="store_true", help="small raw sizes, 3 s windows")
    args = ap.parse_args()
    idle = 3.0 if args.quick else args.idle
    root = Path(tempfile.mkdtemp(prefix="dagnats-bench-triggers-"))
    result: dict[str, Any] = {"benchmark": "dagnats-nb cron triggers", "triggers": args.triggers}
    try:
        server = EmbeddedServer(data_dir=root / "raw").start()
        try:
            size = SIZES["quick" if args.quick else "full"]
            raw = asyncio.run(raw_ceiling(server.client_url, size))
            result["raw"] = {k: raw[k] for k in ("publish_async_per_s", "publish_sync_per_s")}
        finally:
            server.stop()
        eng = dn.Engine.start(data_dir=root / "engine", llm_enabled=False)
        try:
            eng.register({"name": "warm", "steps": [{"id": "a", "task": "a"}]})
            time.sleep(1.0)  # start-up settles (consumers, worker registry)
            log(f"idle {idle} s with no triggers")
            none = idle_window(eng, idle)
            triggers = [
                {"id": f"t{i:04d}", "enabled": True, "cron": {"expression": not_due(i)}}
                for i in range(args.triggers)
            ]
            t = time.perf_counter()
            eng.register(
                {"name": "scheduled", "steps": [{"id": "a", "task": "a"}], "triggers": triggers}
            )
            registered = time.perf_counter() - t
            scheduler = eng.trigger_scheduler
            while sum(1 for a in list(scheduler.active.values()) if a.timer) < args.triggers:
                time.sleep(0.01)
            scheduled = time.perf_counter() - t
            time.sleep(1.0)
            log(f"idle {idle} s with {args.triggers} cron triggers scheduled")
            many = idle_window(eng, idle)
            result["schedule"] = {
                "register_s": round(registered, 3),
                "all_scheduled_s": round(scheduled, 3),
                "fired_in_window": scheduler.fired,
            }
        finally:
            eng.stop()
        result["idle"] = {
            "window_s": idle,
            "no_triggers": none,
            "with_triggers": many,
            "extra_cpu_per_s": round(many["cpu_per_s"] - none["cpu_per_s"], 5),
        }
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

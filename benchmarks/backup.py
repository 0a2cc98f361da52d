#!/usr/bin/env python
"""Backup and restore speed of a large WORKFLOW_HISTORY, next to the raw NATS ceiling.

    python benchmarks/backup.py [--mb 200] [--keep DIR]

Fills WORKFLOW_HISTORY of a fresh nats-server with ~1 KB step.completed events (pipelined
``js.publish_async``, not by running workflows), then measures in the same run:

- ``raw.publish_async_mb_per_s``: that pipelined fill, the write ceiling;
- ``raw.ordered_read_mb_per_s``: reading the whole stream with an ordered consumer;
- ``backup``: ``dagnats_nb.ops.backup.backup_streams`` of the stream (snapshot to disk);
- ``restore``: ``restore_streams`` of that backup into a second, fresh nats-server.

Every MB/s divides the stream's stored bytes (``state.bytes``, 10^6 bytes a MB) by the
wall time, so the four figures compare directly. Prints ONE JSON object on stdout
(progress on stderr). See benchmarks/README.md for the latest numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import json
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import nats

from dagnats_nb.ops import backup, restore
from dagnats_nb.server.process import EmbeddedServer
from dagnats_nb.wire import protocol
from dagnats_nb.wire.resources import STREAMS

MB = 1_000_000
EVENT_BYTES = 1000
WORDS = ["invoice", "customer", "order", "total", "amount", "currency", "status", "shipped"]
WORDS += ["pending", "region", "warehouse", "sku", "quantity", "discount", "tax", "note"]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def events(n_distinct: int, seed: int = 7) -> list[bytes]:
    """Realistic ~1 KB step.completed events: JSON outputs with varied words and numbers
    (a pool of distinct ones, reused only far apart: beyond S2's window, so the backup's
    compression is not flattered by repeats)."""
    rnd = random.Random(seed)
    out = []
    for i in range(n_distinct):
        items = []
        while len(json.dumps(items)) < EVENT_BYTES - 250:
            items.append(
                {
                    "sku": f"{rnd.choice(WORDS)}-{rnd.randrange(10**6):06d}",
                    "qty": rnd.randrange(1, 50),
                    "price": round(rnd.uniform(1, 500), 2),
                    "note": " ".join(rnd.choice(WORDS) for _ in range(rnd.randrange(2, 6))),
                }
            )
        ev = protocol.Event(
            type=protocol.STEP_COMPLETED,
            run_id=f"01J{i:023d}",
            step_id=rnd.choice(["fetch", "parse", "enrich", "score", "store"]),
            payload={"output": {"items": items, "count": len(items)}},
            worker_id=f"host-{rnd.randrange(100)}-abcdef",
            attempt_number=1,
        )
        out.append(ev.encode())
    return out


def rate(nbytes: int, seconds: float) -> float:
    return round(nbytes / MB / max(seconds, 1e-9), 1)


async def fill(js, target_bytes: int) -> dict[str, Any]:
    bodies = events(min(20_000, target_bytes // EVENT_BYTES + 1))
    spec = next(s for s in STREAMS if s.name == protocol.HISTORY_STREAM)
    await js.add_stream(spec.config())
    sent = n = 0
    t = time.perf_counter()
    while sent < target_bytes:
        body = bodies[n % len(bodies)]
        run = n // 8  # 8 events per run, as a run's history holds several
        await js.publish_async(f"history.01K{run:023d}", body)
        sent += len(body)
        n += 1
    await js.publish_async_completed()
    seconds = time.perf_counter() - t
    state = (await js.stream_info(protocol.HISTORY_STREAM)).state
    if state.messages != n:
        raise RuntimeError(f"published {n} events, the stream holds {state.messages}")
    return {
        "messages": n,
        "payload_bytes": sent,
        "event_bytes_avg": round(sent / n, 1),
        "stream_bytes": state.bytes,
        "publish_seconds": round(seconds, 3),
    }


async def ordered_read(js, expected: int) -> float:
    done = asyncio.Event()
    got = 0

    async def on_msg(msg) -> None:
        nonlocal got
        got += 1
        if got == expected:
            done.set()

    t = time.perf_counter()
    sub = await js.subscribe(
        "history.>",
        stream=protocol.HISTORY_STREAM,
        ordered_consumer=True,
        cb=on_msg,
        pending_msgs_limit=-1,
        pending_bytes_limit=-1,
    )
    await asyncio.wait_for(done.wait(), 600)
    seconds = time.perf_counter() - t
    await sub.unsubscribe()
    return seconds


async def measure(work: Path, mb: float) -> dict[str, Any]:
    out: dict[str, Any] = {"mb_target": mb}
    big = {"max_store_bytes": max(int(mb * MB * 3), 1 << 30)}
    with EmbeddedServer(data_dir=work / "src", **big) as src:
        nc = await nats.connect(src.client_url)
        js = nc.jetstream(timeout=30)
        log(f"filling WORKFLOW_HISTORY with {mb:g} MB of ~{EVENT_BYTES} B events...")
        stream = await fill(js, int(mb * MB))
        nbytes = stream["stream_bytes"]
        out["stream"] = stream
        read_s = await ordered_read(js, stream["messages"])
        out["raw"] = {
            "publish_async_mb_per_s": rate(nbytes, stream["publish_seconds"]),
            "ordered_read_mb_per_s": rate(nbytes, read_s),
            "ordered_read_seconds": round(read_s, 3),
        }
        raw = out["raw"]
        log(f"raw MB/s: write {raw['publish_async_mb_per_s']} read {raw['ordered_read_mb_per_s']}")
        t = time.perf_counter()
        rows = await backup.backup_streams(nc, work / "bk", [protocol.HISTORY_STREAM])
        backup_s = time.perf_counter() - t
        await nc.close()
        version = src.version
    file_bytes = rows[0].file_bytes
    out["backup"] = {
        "seconds": round(backup_s, 3),
        "mb_per_s": rate(nbytes, backup_s),
        "file_bytes": file_bytes,
        "compression": round(nbytes / file_bytes, 2),
    }
    log(f"backup: {out['backup']['mb_per_s']} MB/s, file {file_bytes / MB:.1f} MB")
    with EmbeddedServer(data_dir=work / "dst", **big) as dst:
        nc = await nats.connect(dst.client_url)
        t = time.perf_counter()
        restored = await restore.restore_streams(nc, work / "bk")
        restore_s = time.perf_counter() - t
        state = (await nc.jetstream().stream_info(protocol.HISTORY_STREAM)).state
        await nc.close()
    if (state.messages, state.bytes) != (stream["messages"], nbytes):
        raise RuntimeError(f"restored {state.messages} msgs / {state.bytes} B, not the source's")
    out["restore"] = {
        "seconds": round(restore_s, 3),
        "mb_per_s": rate(nbytes, restore_s),
        "messages": restored[0].messages,
        "bytes": restored[0].bytes,
    }
    log(f"restore: {out['restore']['mb_per_s']} MB/s")
    raw = out["raw"]
    out["ratios"] = {
        "backup_vs_read": round(out["backup"]["mb_per_s"] / raw["ordered_read_mb_per_s"], 3),
        "restore_vs_publish": round(out["restore"]["mb_per_s"] / raw["publish_async_mb_per_s"], 3),
    }
    out["machine"] = {
        "cpu_count": os.cpu_count(),
        "python": sys.version.split()[0],
        "nats_server": version,
        "nats_py": importlib.metadata.version("nats-py"),
        "loadavg_at_end": [round(x, 2) for x in os.getloadavg()],
    }
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mb", type=float, default=200, help="size of the history to fill (MB)")
    ap.add_argument("--keep", metavar="DIR", help="keep the data dirs and backup in DIR")
    args = ap.parse_args(argv)
    if args.mb <= 0:
        ap.error("--mb must be positive")
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="dagnats-bk-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        report = asyncio.run(measure(work, args.mb))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

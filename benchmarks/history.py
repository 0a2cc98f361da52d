#!/usr/bin/env python
"""A year of history: memory, restart and reads with 1,000,000 finished runs (issue 15).

    python benchmarks/history.py [--quick] [--finished N] [--active A] [--keep DIR]

Prints ONE JSON object on stdout (progress goes to stderr):

- ``raw``: the raw NATS ceiling in the same run (``engine.py``'s ``raw_ceiling``);
- ``fixture``: N synthetic finished runs of a 1-step workflow, bulk-published by ``procs``
  processes into a data dir while its nats-server runs alone (each run's real history
  events and ``workflow_runs`` record, captured from real runs, with a new run id spliced
  into the bytes), and what it took (msgs/s);
- ``before``: the first engine start on it (no checkpoint: the whole history replayed);
- ``restart``: after A runs wait at an approval gate, a checkpoint covers them and the
  process is SIGKILLed, a fresh interpreter starts the engine again: time to ready, RSS
  after ready, events replayed, runs restored; then every waiting run is approved;
- ``base``: the same probe on an empty data dir (RSS of an engine holding nothing);
- ``reads``: p50/p99 of reads of random finished runs in the restarted engine, and one
  ``eng.runs()``;
- ``targets``: the issue's, each with target, measured and ``met``.

See benchmarks/README.md, "A year of history".
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import multiprocessing
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import nats  # noqa: E402
from engine import SIZES as RAW_SIZES  # noqa: E402  (benchmarks/engine.py)
from engine import log, machine_info, ms, percentile, rate, raw_ceiling  # noqa: E402

import dagnats_nb as dn  # noqa: E402
from dagnats_nb.runtime.loop import LoopThread  # noqa: E402
from dagnats_nb.server.datadir import pid_alive  # noqa: E402
from dagnats_nb.server.process import EmbeddedServer  # noqa: E402
from dagnats_nb.transport.reading import read_all  # noqa: E402
from dagnats_nb.wire import protocol  # noqa: E402

FINISHED = {"name": "bench-finished", "steps": [{"id": "s0", "task": "work"}]}
GATE = {
    "name": "bench-gate",
    "steps": [
        {"id": "gate", "type": "approval", "config": {"subject": "approvals.x", "timeout": "24h"}}
    ],
}
STEP = "s0"
TEMPLATES = 4  # real runs captured: two fast (no step.started), two of 50 ms (with it)
IN_FLIGHT = 20_000  # publishes awaiting their ack, per process
SIZES = {
    "full": {"finished": 1_000_000, "active": 1_000, "reads": 200},
    "quick": {"finished": 20_000, "active": 100, "reads": 200},
}
RSS_FIXED = 16 * 1024**2  # the design's allowance over the base (LRU, buffers, run list)
READS = ("get_run_status", "get_run_output", "steps", "step_output", "events")
RAW_READS = ("raw_kv_get", "raw_history_read")  # nats-py alone, for comparison


def vm_rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def until(check, timeout: float, what: str, every: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(every)


# -- 1. the fixture ------------------------------------------------------------------------


def capture_templates(data_dir: Path) -> list[dict[str, Any]]:
    """Real finished runs' history messages and records, as bytes (and the gate workflow
    registered for later)."""
    eng = dn.Engine.start(data_dir=data_dir, llm_enabled=False, snapshot_restart=True)
    try:

        async def work(ctx):
            if ctx.input.get("slow"):
                await asyncio.sleep(0.05)  # long enough for a step.started
            return {"ok": ctx.input["n"]}

        eng.add_handler("work", work)
        eng.register(FINISHED)
        eng.register(GATE)
        ids = [
            eng.run(FINISHED["name"], {"n": i, "slow": i % 2 == 1}, timeout=60).id
            for i in range(TEMPLATES)
        ]
        kv = eng._call(eng._js.key_value("workflow_runs"))

        def record(rid: str) -> bytes | None:
            raw = eng._call(kv.get(f"run.{rid}")).value
            body = json.loads(raw)
            return raw if body.get("status") == "completed" and "nb" in body else None

        out = []
        for rid in ids:
            until(lambda rid=rid: record(rid), 10, f"the record of {rid}")
            msgs = eng._call(
                read_all(eng._js, protocol.HISTORY_STREAM, protocol.history_subject(rid))
            )
            events = [(m.subject, dict(m.headers or {}), m.data) for m in msgs]
            out.append({"run_id": rid, "events": events, "record": record(rid)})
    finally:
        eng.stop()
    return out


def run_ids(prefix: str, count: int) -> list[str]:
    """A worker's run ids: 26 characters like a ULID (its time, then 'X', the worker and
    a 14-digit counter; digits are Crockford base32 too)."""
    return [f"{prefix}{i:014d}" for i in range(count)]


def publish_worker(url: str, templates: list[dict], prefix: str, count: int) -> dict:
    return asyncio.run(_publish(url, templates, prefix, count))


async def _publish(url: str, templates: list[dict], prefix: str, count: int) -> dict:
    """Publish ``count`` runs: each template message with the run id spliced in, pipelined
    (what ``js.publish_async`` sends, a reply inbox each, without its Future per message:
    ~2.5x the rate), at most ``IN_FLIGHT`` awaiting their ack."""
    plans = []
    for t in templates:
        old = t["run_id"]
        msgs = [
            (
                subject.split(old),
                {k: v.split(old) for k, v in headers.items()},
                data.split(old.encode()),
            )
            for subject, headers, data in t["events"]
        ]
        msgs.append((["$KV.workflow_runs.run.", ""], {}, t["record"].split(old.encode())))
        plans.append(msgs)
    nc = await nats.connect(url)
    inbox = nc.new_inbox()
    acked = errors = sent = 0
    first_error = None
    room: asyncio.Future | None = None
    all_acked = asyncio.get_running_loop().create_future()

    async def on_ack(msg) -> None:
        nonlocal acked, errors, first_error, room
        acked += 1
        if b'"error"' in msg.data:
            errors += 1
            first_error = first_error or msg.data.decode()
        if room is not None and not room.done() and sent - acked < IN_FLIGHT // 2:
            room.set_result(None)
        if acked == total and not all_acked.done():
            all_acked.set_result(None)

    total = sum(len(templates[i % len(templates)]["events"]) + 1 for i in range(count))
    await nc.subscribe(inbox, cb=on_ack, pending_msgs_limit=-1, pending_bytes_limit=-1)
    t = time.perf_counter()
    for i, rid in enumerate(run_ids(prefix, count)):
        bid = rid.encode()
        for subject, headers, data in plans[i % len(plans)]:
            if sent - acked >= IN_FLIGHT:
                room = asyncio.get_running_loop().create_future()
                await room
            hdrs = {k: rid.join(v) for k, v in headers.items()} or None
            await nc.publish(rid.join(subject), bid.join(data), reply=inbox, headers=hdrs)
            sent += 1
    await asyncio.wait_for(all_acked, 120)
    seconds = time.perf_counter() - t
    await nc.close()
    if errors:
        raise RuntimeError(f"{errors} publishes refused, the first: {first_error}")
    return {"runs": count, "messages": sent, "seconds": seconds}


def build_fixture(fixture: Path, n: int, procs: int) -> dict[str, Any]:
    if fixture.exists():
        shutil.rmtree(fixture)
    t0 = time.perf_counter()
    log(f"fixture: capturing {TEMPLATES} real runs")
    templates = capture_templates(fixture)
    server = EmbeddedServer(data_dir=fixture).start()
    try:
        stamp = templates[0]["run_id"][:10]  # the ULID's time: when the fixture was made
        prefixes = [f"{stamp}X{w}" for w in range(procs)]
        counts = [n // procs + (1 if w < n % procs else 0) for w in range(procs)]
        log(f"fixture: publishing {n:,} finished runs from {procs} processes")
        t = time.perf_counter()
        if procs == 1:
            done = [publish_worker(server.client_url, templates, prefixes[0], counts[0])]
        else:
            with multiprocessing.get_context("spawn").Pool(procs) as pool:
                args = [
                    (server.client_url, templates, prefixes[w], counts[w]) for w in range(procs)
                ]
                done = pool.starmap(publish_worker, args)
        seconds = time.perf_counter() - t
        stats = asyncio.run(_finish_fixture(server.client_url))
        version = server.version
    finally:
        server.stop()
    messages = sum(d["messages"] for d in done)
    meta = {
        "finished": n,
        "templates": [t["run_id"] for t in templates],
        "template_events": [len(t["events"]) for t in templates],
        "template_record_bytes": [len(t["record"]) for t in templates],
        "prefixes": prefixes,
        "counts": counts,
        "procs": procs,
        "in_flight_per_process": IN_FLIGHT,
        "messages": messages,
        "publish_seconds": round(seconds, 2),
        "msgs_per_s": rate(messages, seconds),
        "runs_per_s": rate(n, seconds),
        "build_seconds": round(time.perf_counter() - t0, 2),
        "nats_server": version,
        **stats,
    }
    (fixture / "fixture.json").write_text(json.dumps(meta, indent=2))
    log(
        f"fixture: {messages:,} messages in {seconds:.1f}s ({meta['msgs_per_s']:,.0f}/s), "
        f"history {stats['history_bytes'] / 1e9:.2f} GB, "
        f"records {stats['records_bytes'] / 1e9:.2f} GB"
    )
    return meta


async def _finish_fixture(url: str) -> dict[str, Any]:
    """No checkpoint in the fixture (the first engine start replays it all, as after the
    upgrade); what the stores hold."""
    nc = await nats.connect(url)
    js = nc.jetstream()
    await js.purge_stream(protocol.SNAPSHOT_STREAM)  # the capture engine's stop wrote one
    history = await js.stream_info(protocol.HISTORY_STREAM)
    records = await js.stream_info("KV_workflow_runs")
    await nc.close()
    return {
        "history_events": history.state.messages,
        "history_bytes": history.state.bytes,
        "records": records.state.messages,
        "records_bytes": records.state.bytes,
    }


# -- 2. active runs, then kill -9 ----------------------------------------------------------


def active_phase(data_dir: Path, a: int) -> None:
    """(child) Start the engine on the fixture (a full replay), start ``a`` runs that wait
    at a gate, wait for a checkpoint covering them, say so on stdout, wait for SIGKILL.

    ``Engine.start`` gives its boot (the replay included) 120 s and then fails with a
    TimeoutError: a full replay of 1,000,000 runs takes longer, so that limit is lifted
    here (``LoopThread.call`` of ``_boot_async`` waits without one)."""
    call = LoopThread.call

    def boot_without_limit(self, coro, timeout=None):
        unlimited = getattr(coro, "__qualname__", "").endswith("_boot_async")
        return call(self, coro, None if unlimited else timeout)

    LoopThread.call = boot_without_limit
    gc.collect()
    t = time.perf_counter()
    eng = dn.Engine.start(data_dir=data_dir, llm_enabled=False, snapshot_restart=True)
    ready = time.perf_counter() - t
    o = eng.orchestrator
    gc.collect()
    before = {
        "restart_s": round(ready, 3),
        "events_replayed": o.replayed_events,
        "replay_seconds": round(o.replay_seconds, 3),
        "replay_events_per_s": rate(o.replayed_events, o.replay_seconds),
        "restored_from_checkpoint": o.restored_from,
        "runs_held": len(o.runs),
        "rss_bytes": vm_rss(),
    }
    log(
        f"(active) full replay: ready in {ready:.1f}s, {o.replayed_events:,} events, "
        f"{len(o.runs):,} runs held"
    )

    async def start_all() -> list[str]:
        ids: list[str] = []
        for j in range(0, a, 200):
            runs = await asyncio.gather(
                *(eng.start_run_async(GATE["name"], {"n": i}) for i in range(j, min(a, j + 200)))
            )
            ids += [r.id for r in runs]
        return ids

    t = time.perf_counter()
    ids = asyncio.run(start_all())
    js = eng._js

    def waiting() -> bool:
        held = [o.runs.get(rid) for rid in ids]
        if not all(s is not None and s.step("gate").status == "running" for s in held):
            return False
        tokens = eng._call(js.stream_info(f"KV_{protocol.APPROVAL_BUCKET}")).state.messages
        last = eng._call(js.stream_info(protocol.HISTORY_STREAM)).state.last_seq
        snaps = o.snapshots
        return (
            tokens >= a
            and o.last_seq >= last
            and snaps.checkpoint_seq >= o.last_seq
            and not snaps._dirty
        )

    until(waiting, 120 + a / 50, "the runs at their gate and a checkpoint covering them", 0.2)
    log(
        f"(active) {a} runs wait at the gate, checkpoint at {o.snapshots.checkpoint_seq} "
        f"({time.perf_counter() - t:.1f}s)"
    )
    line = {
        "active": ids,
        "server_pid": eng.server.pid,
        "checkpoint_seq": o.snapshots.checkpoint_seq,
        "before": before,
    }
    print(json.dumps(line), flush=True)
    time.sleep(3600)  # SIGKILLed by the parent


def run_active(data_dir: Path, a: int) -> dict[str, Any]:
    child = subprocess.Popen(
        [sys.executable, __file__, "--active-phase", str(data_dir), str(a)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        line = child.stdout.readline()
        if not line:
            raise RuntimeError(f"active phase exited early with {child.wait()}")
        info = json.loads(line)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    until(lambda: not pid_alive(info["server_pid"]), 10, "nats-server to die with its parent", 0.05)
    log(f"active: SIGKILLed pid {child.pid} (nats-server {info['server_pid']} gone)")
    return info


# -- 3./4. restart probe and reads ---------------------------------------------------------


def probe(data_dir: Path, spec: dict[str, Any]) -> dict[str, Any]:
    """(fresh interpreter) Engine.start to ready, RSS after ready; then the reads of finished
    runs, the approval of the waiting ones and one eng.runs()."""
    server_start = EmbeddedServer.start
    server_s: list[float] = []

    def timed_start(self):  # the part of the restart nats-server takes: its store recovery
        t = time.perf_counter()
        try:
            return server_start(self)
        finally:
            server_s.append(time.perf_counter() - t)

    EmbeddedServer.start = timed_start
    gc.collect()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t = time.perf_counter()
        eng = dn.Engine.start(data_dir=data_dir, llm_enabled=False, snapshot_restart=True)
        ready = time.perf_counter() - t
    gc.collect()
    rss = vm_rss()
    o = eng.orchestrator
    last = eng._call(eng._js.stream_info(protocol.HISTORY_STREAM)).state.last_seq
    out: dict[str, Any] = {
        "restart_s": round(ready, 3),
        "server_start_s": round(server_s[0], 3),
        "rss_bytes": rss,
        "events_replayed": o.replayed_events,
        "replay_seconds": round(o.replay_seconds, 3),
        "suffix_events": last - o.restored_from if o.restored_from else last,
        "restored_from_checkpoint": o.restored_from,
        "runs_restored": o.counters["runs_restored"],
        "runs_rebuilt": o.counters["runs_rebuilt"],
        "runs_held": len(o.runs),
        "stale_engine_json_cleaned": any("stale engine.json" in str(w.message) for w in caught),
    }
    try:
        active = spec.get("active", [])
        if active:
            held = [o.runs.get(rid) for rid in active]
            out["active_waiting"] = sum(
                1 for s in held if s is not None and s.step("gate").status == "running"
            )
        if spec.get("reads"):
            out["reads"] = reads(eng, spec["reads"])
        if active:
            out["approve"] = approve_all(eng, active)
        if spec.get("list_runs"):
            t = time.perf_counter()
            frame = eng.runs()
            out["runs_list"] = {"seconds": round(time.perf_counter() - t, 3), "rows": len(frame)}
            log(f"(probe) eng.runs(): {len(frame):,} rows in {out['runs_list']['seconds']:.1f}s")
    finally:
        eng.stop()
    return out


def reads(eng: dn.Engine, ids: dict[str, list[str]]) -> dict[str, Any]:
    """Each read on its own random finished runs (none read before: cold, no LRU hit),
    and the raw nats-py reads beneath them (a KV get of the record; the history subject
    through an ordered consumer), on the engine's connection and loop as well."""
    kv = eng._call(eng._js.key_value("workflow_runs"))
    calls = {
        "raw_kv_get": lambda rid: eng._call(kv.get(f"run.{rid}")).value is not None,
        "raw_history_read": lambda rid: eng._call(_raw_history(eng._js, rid)) in (4, 5),
        "get_run_status": lambda rid: eng.get_run(rid).status == "completed",
        "get_run_output": lambda rid: isinstance(eng.get_run(rid).output, dict),
        "steps": lambda rid: list(eng.steps(rid)["status"]) == ["completed"],
        "step_output": lambda rid: isinstance(eng.step_output(rid, STEP), dict),
        "events": lambda rid: len(eng.events(rid)) in (4, 5),
    }
    out: dict[str, Any] = {}
    kinds = READS + RAW_READS
    times: dict[str, list[float]] = {name: [] for name in kinds}
    wrong = dict.fromkeys(kinds, 0)
    for i in range(len(ids[READS[0]])):  # in turns: each kind sees the server as the others
        for name in kinds:
            t = time.perf_counter()
            ok = calls[name](ids[name][i])
            times[name].append(time.perf_counter() - t)
            wrong[name] += not ok
    for name in kinds:
        out[name] = {
            "n": len(times[name]),
            "p50_ms": ms(percentile(times[name], 50)),
            "p99_ms": ms(percentile(times[name], 99)),
            "wrong_answers": wrong[name],
        }
        log(f"(probe) {name}: p50 {out[name]['p50_ms']} ms, p99 {out[name]['p99_ms']} ms")
    return out


async def _raw_history(js, run_id: str) -> int:
    sub = await js.subscribe(
        protocol.history_subject(run_id), stream=protocol.HISTORY_STREAM, ordered_consumer=True
    )
    n = 0
    try:
        while True:
            n += 1
            if (await sub.next_msg(timeout=5)).metadata.num_pending == 0:
                return n
    finally:
        await sub.unsubscribe()


def approve_all(eng: dn.Engine, ids: list[str]) -> dict[str, Any]:
    async def go() -> None:
        for j in range(0, len(ids), 200):
            await asyncio.gather(*(eng.approve_async(rid, "gate") for rid in ids[j : j + 200]))
        runs = await asyncio.gather(*(eng.get_run_async(rid) for rid in ids))
        await asyncio.gather(*(r.wait_async(timeout=120) for r in runs))

    t = time.perf_counter()
    asyncio.run(go())
    seconds = time.perf_counter() - t
    statuses = [eng.run_state(rid)["status"] for rid in ids]
    completed = sum(1 for s in statuses if s == "completed")
    log(f"(probe) {len(ids)} approved, {completed} completed in {seconds:.1f}s")
    return {"approved": len(ids), "completed": completed, "seconds": round(seconds, 3)}


def run_probe(data_dir: Path, spec: dict[str, Any], timeout: float) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(spec, f)
    try:
        proc = subprocess.run(
            [sys.executable, __file__, "--probe", str(data_dir), f.name],
            stdout=subprocess.PIPE,
            text=True,
            timeout=timeout,
        )
    finally:
        os.unlink(f.name)
    if proc.returncode != 0:
        raise RuntimeError(f"probe failed with exit code {proc.returncode}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# -- targets and main ----------------------------------------------------------------------


def targets(r: dict[str, Any]) -> dict[str, Any]:
    a, rs, base = r["sizes"]["active"], r["restart"], r["base"]["rss_bytes"]
    limit = base + RSS_FIXED + 2048 * a
    out: dict[str, Any] = {
        "rss_after_restart_bytes": {
            "rule": "kernel RSS after ready <= base + 16 MiB + 2 KiB x active runs",
            "target": limit,
            "measured": rs["rss_bytes"],
            "base": base,
            "met": rs["rss_bytes"] <= limit,
        },
        "restart_ready_s": {
            "rule": "Engine.start on the fixture ready in <= 2 s (snapshot restart)",
            "target": 2.0,
            "measured": rs["restart_s"],
            "met": rs["restart_s"] <= 2.0,
        },
        "events_replayed": {
            "rule": "events replayed at restart <= the history after the checkpoint",
            "target": rs["suffix_events"],
            "measured": rs["events_replayed"],
            "met": rs["events_replayed"] <= rs["suffix_events"],
        },
        "active_runs_resume": {
            "rule": "every active run in memory and waiting after the restart, and each "
            "completes once approved",
            "target": a,
            "measured": min(rs.get("active_waiting", 0), rs["approve"]["completed"]),
            "met": rs.get("active_waiting") == a == rs["approve"]["completed"],
        },
    }
    for name in READS:
        got = rs["reads"][name]
        out[f"read_{name}_p50_ms"] = {
            "rule": f"p50 of {name} on a finished run <= 10 ms",
            "target": 10.0,
            "measured": got["p50_ms"],
            "met": got["p50_ms"] <= 10.0 and not got["wrong_answers"],
        }
    out["all_met"] = all(v["met"] for v in out.values() if isinstance(v, dict))
    return out


def run_all(
    mode: str, root: Path, size: dict[str, int], procs: int, keep: bool, list_runs: bool
) -> dict[str, Any]:
    started = datetime.now(UTC)
    load_start = [round(x, 2) for x in os.getloadavg()]
    result: dict[str, Any] = {"benchmark": "dagnats-nb history", "mode": mode, "sizes": size}
    n, a = size["finished"], size["active"]

    log(f"mode {mode}; raw ceiling on a fresh nats-server")
    server = EmbeddedServer(data_dir=root / "raw").start()
    try:
        result["raw"] = asyncio.run(raw_ceiling(server.client_url, RAW_SIZES[mode]))
        server_version = server.version
    finally:
        server.stop()
    shutil.rmtree(root / "raw", ignore_errors=True)

    fixture = root / f"fixture-{n}"
    meta_path = fixture / "fixture.json"
    if meta_path.exists():
        meta = {**json.loads(meta_path.read_text()), "reused": True}
        log(f"fixture: reusing {fixture} ({meta['finished']:,} finished runs)")
    else:
        meta = {**build_fixture(fixture, n, procs), "reused": False}
    result["fixture"] = meta
    work = fixture
    if keep:  # the fixture stays as built: each run works on a copy
        work = root / "work"
        shutil.rmtree(work, ignore_errors=True)
        t = time.perf_counter()
        shutil.copytree(fixture, work)
        log(f"fixture: copied to {work} in {time.perf_counter() - t:.1f}s")

    info = run_active(work, a)
    result["before"] = info["before"]

    pool = [
        rid for p, c in zip(meta["prefixes"], meta["counts"], strict=True) for rid in run_ids(p, c)
    ]
    kinds = READS + RAW_READS
    picked = random.Random(15).sample(pool, min(len(pool), size["reads"] * len(kinds)))
    k = size["reads"]
    spec = {
        "active": info["active"],
        "reads": {name: picked[i * k : (i + 1) * k] for i, name in enumerate(kinds)},
        "list_runs": list_runs,
    }
    log(f"restart: probe in a fresh interpreter ({a} waiting among {n:,} finished)")
    result["restart"] = run_probe(work, spec, timeout=3600)
    result["restart"]["checkpoint_seq_at_kill"] = info["checkpoint_seq"]
    rs = result["restart"]
    log(
        f"restart: ready in {rs['restart_s']:.2f}s, RSS {rs['rss_bytes'] / 2**20:.1f} MiB, "
        f"{rs['events_replayed']} events replayed, {rs['runs_restored']} runs restored"
    )

    log("base: the same probe twice on an empty data dir (the second counts)")
    empty = root / "empty"
    shutil.rmtree(empty, ignore_errors=True)
    run_probe(empty, {}, timeout=300)
    result["base"] = run_probe(empty, {}, timeout=300)
    shutil.rmtree(empty, ignore_errors=True)
    base = result["base"]["rss_bytes"]
    result["rss_over_base_bytes"] = rs["rss_bytes"] - base
    result["rss_over_base_per_active_run"] = round((rs["rss_bytes"] - base) / max(a, 1), 1)
    log(
        f"base: RSS {base / 2**20:.1f} MiB; the restart's is "
        f"{(rs['rss_bytes'] - base) / 2**20:+.1f} MiB over it"
    )

    result["targets"] = targets(result)
    result["machine"] = {**machine_info(server_version), "loadavg_at_start": load_start}
    result["started_at"] = started.isoformat(timespec="seconds").replace("+00:00", "Z")
    result["duration_s"] = round(time.perf_counter() - _T0, 1)
    return result


_T0 = time.perf_counter()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="20,000 finished + 100 active runs")
    ap.add_argument("--finished", type=int, metavar="N", help="finished runs in the fixture")
    ap.add_argument("--active", type=int, metavar="A", help="runs waiting at the restart")
    ap.add_argument("--reads", type=int, metavar="R", help="finished runs read per read kind")
    ap.add_argument("--procs", type=int, default=1, help="processes publishing the fixture")
    ap.add_argument("--keep", metavar="DIR", help="keep (and reuse) the fixture in DIR")
    ap.add_argument("--no-runs-list", action="store_true", help="do not time eng.runs()")
    ap.add_argument("--active-phase", nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--probe", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.active_phase:
        active_phase(Path(args.active_phase[0]), int(args.active_phase[1]))
        return 0
    if args.probe:
        spec = json.loads(Path(args.probe[1]).read_text())
        print(json.dumps(probe(Path(args.probe[0]), spec)), flush=True)
        return 0
    mode = "quick" if args.quick else "full"
    size = dict(SIZES[mode])
    for key in ("finished", "active", "reads"):
        if getattr(args, key) is not None:
            size[key] = getattr(args, key)
    list_runs = not args.no_runs_list
    if args.keep:
        root = Path(args.keep).resolve()
        root.mkdir(parents=True, exist_ok=True)
        result = run_all(mode, root, size, args.procs, True, list_runs)
    else:
        with tempfile.TemporaryDirectory(prefix="dagnats-history-") as tmp:
            result = run_all(mode, Path(tmp), size, args.procs, False, list_runs)
    json.dump(result, sys.stdout, indent=2)
    sys.stdout.write("\n")
    log("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())

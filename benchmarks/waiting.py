#!/usr/bin/env python
"""Many runs waiting without a worker (sleep, approval): kernel memory per run and wake
lateness, next to the raw NATS ceiling.

    python benchmarks/waiting.py [--runs 10000] [--quick] [--keep DIR]

Prints ONE JSON object on stdout (progress on stderr):

- ``raw``: the raw NATS ceiling on a fresh nats-server, measured in this run as
  ``benchmarks/engine.py`` measures it (``raw_ceiling``);
- ``sleep``: N runs of a one-step workflow whose ``sleep`` step waits until one instant T
  (``until_input_path``: every run's input names the same T, so N timers fire together, the
  worst case for lateness): Python heap growth per waiting run (tracemalloc, after gc), where
  it goes (by source line) and what the orchestrator holds per run (a deep walk of its
  objects); then the lateness of each wake (``step.sleep.completed`` stored minus T, from
  the message timestamps of WORKFLOW_HISTORY) and the time until all N runs completed;
- ``approval``: N runs waiting in an ``approval`` step: heap growth per run, then the time
  to approve them all (``eng.approve`` one at a time for a sample, ``approve_async``
  gathered for the rest) and until they all completed;
- ``restart``: N more sleeping runs due at T2, the engine stopped and started again on the
  same data dir: time to ready, timers rebuilt, lateness of the wakes after the restart;
- ``rss``: resident memory growth per waiting run, in a fresh interpreter without
  tracemalloc (``--rss-probe``);
- ``targets``: the issue's (bytes per waiting run <= 2 KiB, p99 lateness <= 1 s), with
  ``met``; reported, never enforced.

See benchmarks/README.md for what each figure means and the latest numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import tracemalloc
import types
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import nats  # noqa: E402
from engine import (  # noqa: E402  (benchmarks/engine.py)
    SIZES,
    _short,
    active,
    log,
    machine_info,
    percentile,
    rate,
    raw_ceiling,
    rss_bytes,
    settle,
)
from nats.js import api as js_api  # noqa: E402

import dagnats_nb as dn  # noqa: E402
from dagnats_nb.dag import events  # noqa: E402
from dagnats_nb.facade.runs import new_run_id  # noqa: E402
from dagnats_nb.server.process import EmbeddedServer  # noqa: E402
from dagnats_nb.wire import protocol  # noqa: E402

SLEEPER = "bench-sleep"
GATED = "bench-approval"
SLEEP_STEP = "nap"
GATE_STEP = "gate"
APPROVAL_SUBJECT = "bench.approvals"
WORKFLOWS = [
    {
        "name": SLEEPER,
        "steps": [{"id": SLEEP_STEP, "type": "sleep", "config": {"until_input_path": "at"}}],
    },
    {
        "name": GATED,
        "steps": [
            {
                "id": GATE_STEP,
                "type": "approval",
                "config": {"subject": APPROVAL_SUBJECT, "timeout": "1h"},
            }
        ],
    },
]
TARGET_BYTES = 2048
TARGET_P99_S = 1.0
BATCH = 200  # start_run_async / approve_async calls gathered at a time
WARMUP = 100
QUICK_RUNS = 500
TRACEMALLOC_SLOWDOWN = 8.0  # starting runs under tracemalloc, against the warm-up rate
RECORD_FLUSH_S = 2.0  # runtime/records.py writes a waiting run's record DELAY (1 s) later


def rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def seconds(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(value, digits)


def spread(values: list[float]) -> dict[str, Any]:
    """p50/p90/p99/max (seconds) of a list of lateness values."""
    return {
        "samples": len(values),
        "p50_s": seconds(percentile(values, 50)),
        "p90_s": seconds(percentile(values, 90)),
        "p99_s": seconds(percentile(values, 99)),
        "max_s": seconds(max(values) if values else None),
        "min_s": seconds(min(values) if values else None),
    }


# -- driving the engine --------------------------------------------------------------------


def run_ids(n: int) -> list[str]:
    """Run ids made before a measured phase, so that the driver's own copies of them are
    not counted as the kernel's memory (the engine makes the same kind of id)."""
    return [new_run_id() for _ in range(n)]


async def start_runs(eng: dn.Engine, workflow: str, inp: Any, ids: list[str]) -> list[str]:
    for j in range(0, len(ids), BATCH):
        await asyncio.gather(
            *(eng.start_run_async(workflow, inp, run_id=r) for r in ids[j : j + BATCH])
        )
    return ids


def completed(eng: dn.Engine) -> int:
    return eng.orchestrator.counters["runs_completed"]


def wait_completed(eng: dn.Engine, target: int, timeout: float) -> float:
    """Block until the orchestrator has counted ``target`` completed runs; the time then."""
    deadline = time.time() + timeout
    while completed(eng) < target:
        if time.time() > deadline:
            raise TimeoutError(f"{completed(eng)}/{target} runs completed after {timeout:.0f}s")
        time.sleep(0.02)
    return time.time()


def records_flushed(eng: dn.Engine, timeout: float = 10.0) -> None:
    """Wait until the run records due (written a second after a change) are written, so
    the memory measured is what a run holds while it waits, not what is in flight."""
    time.sleep(RECORD_FLUSH_S)
    records = eng.orchestrator.records
    deadline = time.time() + timeout
    while len(getattr(records, "_due", ())) and time.time() < deadline:
        time.sleep(0.05)


def settle_runs(eng: dn.Engine, runs: int, events_from: int) -> None:
    asyncio.run(settle(eng, runs, events_from))
    records_flushed(eng)


# -- reading the history -------------------------------------------------------------------


async def read_history(url: str, start_seq: int) -> list[tuple[protocol.Event, float]]:
    """Every WORKFLOW_HISTORY event from ``start_seq`` on, with the time the server stored
    it (the message timestamp, POSIX seconds)."""
    nc = await nats.connect(url)
    js = nc.jetstream()
    out: list[tuple[protocol.Event, float]] = []
    try:
        info = await js.stream_info(protocol.HISTORY_STREAM)
        last = info.state.last_seq
        if last < start_seq:
            return out
        cfg = js_api.ConsumerConfig(
            deliver_policy=js_api.DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=max(1, start_seq),
            ack_policy=js_api.AckPolicy.NONE,
            inactive_threshold=30.0,
        )
        psub = await js.pull_subscribe("history.>", stream=protocol.HISTORY_STREAM, config=cfg)
        seq = 0
        while seq < last:
            for m in await psub.fetch(1000, timeout=10):
                tokens = m.reply.split(".")
                if len(tokens) == 9:  # $JS.ACK.<stream>.<consumer>.<dlv>.<sseq>.<cseq>.<ts>.<n>
                    seq, stored = int(tokens[5]), int(tokens[7]) / 1e9
                else:
                    md = m.metadata
                    seq, stored = md.sequence.stream, md.timestamp.timestamp()
                out.append((protocol.Event.decode(m.data, seq=seq), stored))
        await psub.unsubscribe()
    finally:
        await nc.close()
    return out


def wakes(
    history: list[tuple[protocol.Event, float]], run_ids: set[str], due: float
) -> dict[str, Any]:
    """Lateness of each run's ``step.sleep.completed`` (stored, and its event time: when the
    engine's timer callback ran) and of its ``workflow.completed``, against ``due``."""
    stored: list[float] = []
    fired: list[float] = []
    ended: list[float] = []
    for event, ts in history:
        if event.run_id not in run_ids:
            continue
        if event.type == events.STEP_SLEEP_COMPLETED:
            stored.append(ts - due)
            fired.append(event.time - due)
        elif event.type == events.WORKFLOW_COMPLETED:
            ended.append(ts - due)
    return {
        "runs": len(run_ids),
        "woken": len(stored),
        "lateness_stored": spread(stored),
        "lateness_fired": spread(fired),
        "all_completed_after_due_s": seconds(max(ended) if ended else None),
        "completed": len(ended),
    }


# -- memory --------------------------------------------------------------------------------


class HeapProbe:
    """tracemalloc growth over a phase (all threads), after gc, with the top sites."""

    def __enter__(self) -> HeapProbe:
        gc.collect()
        self.rss0 = rss_bytes()
        tracemalloc.start()
        self.before = tracemalloc.take_snapshot()
        self.traced0 = tracemalloc.get_traced_memory()[0]
        return self

    def measure(self) -> None:
        gc.collect()
        self.traced1 = tracemalloc.get_traced_memory()[0]
        self.after = tracemalloc.take_snapshot()
        self.rss1 = rss_bytes()

    def __exit__(self, *exc: object) -> None:
        tracemalloc.stop()

    def report(self, n: int, top: int = 10) -> dict[str, Any]:
        stats = self.after.compare_to(self.before, "lineno")
        files = self.after.compare_to(self.before, "filename")
        return {
            "tracemalloc_bytes_per_run": round((self.traced1 - self.traced0) / n, 1),
            "rss_bytes_per_run_under_tracemalloc": round((self.rss1 - self.rss0) / n, 1),
            "top_allocation_sites": [
                {
                    "site": f"{_short(s.traceback[0].filename)}:{s.traceback[0].lineno}",
                    "bytes_per_run": round(s.size_diff / n, 1),
                    "blocks_per_run": round(s.count_diff / n, 2),
                }
                for s in stats[:top]
            ],
            "by_file": [
                {
                    "file": _short(s.traceback[0].filename),
                    "bytes_per_run": round(s.size_diff / n, 1),
                }
                for s in files[:6]
            ],
        }


_OPAQUE = (type, types.ModuleType, types.FunctionType, types.BuiltinFunctionType, types.CodeType)


def deep_size(roots: list[Any], seen: set[int]) -> int:
    """Bytes of the objects reachable from ``roots`` not in ``seen`` (which grows): what
    they hold of their own, shared objects counted once."""
    total = 0
    stack = list(roots)
    while stack:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, _OPAQUE):
            continue
        seen.add(id(obj))
        total += sys.getsizeof(obj)
        stack.extend(gc.get_referents(obj))
    return total


def held_structures(eng: dn.Engine, run_ids: list[str]) -> dict[str, Any]:
    """What the orchestrator holds for these runs, by structure (bytes per run): the run
    state, the timer (handle, key, action, bound callback) and the dict slots. Objects
    shared with anything outside the runs (the definitions, the orchestrator, the loop) are
    not counted. The runs are waiting: their states do not change while this reads them."""
    o = eng.orchestrator
    n = len(run_ids)
    # not walked (they reach everything): the engine, its loop, the orchestrator, its dicts
    seen = {id(x) for x in (eng, eng._loop.loop, o, o.runs, o.run_defs, o._timers)}
    defs = {id(d): d for d in list(o.run_defs.values())}
    deep_size(list(defs.values()), seen)  # the definitions are shared: marked, not counted
    mine = set(run_ids)
    states = [o.runs[r] for r in run_ids if r in o.runs]
    timers = [(k, h) for k, h in list(o._timers.items()) if k.run_id in mine]
    state_bytes = deep_size(states, seen)
    timer_bytes = deep_size([x for kh in timers for x in kh], seen)

    def slot(d: dict) -> float:  # a dict's table per entry (it grows in steps)
        return sys.getsizeof(d) / max(1, len(d))

    return {
        "runs": n,
        "timers": len(timers),
        "run_state_bytes_per_run": round(state_bytes / n, 1),
        "timer_bytes_per_run": round(timer_bytes / n, 1),
        "dict_slot_bytes_per_run": round(slot(o.runs) + slot(o.run_defs) + slot(o._timers), 1),
        "note": "deep sys.getsizeof walk; objects shared between runs counted once",
    }


# -- phases --------------------------------------------------------------------------------


def warm_up(eng: dn.Engine) -> float:
    """Lazily built objects out of the measured phases: a few runs of each kind, ended.
    Returns the rate at which the sleeping ones started (runs/s)."""
    base = completed(eng)
    t = time.perf_counter()
    asyncio.run(start_runs(eng, SLEEPER, {"at": rfc3339(time.time() + 1.0)}, run_ids(WARMUP)))
    start_rate = rate(WARMUP, time.perf_counter() - t)
    gated = asyncio.run(start_runs(eng, GATED, None, run_ids(WARMUP)))
    seq = eng.orchestrator.last_seq
    asyncio.run(settle(eng, active(eng), seq))
    asyncio.run(approve_all(eng, gated, 10))
    wait_completed(eng, base + 2 * WARMUP, 60)
    return start_rate


def sleep_phase(eng: dn.Engine, n: int, warm_rate: float) -> dict[str, Any]:
    o = eng.orchestrator
    base_runs, base_done, seq0 = active(eng), completed(eng), o.last_seq
    # T: after every run has started and been measured (starts are slower under tracemalloc)
    lead = TRACEMALLOC_SLOWDOWN * n / max(warm_rate, 1.0) + RECORD_FLUSH_S + 4.0
    due = round(time.time() + lead, 3)
    log(f"sleep: starting {n} runs, all due at T = now + {lead:.1f}s")
    ids, inp = run_ids(n), {"at": rfc3339(due)}
    with HeapProbe() as heap:
        t = time.perf_counter()
        asyncio.run(start_runs(eng, SLEEPER, inp, ids))
        start_s = time.perf_counter() - t
        settle_runs(eng, base_runs + n, seq0 + 2 * n)
        heap.measure()
    mem = heap.report(n)
    held = held_structures(eng, ids)
    timers_set = len(o._timers)
    before_due = due - time.time()
    log(
        f"sleep: {n} started in {start_s:.1f}s (tracemalloc on), "
        f"{mem['tracemalloc_bytes_per_run']:.0f} B/run; T in {before_due:.1f}s"
    )
    done_at = wait_completed(eng, base_done + n, max(120.0, before_due + 60 + n / 100))
    history = asyncio.run(read_history(eng.connect_url, seq0 + 1))
    w = wakes(history, set(ids), due)
    log(
        f"sleep: woke {w['woken']}, lateness p50 {w['lateness_stored']['p50_s']}s "
        f"p99 {w['lateness_stored']['p99_s']}s max {w['lateness_stored']['max_s']}s; "
        f"all completed {w['all_completed_after_due_s']}s after T"
    )
    return {
        "workflow": "one sleep step, until_input_path 'at' = the same instant T for every run",
        "runs": n,
        "start_seconds": round(start_s, 3),
        "start_runs_per_s_under_tracemalloc": rate(n, start_s),
        "due_in_after_measuring_s": round(before_due, 3),
        "all_waiting_before_due": before_due > 0,
        "orchestrator_timers_while_waiting": timers_set,
        "memory": mem,
        "held": held,
        **w,
        "observed_all_completed_after_due_s": round(done_at - due, 3),
    }


async def approve_all(eng: dn.Engine, run_ids: list[str], sequential: int) -> dict[str, Any]:
    """``eng.approve`` one at a time for the first ``sequential`` runs (its latency, from
    a thread: the blocking call), then ``approve_async`` gathered BATCH at a time."""
    t = time.perf_counter()
    lat: list[float] = []
    for rid in run_ids[:sequential]:
        t1 = time.perf_counter()
        await asyncio.to_thread(eng.approve, rid, GATE_STEP, by="bench")
        lat.append(time.perf_counter() - t1)
    seq_s = time.perf_counter() - t
    rest = run_ids[sequential:]
    t2 = time.perf_counter()
    for j in range(0, len(rest), BATCH):
        await asyncio.gather(
            *(eng.approve_async(r, GATE_STEP, by="bench") for r in rest[j : j + BATCH])
        )
    gathered_s = time.perf_counter() - t2
    return {
        "sequential": sequential,
        "sequential_per_s": rate(sequential, seq_s),
        "sequential_p50_ms": None if not lat else round(percentile(lat, 50) * 1000, 3),
        "gathered": len(rest),
        "gathered_per_s": rate(len(rest), gathered_s),
        "approve_all_seconds": round(time.perf_counter() - t, 3),
    }


def approval_phase(eng: dn.Engine, n: int) -> dict[str, Any]:
    o = eng.orchestrator
    base_runs, base_done, seq0 = active(eng), completed(eng), o.last_seq
    log(f"approval: starting {n} runs")
    ids = run_ids(n)
    with HeapProbe() as heap:
        t = time.perf_counter()
        asyncio.run(start_runs(eng, GATED, None, ids))
        start_s = time.perf_counter() - t
        settle_runs(eng, base_runs + n, seq0 + 2 * n)  # workflow.started, approval.requested
        heap.measure()
    mem = heap.report(n)
    held = held_structures(eng, ids)
    log(
        f"approval: {n} waiting, started in {start_s:.1f}s (tracemalloc on), "
        f"{mem['tracemalloc_bytes_per_run']:.0f} B/run; approving"
    )
    t0 = time.time()
    approvals = asyncio.run(approve_all(eng, ids, min(200, n // 5)))
    done_at = wait_completed(eng, base_done + n, 300 + n / 20)
    log(
        f"approval: approved all in {approvals['approve_all_seconds']:.1f}s "
        f"({approvals['gathered_per_s']:.0f}/s gathered), all completed in {done_at - t0:.1f}s"
    )
    return {
        "workflow": "one approval step (timeout 1h)",
        "runs": n,
        "start_seconds": round(start_s, 3),
        "start_runs_per_s_under_tracemalloc": rate(n, start_s),
        "memory": mem,
        "held": held,
        "approve": approvals,
        "all_completed_after_first_approve_s": round(done_at - t0, 3),
    }


def restart_phase(
    eng: dn.Engine, data_dir: Path, n: int, warm_rate: float
) -> tuple[dict[str, Any], dn.Engine]:
    o = eng.orchestrator
    base_runs, seq0 = active(eng), o.last_seq
    history_events = seq0 + 2 * n
    # T2: after the starts, the stop and a replay of the whole history at >= 8,000 events/s
    lead = 1.5 * n / max(warm_rate, 1.0) + RECORD_FLUSH_S + history_events / 8000 + 6.0
    due = round(time.time() + lead, 3)
    log(f"restart: starting {n} sleeping runs due at T2 = now + {lead:.1f}s")
    t = time.perf_counter()
    ids = asyncio.run(start_runs(eng, SLEEPER, {"at": rfc3339(due)}, run_ids(n)))
    start_s = time.perf_counter() - t
    settle_runs(eng, base_runs + n, seq0 + 2 * n)
    timers_before = len(o._timers)
    log(f"restart: {n} started in {start_s:.1f}s; stopping with {o.last_seq} events in history")
    t = time.perf_counter()
    eng.stop()
    stop_s = time.perf_counter() - t
    gc.collect()
    t = time.perf_counter()
    eng = dn.Engine.start(data_dir=data_dir, llm_enabled=False)
    ready_s = time.perf_counter() - t
    o = eng.orchestrator
    timers_after = len(o._timers)
    before_due = due - time.time()
    log(
        f"restart: ready in {ready_s:.2f}s ({o.replayed_events} events replayed), "
        f"{timers_after} timers rebuilt; T2 in {before_due:.1f}s"
    )
    done_at = wait_completed(eng, completed(eng) + n, max(120.0, before_due + 60 + n / 100))
    history = asyncio.run(read_history(eng.connect_url, seq0 + 1))
    w = wakes(history, set(ids), due)
    log(
        f"restart: woke {w['woken']}, lateness p50 {w['lateness_stored']['p50_s']}s "
        f"p99 {w['lateness_stored']['p99_s']}s max {w['lateness_stored']['max_s']}s"
    )
    return {
        "runs": n,
        "start_seconds": round(start_s, 3),
        "start_runs_per_s": rate(n, start_s),
        "timers_before_stop": timers_before,
        "stop_seconds": round(stop_s, 3),
        "time_to_ready_s": round(ready_s, 3),
        "events_replayed": o.replayed_events,
        "replay_seconds": round(o.replay_seconds, 3),
        "runs_held_after_restart": len(o.runs),
        "runs_restored": o.counters["runs_restored"],  # from their snapshots
        "timers_after_restart": timers_after,
        "due_in_after_ready_s": round(before_due, 3),
        "all_waiting_before_due": before_due > 0,
        **w,
        "observed_all_completed_after_due_s": round(done_at - due, 3),
    }, eng


def rss_probe(n: int) -> dict[str, Any]:
    """In a fresh interpreter, no tracemalloc: RSS growth per sleeping and per
    approval-waiting run (due in an hour), after gc."""
    with tempfile.TemporaryDirectory(prefix="dagnats-rss-") as tmp:
        eng = dn.Engine.start(data_dir=Path(tmp) / "engine", llm_enabled=False)
        try:
            for wf in WORKFLOWS:
                eng.register(wf)
            warm_up(eng)
            out: dict[str, Any] = {"runs": n}
            later = {"at": rfc3339(time.time() + 3600)}
            for name, workflow, inp in (("sleep", SLEEPER, later), ("approval", GATED, None)):
                o = eng.orchestrator
                base_runs, seq0 = active(eng), o.last_seq
                ids = run_ids(n)
                gc.collect()
                rss0 = rss_bytes()
                t = time.perf_counter()
                asyncio.run(start_runs(eng, workflow, inp, ids))
                start_s = time.perf_counter() - t
                settle_runs(eng, base_runs + n, seq0 + 2 * n)
                gc.collect()
                out[f"{name}_rss_bytes_per_run"] = round((rss_bytes() - rss0) / n, 1)
                out[f"{name}_start_runs_per_s"] = rate(n, start_s)
                log(f"(rss probe) {name}: {out[f'{name}_rss_bytes_per_run']:.0f} B/run")
        finally:
            eng.stop()
    return out


def run_rss_probe(n: int) -> dict[str, Any]:
    log(f"rss: probe with {n} sleeping + {n} approval-waiting runs in a fresh interpreter")
    probe = subprocess.run(
        [sys.executable, __file__, "--rss-probe", str(n)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    sys.stderr.write(probe.stderr)
    if probe.returncode != 0:
        raise RuntimeError(f"RSS probe failed with exit code {probe.returncode}")
    return json.loads(probe.stdout.strip().splitlines()[-1])


# -- targets and main ----------------------------------------------------------------------


def targets(result: dict[str, Any]) -> dict[str, Any]:
    s, a, r = result["sleep"], result["approval"], result["restart"]
    worst_bytes = max(
        s["memory"]["tracemalloc_bytes_per_run"], a["memory"]["tracemalloc_bytes_per_run"]
    )
    p99 = [x["lateness_stored"]["p99_s"] for x in (s, r)]
    worst_p99 = max(p for p in p99 if p is not None) if any(p is not None for p in p99) else None
    out: dict[str, Any] = {
        "bytes_per_waiting_run": TARGET_BYTES,
        "p99_lateness_s": TARGET_P99_S,
        "measured": {
            "bytes_per_sleeping_run": s["memory"]["tracemalloc_bytes_per_run"],
            "bytes_per_approval_run": a["memory"]["tracemalloc_bytes_per_run"],
            "rss_bytes_per_sleeping_run": result["rss"].get("sleep_rss_bytes_per_run"),
            "rss_bytes_per_approval_run": result["rss"].get("approval_rss_bytes_per_run"),
            "p99_lateness_s": s["lateness_stored"]["p99_s"],
            "p99_lateness_after_restart_s": r["lateness_stored"]["p99_s"],
        },
        "met": {
            "bytes_per_waiting_run": worst_bytes <= TARGET_BYTES,
            "p99_lateness_s": worst_p99 is not None and worst_p99 <= TARGET_P99_S,
        },
        "judged_on": "tracemalloc growth (the larger of sleep and approval); p99 of the "
        "stored wake lateness (the larger of before and after restart)",
    }
    out["all_met"] = all(out["met"].values())
    return out


def run_all(n: int, mode: str, root: Path) -> dict[str, Any]:
    started = datetime.now(UTC)
    load_start = [round(x, 2) for x in os.getloadavg()]
    result: dict[str, Any] = {"benchmark": "dagnats-nb waiting runs", "mode": mode, "runs": n}

    log(f"mode {mode}, {n} runs; raw ceiling on a fresh nats-server")
    server = EmbeddedServer(data_dir=root / "raw").start()
    try:
        raw = asyncio.run(raw_ceiling(server.client_url, SIZES[mode]))
        server_version = server.version
    finally:
        server.stop()
    shutil.rmtree(root / "raw", ignore_errors=True)
    result["raw"] = raw

    data_dir = root / "engine"
    eng = dn.Engine.start(data_dir=data_dir, llm_enabled=False)
    try:
        for wf in WORKFLOWS:
            eng.register(wf)
        warm_rate = warm_up(eng)
        log(f"warm-up done ({warm_rate:.0f} sleeping runs started/s)")
        result["warm_up"] = {"runs_each": WARMUP, "sleep_start_runs_per_s": warm_rate}
        result["sleep"] = sleep_phase(eng, n, warm_rate)
        result["approval"] = approval_phase(eng, n)
        result["restart"], eng = restart_phase(eng, data_dir, n, warm_rate)
    finally:
        eng.stop()
    result["rss"] = run_rss_probe(n)
    result["targets"] = targets(result)
    result["machine"] = {**machine_info(server_version), "loadavg_at_start": load_start}
    result["started_at"] = started.isoformat(timespec="seconds").replace("+00:00", "Z")
    result["duration_s"] = round(time.perf_counter() - _started, 1)
    return result


_started = time.perf_counter()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, help="waiting runs per phase (default 10,000)")
    ap.add_argument(
        "--quick", action="store_true", help=f"{QUICK_RUNS} runs (unless --runs), small raw sizes"
    )
    ap.add_argument("--keep", metavar="DIR", help="keep data in DIR instead of a temp dir")
    ap.add_argument("--rss-probe", type=int, metavar="N", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.rss_probe:
        print(json.dumps(rss_probe(args.rss_probe)))
        return 0
    mode = "quick" if args.quick else "full"
    n = args.runs or (QUICK_RUNS if args.quick else 10_000)
    if args.keep:
        root = Path(args.keep).resolve()
        root.mkdir(parents=True, exist_ok=True)
        result = run_all(n, mode, root)
    else:
        with tempfile.TemporaryDirectory(prefix="dagnats-bench-waiting-") as tmp:
            result = run_all(n, mode, Path(tmp))
    json.dump(result, sys.stdout, indent=2)
    sys.stdout.write("\n")
    log("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The checklist's health rules: each fires when provoked and clears when the cause goes."""

from __future__ import annotations

import asyncio
import threading

import nats
import pytest
from conftest import until

import dagnats_nb as dn
from dagnats_nb.observe import health
from dagnats_nb.wire import protocol


def levels(eng, check: str) -> dict[str, str]:
    df = eng.health()
    return {r.subject: r.level for r in df[df["check"] == check].itertuples()}


def test_rules_on_a_snapshot():
    t = health.Thresholds(
        consumer_pending=10,
        dlq_per_min=2,
        dlq_window_s=60,
        store_share=0.8,
        worker_gap_s=30,
        orchestrator_lag=100,
    )
    snap = health.Snapshot(
        now=1000.0,
        consumers=[
            {"consumer": "workers-a", "pending": 11},
            {"consumer": "workers-b", "pending": 0},
        ],
        store_bytes=85,
        max_store_bytes=100,
        dlq_samples=[(900.0, 0), (950.0, 1), (1000.0, 3)],
        workers=[{"worker_id": "w1", "heartbeat_at": 960.0, "tasks": {"a": {}}}],
        history_last_seq=500,
        orchestrator_seq=300,
        served_tasks={"a"},
    )
    rows = health.evaluate(snap, t)
    by = {(r["check"], r["subject"]): r for r in rows}
    assert by[("consumer pending", "workers-a")]["level"] == "warning"
    assert "add workers for task 'a'" in by[("consumer pending", "workers-a")]["action"]
    assert by[("consumer pending", "workers-b")]["level"] == "ok"
    dlq = by[("dead letters per minute", "DEAD_LETTERS")]
    assert dlq["value"] == pytest.approx(2 / 50 * 60) and dlq["level"] == "warning"  # window 60s
    assert by[("storage share of max_store_bytes", "JetStream file store")]["level"] == "warning"
    assert by[("worker heartbeat gap (s)", "w1")]["level"] == "warning"
    assert by[("orchestrator lag (events)", "WORKFLOW_HISTORY")]["value"] == 200
    assert [r["level"] for r in rows] == sorted(
        (r["level"] for r in rows), key=lambda x: health.LEVEL_ORDER[x]
    )
    calm = health.Snapshot(
        now=1000.0,
        consumers=[],
        store_bytes=10,
        max_store_bytes=100,
        dlq_samples=[(990.0, 3), (1000.0, 3)],
        workers=[],
    )
    assert {r["level"] for r in health.evaluate(calm, t)} == {"ok"}
    full = health.Snapshot(
        now=0, consumers=[], store_bytes=96, max_store_bytes=100, dlq_samples=[], workers=[]
    )
    assert health.storage(full, t)[0]["level"] == "critical"


def test_pending_tasks_warn_then_clear_when_workers_come(tmp_path):
    with dn.Engine.start(data_dir=tmp_path / "e", health_consumer_pending=3) as eng:
        eng.register({"name": "q", "steps": [{"id": "a", "task": "queued-up"}]})
        with pytest.warns(dn.UnservedTaskWarning, match="no worker serves task 'queued-up'"):
            runs = [eng.start_run("q", input=i) for i in range(5)]
        until(
            lambda: levels(eng, "consumer pending").get("workers-queued-up") == "warning",
            timeout=15,
            what="the queued-up consumer to warn",
        )
        row = eng.health().query("subject == 'workers-queued-up'").iloc[0]
        assert row["value"] == 5 and row["threshold"] == 3

        @eng.task("queued-up", concurrency=5)
        async def drain(ctx):
            return ctx.input

        for r in runs:
            r.wait(timeout=20)
        assert levels(eng, "consumer pending")["workers-queued-up"] == "ok"


def test_steady_dead_letters_warn_then_clear(tmp_path):
    with dn.Engine.start(
        data_dir=tmp_path / "e", health_dlq_window="3s", health_dlq_per_min=10
    ) as eng:

        @eng.task("doomed")
        def doomed(ctx):
            raise dn.Permanent("no")

        eng.register({"name": "d", "steps": [{"id": "a", "task": "doomed"}]})
        assert levels(eng, "dead letters per minute")["DEAD_LETTERS"] == "ok"
        for _ in range(3):
            eng.run("d", timeout=20)
        check = "dead letters per minute"
        until(
            lambda: levels(eng, check)["DEAD_LETTERS"] == "warning",
            timeout=15,
            every=0.1,
            what="three dead letters to warn",
        )
        # The 3 s window passes with no new dead letter: the rate falls back to zero.
        until(
            lambda: levels(eng, check)["DEAD_LETTERS"] == "ok",
            timeout=15,
            every=0.1,
            what="the dead-letter warning to clear",
        )


def test_storage_near_the_cap_warns_and_clears_with_a_larger_store(tmp_path):
    data = tmp_path / "e"
    with dn.Engine.start(data_dir=data, max_store_bytes="8MiB", health_store_share=0.5) as eng:

        @eng.task("bulk")
        def bulk(ctx):
            return "x" * 400_000

        eng.register({"name": "b", "steps": [{"id": "a", "task": "bulk"}]})
        check = "storage share of max_store_bytes"
        while levels(eng, check)["JetStream file store"] == "ok":
            eng.run("b", timeout=20)
        assert levels(eng, check)["JetStream file store"] in ("warning", "critical")
    with dn.Engine.start(data_dir=data, max_store_bytes="1GiB", health_store_share=0.5) as eng:
        assert levels(eng, check)["JetStream file store"] == "ok"


def test_worker_that_stops_heartbeating_warns_until_it_beats(tmp_path):
    with dn.Engine.start(data_dir=tmp_path / "e", health_worker_gap="1s") as eng:
        me = eng.worker_id
        assert levels(eng, "worker heartbeat gap (s)")[me] == "ok"
        # The registry beats every 30 s: the 1 s gap is exceeded long before the next beat.
        until(
            lambda: levels(eng, "worker heartbeat gap (s)")[me] == "warning",
            timeout=15,
            what="the heartbeat gap to warn",
        )
        assert any(r["subject"] == me for r in eng.status()["health"])
        eng._call(eng.host.registry.beat())
        assert levels(eng, "worker heartbeat gap (s)")[me] == "ok"


def test_orchestrator_lag_warns_when_it_falls_behind_and_clears(tmp_path):
    with dn.Engine.start(data_dir=tmp_path / "e", health_orchestrator_lag=100) as eng:

        async def burst(n: int) -> None:
            nc = await nats.connect(eng.connect_url)
            js = nc.jetstream()
            data = protocol.Event(
                type=protocol.STEP_COMPLETED, run_id="ghost", step_id="s"
            ).encode()
            for _ in range(n // 500):
                acks = [await js.publish_async("history.ghost", data) for _ in range(500)]
                await asyncio.gather(*acks)
            await nc.close()

        check = "orchestrator lag (events)"
        assert levels(eng, check)["WORKFLOW_HISTORY"] == "ok"
        # Stand-in for a CPU-bound orchestrator: its loop is busy while history grows.
        gate = threading.Event()
        eng._loop.loop.call_soon_threadsafe(gate.wait, 30)
        try:
            asyncio.run(burst(20_000))
        finally:
            gate.set()
        row = eng.health().query("check == @check").iloc[0]
        assert row["level"] == "warning" and row["value"] > 100
        until(
            lambda: levels(eng, check)["WORKFLOW_HISTORY"] == "ok",
            timeout=15,
            what="the orchestrator to catch up",
        )

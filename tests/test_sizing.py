"""The pure sizing model: the checklist's own examples, limits, calibration, tiers."""

from __future__ import annotations

import re

import pytest
from conftest import until

from dagnats_nb.observe import sizing

GiB = sizing.GiB


def test_rule_of_thumb_reproduces_the_checklist_examples():
    cal = sizing.Calibration()
    assert cal.events_per_run(10) == 12  # ~12 events for a 10-step workflow
    # 1 M completed ten-step workflows = ~6 GiB (12 x 500 B x 1e6 = 6.0e9 B = 5.59 GiB)
    est = sizing.estimate(sizing.Workload(runs_per_day=1_000_000, steps=10), days=1)
    assert est.streams["WORKFLOW_HISTORY"] == pytest.approx(6.0e9)
    assert 5.5 < est.streams["WORKFLOW_HISTORY"] / GiB < 6.1
    # ~2 KiB per active run: 10,000 concurrent runs = ~20 MiB of engine state
    big = sizing.estimate(sizing.Workload(runs_per_day=1, concurrent_runs=10_000))
    assert big.memory["engine (active runs)"] == 10_000 * 2048
    assert big.memory["nats-server"] == 256 * sizing.MiB


def test_retention_caps_the_history_and_the_store_fill_day():
    w = sizing.Workload(runs_per_day=100_000, steps=10, max_store_bytes=50 * GiB)
    per_day = 100_000 * 12 * 500
    est = sizing.estimate(w, days=30)
    assert est.history_bytes_per_day == per_day
    assert est.streams["WORKFLOW_HISTORY"] == 30 * per_day
    # unbounded history fills 50 GiB in about 50 GiB / (per_day + records) days: the task
    # queue and the snapshots (10 active runs) hold the same bytes every day
    record = sizing.Calibration().record_bytes(10)
    assert record == 5000  # ~5 KB for a 10-step run: the rule since records carry `nb`
    fixed = est.streams["TASK_QUEUES"] + est.streams["DAGNATS_SNAPSHOTS"]
    expected = (50 * GiB - fixed) / (per_day + 100_000 * record)
    assert est.days_until_cap == pytest.approx(expected, rel=1e-6)

    kept = sizing.estimate(
        sizing.Workload(runs_per_day=100_000, history_max_age_days=7, max_store_bytes=50 * GiB),
        days=30,
    )
    assert kept.streams["WORKFLOW_HISTORY"] == 7 * per_day
    assert kept.days_until_cap is None  # a week of history stays far below 50 GiB

    capped = sizing.estimate(
        sizing.Workload(runs_per_day=100_000, history_max_bytes=2 * GiB), days=30
    )
    assert capped.streams["WORKFLOW_HISTORY"] == 2 * GiB


def test_telemetry_and_dead_letters_keep_their_windows():
    w = sizing.Workload(
        runs_per_day=1_000_000, telemetry_bytes_per_step=300, failure_rate=0.01, payload_bytes=600
    )
    est = sizing.estimate(w, days=60)
    assert est.streams["TELEMETRY"] == GiB  # its cap reached: 10 % of the 10 GiB store
    assert est.streams["DEAD_LETTERS"] == 30 * 1_000_000 * 0.01 * (600 + sizing.DEAD_ENVELOPE)
    assert est.streams["TASK_QUEUES"] == 32 * (600 + sizing.TASK_ENVELOPE)


def test_stream_byte_limits_are_the_engines_shares_of_the_store():
    """TASK_QUEUES 12 %, DEAD_LETTERS 5 %, TELEMETRY 10 % of max_store_bytes (Go's)."""
    w = sizing.Workload(
        runs_per_day=1_000_000,
        telemetry_bytes_per_step=300,
        failure_rate=0.5,
        in_flight_tasks=1_000_000,
        max_store_bytes=2 * GiB,
    )
    est = sizing.estimate(w, days=60)
    assert est.streams["TASK_QUEUES"] == 257_698_037  # what dagnats serve sets at 2 GiB
    assert est.streams["DEAD_LETTERS"] == 107_374_182
    assert est.streams["TELEMETRY"] == 214_748_364


def test_retries_add_events():
    assert sizing.Calibration().events_per_run(10, retry_rate=0.1) == pytest.approx(14.0)


def test_tiers_follow_the_minimums_table():
    dev = sizing.estimate(sizing.Workload(runs_per_day=100, concurrent_runs=2, payload_bytes=256))
    assert dev.tier.name == "development"
    small = sizing.estimate(sizing.Workload(runs_per_day=10_000, concurrent_runs=50))
    assert small.tier.name == "small"
    medium = sizing.estimate(
        sizing.Workload(runs_per_day=100_000, concurrent_runs=5_000, history_max_age_days=14)
    )
    assert medium.tier.name == "medium"
    large = sizing.estimate(sizing.Workload(runs_per_day=1_000, concurrent_runs=20_000))
    assert large.tier.name == "large"
    # disk can push a small workload up a tier: 30 days of 1M runs/day is ~168 GiB
    heavy = sizing.estimate(sizing.Workload(runs_per_day=1_000_000, concurrent_runs=50), days=30)
    assert heavy.tier.name == "large"


def test_measured_calibration_and_the_comparison_table():
    cal = sizing.Calibration.measured(
        bytes_per_event=310, events_per_run=22, steps=10, runs=50, bytes_per_active_run=990
    )
    assert cal.events_per_step == pytest.approx(2.0)
    assert cal.events_per_run(10) == pytest.approx(22)
    assert cal.source == "measured (50 runs)"
    rows = {r["item"]: r for r in sizing.compare(cal, steps=10)}
    assert rows["bytes per event"]["measured_over_rule"] == pytest.approx(310 / 500)
    assert rows["events per run (10 steps)"]["rule_of_thumb"] == 12
    assert rows["bytes per run (10 steps)"]["measured"] == pytest.approx(22 * 310)
    est = sizing.estimate(sizing.Workload(runs_per_day=1000, steps=10), cal, days=1)
    assert est.streams["WORKFLOW_HISTORY"] == pytest.approx(1000 * 22 * 310)


def test_disk_over_time_rises_then_flattens_under_max_age():
    series = sizing.disk_over_time(
        sizing.Workload(runs_per_day=10_000, history_max_age_days=10), days=40, points=41
    )
    days = [d for d, _ in series]
    totals = [b for _, b in series]
    assert days[0] == 0 and days[-1] == 40
    assert totals == sorted(totals)
    assert totals[20] == totals[40]  # flat after the 10-day window
    assert totals[5] < totals[10]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"runs_per_day": -1}, "runs_per_day = -1: must not be negative"),
        ({"runs_per_day": 1, "steps": 0}, "steps = 0: must be positive"),
        ({"runs_per_day": 1, "failure_rate": 2}, "failure_rate = 2: must be between 0 and 1"),
        ({"runs_per_day": 1, "history_max_age_days": 0}, "history_max_age_days = 0"),
    ],
)
def test_bad_parameters_are_clear_errors(kwargs, message):
    with pytest.raises(sizing.SizingError, match=message.replace("(", r"\(")):
        sizing.Workload(**kwargs)


def test_estimate_frame():
    est = sizing.estimate(sizing.Workload(runs_per_day=1000))
    df = est.to_frame()
    assert list(df.columns) == ["kind", "item", "bytes", "GiB"]
    assert set(df["kind"]) == {"disk", "memory"}
    # whole bytes (a table shows 8170825164, not 8.170825e+09), each rounded
    assert str(df["bytes"].dtype) == "int64"
    assert abs(df.query("kind == 'disk'")["bytes"].sum() - est.disk_bytes) <= len(df) / 2


def test_calibrated_engine_predicts_a_fresh_workload_within_ten_percent(engine):
    @engine.task("work")
    async def work(ctx):
        return {"n": ctx.input["n"], "text": "payload " * (ctx.input["n"] % 7)}

    steps = 5
    wf = {
        "name": "five",
        "steps": [
            {"id": f"s{i}", "task": "work", **({"depends_on": [f"s{i - 1}"]} if i else {})}
            for i in range(steps)
        ],
    }
    engine.register(wf)
    before = engine.sizing("five", runs_per_day=1)
    assert before.calibration.source == "rule of thumb"  # nothing ran yet
    for i in range(20):
        engine.run("five", input={"n": i}, timeout=20)
    report = engine.sizing("five", runs_per_day=30, days=1)
    # runs whose workflow.completed is stored: all 20, or 19 if the last is on its way
    assert re.match(r"measured \((19|20) runs", report.calibration.source)
    predicted = report.estimate.streams["WORKFLOW_HISTORY"]  # 30 runs in one day

    def history_bytes():
        return engine.stream_stats().set_index("stream").loc["WORKFLOW_HISTORY", "bytes"]

    start = history_bytes()
    for i in range(20, 50):
        engine.run("five", input={"n": i}, timeout=20)
    grown = history_bytes() - start
    assert abs(predicted - grown) / grown < 0.10, (predicted, grown)
    table = report.comparison_frame().set_index("item")
    assert table.loc["bytes per event", "rule_of_thumb"] == 500
    assert table.loc["events per run (5 steps)", "rule_of_thumb"] == 7
    # 2 run events + queued and completed per step (+ started for a step slower than 20 ms)
    assert 12 <= table.loc["events per run (5 steps)", "measured"] <= 12.5
    assert "tier" in report._repr_html_() and "calibration: measured" in repr(report)


def test_the_engines_history_limits_bound_its_estimate(tmp_path):
    import dagnats_nb as dn

    opts = dict(llm_enabled=False, runs_max_age="48h", history_max_bytes="1MiB")
    with dn.Engine.start(data_dir=tmp_path / "e", **opts) as eng:
        report = eng.sizing(runs_per_day=1_000_000, days=30)
        assert report.estimate.streams["WORKFLOW_HISTORY"] <= 1024 * 1024
        wider = eng.sizing(runs_per_day=1_000_000, days=30, history_max_bytes=10 * GiB)
        assert wider.estimate.streams["WORKFLOW_HISTORY"] > 1024 * 1024


def test_sizing_measures_each_workflow_and_names_the_mix(engine, capsys):
    """Per workflow: its steps, events and bytes per event (read from its runs' history,
    as the file store counts them); without a workflow, the measured mix, never an
    assumed ten steps."""
    nothing = engine.sizing()
    assert nothing.workflows == [] and nothing.estimate.workload.steps == 10
    assert "10-step runs (nothing has run to measure" in repr(nothing)

    @engine.task("small")
    async def small(ctx):
        return 1

    @engine.task("big")
    async def big(ctx):
        return {"text": "x" * 2000}

    engine.register({"name": "tiny", "steps": [{"id": "a", "task": "small"}]})
    engine.register(
        {
            "name": "bulky",
            "steps": [{"id": "a", "task": "big"}, {"id": "b", "task": "big", "depends_on": ["a"]}],
        }
    )
    for i in range(3):
        engine.run("tiny", i, timeout=20)
        engine.run("bulky", i, timeout=20)

    def all_six():
        report = engine.sizing(runs_per_day=1000)
        return report if sum(r["runs"] for r in report.workflows) == 6 else None

    mixed = until(all_six, timeout=10, what="the six runs measured")
    rows = {r["workflow"]: r for r in mixed.workflows}
    assert (rows["tiny"]["steps"], rows["bulky"]["steps"]) == (1, 2)
    assert mixed.estimate.workload.steps == 1.5
    assert "events per run (1.5 steps)" in {r["item"] for r in mixed.comparison}
    assert "the measured mix of 2 workflows (bulky: 3 runs of 2 steps; tiny: 3 runs of 1 step)" in (
        repr(mixed)
    )
    # every run was read: their bytes add up to the history stream's, byte for byte
    history = engine.stream_stats().set_index("stream").loc["WORKFLOW_HISTORY", "bytes"]
    assert sum(r["bytes_per_run"] * r["runs"] for r in rows.values()) == pytest.approx(history)
    assert rows["bulky"]["bytes_per_event"] > 1000 > rows["tiny"]["bytes_per_event"]
    bulky = engine.sizing("bulky", runs_per_day=1000)
    assert bulky.calibration.bytes_per_event == pytest.approx(rows["bulky"]["bytes_per_event"])
    assert bulky.estimate.workload.steps == 2
    per_run = rows["bulky"]["bytes_per_run"]
    assert bulky.estimate.streams["WORKFLOW_HISTORY"] == pytest.approx(30 * 1000 * per_run)
    text = repr(bulky)
    assert re.search(r"bulky +3 +2 +\d+ +1\.\d KiB +\d+\.\d KiB", text)
    assert re.search(r"WORKFLOW_HISTORY +\d[\d.]* (MiB|GiB)", text) and "e+0" not in text
    # the terminal's `dagnats sizing`: an attached engine measures from the runs' records
    from dagnats_nb.adapters.cli.main import main

    assert main(["sizing", "--data-dir", str(engine.settings.data_dir)]) == 0
    out = capsys.readouterr().out
    assert "runs: 1,000 per day of the measured mix of 2 workflows (bulky: 3 runs" in out
    assert re.search(r"tiny +3 +1 +4 +\d+ B", out) and "calibration: measured (6 runs" in out
    assert main(["sizing", "tiny", "--data-dir", str(engine.settings.data_dir)]) == 0
    out = capsys.readouterr().out
    assert "of 'tiny' (1 step)" in out and "bulky" not in out


def test_store_is_history_records_and_snapshots_and_restart_ignores_its_size():
    cal = sizing.Calibration().with_stores(record=(2650.0, 10), snapshot=(4000.0, 10))
    assert (cal.record_bytes(10), cal.snapshot_bytes(20)) == (2650.0, 7000.0)
    assert cal.source == "rule of thumb; records and snapshots measured"
    w = sizing.Workload(runs_per_day=10_000, concurrent_runs=500, history_max_age_days=30)
    est = sizing.estimate(w, cal, days=60)
    history = 10_000 * 12 * 500 * 30  # runs/day x events x bytes x runs_max_age
    assert est.streams["WORKFLOW_HISTORY"] == history
    assert est.streams["KV_workflow_runs"] == 10_000 * 2650 * 30
    assert est.streams["DAGNATS_SNAPSHOTS"] == 500 * 4000
    rows = {r["item"]: r for r in sizing.compare(cal, steps=10)}
    assert rows["bytes per record (10 steps)"]["rule_of_thumb"] == 5000
    assert rows["bytes per snapshot (10 steps)"]["measured"] == 4000
    # the recovery window: 5 min down + the 1 s checkpoint period at 10,000 x 12 events/day
    rec = est.recovery
    rate = 10_000 * 12 / 86400
    assert rec["events_since_checkpoint"] == pytest.approx(301 * rate)
    assert rec["history_needed_bytes"] == pytest.approx(301 * rate * 500)
    assert rec["server_s"] == pytest.approx(est.disk_bytes / GiB * 0.5)  # its store recovery
    engine_part = 0.5 + 500 * 2.5e-4 + 301 * rate / 20_000
    assert rec["restart_s"] == pytest.approx(rec["server_s"] + engine_part)
    assert rec["full_replay_events"] == pytest.approx(history / 500)
    # a store ten times larger: the engine's part of a restart is the same, a full replay's
    # ten times longer; only nats-server's store recovery grows
    longer = sizing.estimate(
        sizing.Workload(runs_per_day=10_000, concurrent_runs=500, history_max_age_days=300),
        cal,
        days=600,
    )
    assert longer.recovery["restart_s"] - longer.recovery["server_s"] == pytest.approx(engine_part)
    assert longer.recovery["server_s"] > 9 * rec["server_s"]

    def replay(r):
        return r["full_replay_s"] - r["server_s"] - 0.5

    assert replay(longer.recovery) == pytest.approx(10 * replay(rec))
    text = repr(sizing.Report(est, cal, []))
    line = "recovery (snapshot_restart): restart ~1.86 s after 5 min down (nats-server's store"
    assert f"{line} 1.2 s of it)" in text


def test_engine_measures_record_and_snapshot_bytes(tmp_path):
    """Records from the real ``workflow_runs`` bucket (its bytes over its records), snapshots
    from the real ``DAGNATS_SNAPSHOTS`` messages; the estimate is built on both."""
    import json

    import dagnats_nb as dn
    from dagnats_nb.runtime import snapshots as snap
    from dagnats_nb.transport.reading import read_all

    steps = [
        {"id": f"s{i}", "task": "work", **({"depends_on": [f"s{i - 1}"]} if i else {})}
        for i in range(9)
    ]
    gate = {"id": "g", "type": "approval", "depends_on": ["s8"],
            "config": {"subject": "approvals.g", "timeout": "1h"}}  # fmt: skip
    opts = dict(llm_enabled=False, snapshot_restart=True)
    with dn.Engine.start(data_dir=tmp_path / "e", **opts) as eng:

        @eng.task("work")
        def work(ctx):
            return {"step": ctx.step_id}

        eng.register({"name": "ten", "steps": [*steps, gate]})
        runs = [eng.start_run("ten", input=i) for i in range(6)]
        for run in runs[:3]:
            until(lambda run=run: eng.run_state(run.id) and run.status == "running", timeout=20)
            until(lambda run=run: eng.run_state(run.id)["state"].step("g").status == "running")
            eng.approve(run.id, "g")
            assert run.wait(timeout=20).status == "completed"
        for run in runs[3:]:
            until(lambda run=run: eng.run_state(run.id)["state"].step("g").status == "running")
        o = eng.orchestrator
        until(lambda: o.snapshots.checkpoint_seq >= o.last_seq and not o.snapshots._dirty)
        kv = eng._call(eng._js.stream_info("KV_workflow_runs")).state
        record = kv.bytes / kv.messages
        msgs = eng._call(read_all(eng._js, snap.STREAM, snap.RUN + ">"))
        assert len(msgs) == 3  # the three waiting runs
        snapshot = sum(
            sizing.stored_bytes(m.subject, sizing.header_bytes(m.headers), len(m.data))
            for m in msgs
        ) / len(msgs)
        assert {len(json.loads(m.data)["state"]["steps"]) for m in msgs} == {10}
        report = eng.sizing("ten", runs_per_day=1000, concurrent_runs=200, days=30)
    assert 1500 < record < 8000 and 2000 < snapshot < 8000  # measured: ~2.7 KB and ~4.0 KB
    est = report.estimate
    assert est.streams["KV_workflow_runs"] == pytest.approx(1000 * 30 * record)
    assert est.streams["DAGNATS_SNAPSHOTS"] == pytest.approx(200 * snapshot)
    assert report.calibration.source.endswith("; records and snapshots measured")
    table = report.comparison_frame().set_index("item")
    assert table.loc["bytes per record (10 steps)", "rule_of_thumb"] == 5000
    assert "recovery (snapshot_restart)" in repr(report)

"""The background sampler: a time series of the engine's numbers, and its plots."""

from __future__ import annotations

import time

import pytest
from conftest import until

import dagnats_nb as dn


def test_sampler_records_streams_lag_rates_and_draws_them(engine):
    engine.register(
        {
            "name": "pair",
            "steps": [
                {"id": "a", "task": "later"},
                {"id": "b", "task": "later", "depends_on": ["a"]},
            ],
        }
    )
    s = engine.sample(every="100ms")
    runs = [engine.start_run("pair", input=i) for i in range(6)]

    def sampled(df) -> bool:
        return "pending.workers-later" in df and df["pending.workers-later"].max() == 6

    # tasks wait with no worker: lag builds up until a sample shows all six pending
    until(lambda: sampled(s.frame()), what="a sample with six tasks pending")

    @engine.task("later", concurrency=6)
    async def later(ctx):
        return ctx.input

    for r in runs:
        r.wait(timeout=20)

    def drained(df) -> bool:
        return (
            len(df) >= 8
            and df["pending.workers-later"].iloc[-1] == 0
            and df["runs_ended"].iloc[-1] - df["runs_ended"].iloc[0] >= 6
        )

    until(lambda: drained(s.frame()), what="samples of the drained queue and ended runs")
    engine.stop_sampling()
    assert not s.running
    df = s.frame()
    assert len(df) >= 8
    assert df.index.is_monotonic_increasing
    assert df["pending.workers-later"].max() == 6 and df["pending.workers-later"].iloc[-1] == 0
    assert df["bytes.WORKFLOW_HISTORY"].iloc[-1] > df["bytes.WORKFLOW_HISTORY"].iloc[0]
    assert df["runs_ended"].iloc[-1] - df["runs_ended"].iloc[0] == 6
    assert df["steps_completed"].iloc[-1] - df["steps_completed"].iloc[0] == 12
    assert df["steps_per_s"].max() > 0 and (df["steps_per_s"] >= 0).all()
    fig = s.figure()
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == [
        "stream bytes",
        "consumer lag (pending + ack pending)",
        "throughput",
        "DEAD_LETTERS size",
    ]
    lag_lines = {ln.get_label(): ln for ln in fig.axes[1].get_lines()}
    assert max(lag_lines["workers-later"].get_ydata()) == 6


def test_sampler_rejects_a_bad_interval(engine):
    with pytest.raises(dn.DagnatsError, match="every = 0.0: must be a positive number of seconds"):
        engine.sample(every=0)


def test_dashboard_redraws_while_runs_go_and_leaves_a_static_figure(engine):
    @engine.task("tick")
    async def tick(ctx):
        return ctx.input

    engine.register({"name": "ticks", "steps": [{"id": "t", "task": "tick"}]})
    board = dn.dashboard(engine, every="100ms", refresh=0.2)
    for i in range(20):
        engine.run("ticks", input=i, timeout=20)
        time.sleep(0.05)  # paces the runs: the dashboard samples while they go
    # each redraw renders a figure (~0.4 s on a busy machine)
    drawn = until(
        lambda: board.redraws if board.redraws >= 2 else 0, timeout=20, every=0.1, what="redraws"
    )
    engine.stop_sampling()
    fig = board.stop()
    assert drawn >= 2
    assert bytes(board.image.value).startswith(b"\x89PNG")
    assert "samples every 0.1s" in board.caption.value
    assert [ax.get_title() for ax in fig.axes][0] == "stream bytes"
    assert board.redraw() is False  # nothing new after stop

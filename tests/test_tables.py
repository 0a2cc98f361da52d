"""The engine's tables as a person sees them (issue 13 item 6): human units, the columns
that matter, notes on what is left out; the DataFrames' numbers stay numbers."""

from __future__ import annotations

import math
import re

import pytest

from dagnats_nb.observe import units


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0, "0 B"),
        (812, "812 B"),
        (5734, "5.6 KiB"),
        (831_488, "812 KiB"),
        (8_170_825_164, "7.6 GiB"),
        (1 << 30, "1.0 GiB"),
        (None, ""),
        (math.nan, ""),
    ],
)
def test_bytes_read_in_binary_units(value, text):
    assert units.human_bytes(value) == text


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.25, "250 ms"),
        (2, "2.0 s"),
        (60, "60 s"),
        (180, "3 min"),
        (150, "2.5 min"),
        (90_000, "25 h"),
        (7 * 86400, "7 d"),
        (None, ""),
    ],
)
def test_durations_read_in_the_unit_that_fits(seconds, text):
    assert units.human_duration(seconds) == text


def test_shares_never_round_a_use_to_zero():
    assert units.human_share(0.031) == "3.1 %"
    assert units.human_share(5e-8) == "< 0.1 %"
    assert units.human_share(0) == "0.0 %"


def lines(text: str) -> list[str]:
    return text.splitlines()


def test_stream_stats_show_sizes_and_limits_in_units_and_fit_a_notebook(engine):
    @engine.task("hop")
    async def hop(ctx):
        return {"text": "x" * 300}

    engine.register({"name": "hops", "steps": [{"id": "a", "task": "hop"}]})
    for i in range(3):
        engine.run("hops", i, timeout=20)
    df = engine.stream_stats()
    text, page = repr(df), df._repr_html_()
    # numbers for arithmetic; units for people
    assert str(df["bytes"].dtype) == "int64" and df["bytes"].sum() > 0
    history = df.set_index("stream").loc["WORKFLOW_HISTORY"]
    assert re.search(rf"WORKFLOW_HISTORY +engine +{history['messages']} +\d[\d.]* KiB", text)
    assert re.search(r"TELEMETRY .* 7 d +1\.0 GiB", text)  # max_age, max_bytes
    assert "e+0" not in text and "e-0" not in text and "e+0" not in page
    assert "<td>1.0 GiB</td>" in page and "<td>30 d</td>" in page
    # the main columns only, and a note on the others
    header = lines(text)[0].split()
    assert header == [
        "stream",
        "kind",
        "messages",
        "bytes",
        "consumers",
        "max_age",
        "max_bytes",
        "store_share",
    ]
    assert max(len(line) for line in lines(text)[:-1]) <= 100
    assert page.count("<th>") == len(header)
    assert lines(text)[-1].startswith("9 more columns (first_seq, last_seq,")
    assert "<code>.wide()</code> shows them" in page
    wide = df.wide()
    assert "first_seq" in lines(repr(wide))[0] and "dedup_window" in wide._repr_html_()
    assert "more columns" not in repr(wide)
    # frames derived from it: rows filtered, an index set, columns picked
    engine_only = df[df["kind"] == "engine"].set_index("stream")
    assert lines(repr(engine_only))[0].split()[:2] == ["kind", "messages"]
    picked = repr(df[["stream", "first_seq", "bytes"]])
    assert lines(picked)[0].split() == ["stream", "first_seq", "bytes"]
    assert "more columns" not in picked
    added = repr(df.set_index("stream").loc[["WORKFLOW_HISTORY"], ["bytes"]].assign(runs=[3.0]))
    assert re.search(r"WORKFLOW_HISTORY +\d[\d.]* KiB +3$", added)  # a count, not 3.0


def test_kv_account_and_health_read_in_units(engine):
    kv = repr(engine.kv_stats())
    assert re.search(r"workers +\d +\d +\d+ B +1 +60 s", kv)
    assert re.search(r"sticky_bindings .* 25 h", kv)
    account = repr(engine.account())
    assert re.search(r"file storage vs max_store_bytes +[\d.]+ (B|KiB) +10\.0 GiB", account)
    health = engine.health()
    shown = repr(health)
    assert re.search(
        r"storage share of max_store_bytes +ok +JetStream file store .* 80\.0 %", shown
    )
    assert re.search(r"worker heartbeat gap \(s\) .* 60 s", shown)
    assert "1,000" in shown and "NaN" not in shown
    assert health.set_index("check").loc["storage share of max_store_bytes", "threshold"] == 0.8


def test_a_long_table_says_how_many_rows_it_leaves_out():
    from dagnats_nb.observe import tables

    row = {"stream": "S", "consumer": "c", "durable": True, "pending": 1}
    df = tables.frame([{**row, "consumer": f"c{i}"} for i in range(100)], "lag")
    text, page = repr(df), df._repr_html_()
    assert "100 rows: the first and last 5 shown" in text and "c99" in text and "c50" not in text
    assert "100 rows: the first and last 5 shown" in page
    every = tables.render_text(df, every_row=True)  # the terminal's
    assert "c50" in every and "rows:" not in every

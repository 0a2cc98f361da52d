"""The observability subcommands of ``%dagnats`` (issue 5) through InteractiveShell."""

from __future__ import annotations

import re

import pytest
from conftest import notebook_shell, until
from IPython.core.error import UsageError

import dagnats_nb as dn
from dagnats_nb.observe.sizing import Report


@pytest.fixture(scope="module")
def ip(tmp_path_factory):
    with notebook_shell() as shell:
        data_dir = tmp_path_factory.mktemp("observe") / "engine"
        shell.run_line_magic("dagnats", f"start --data-dir {data_dir} --set monitor_port=0")

        @dn.task("hop")
        async def hop(ctx):
            return ctx.input

        shell.run_cell_magic("dagnats", "workflow hops", "a -> b\na: task=hop\nb: task=hop")
        for i in range(3):
            shell.run_line_magic("dagnats", f"run hops --input {i}")
        yield shell


def test_streams_lag_kv_account_and_health(ip):
    streams = ip.run_line_magic("dagnats", "streams -o s").set_index("stream")
    assert streams.loc["WORKFLOW_HISTORY", "messages"] == 3 * (2 + 2 * 2)
    assert ip.user_ns["s"].equals(streams.reset_index())
    lag = ip.run_line_magic("dagnats", "lag").set_index("consumer")
    assert (
        lag.loc["workers-hop", "pending"] == 0 and lag.loc["workers-hop", "filter"] == "task.hop.>"
    )
    kv = ip.run_line_magic("dagnats", "kv").set_index("bucket")
    assert kv.loc["workflow_runs", "keys"] == 3
    account = ip.run_line_magic("dagnats", "account").set_index("item")
    assert account.loc["streams", "used"] >= 10
    health = ip.run_line_magic("dagnats", "health")
    assert list(health.columns) == ["check", "level", "subject", "value", "threshold", "action"]
    assert set(health["level"]) == {"ok"}


def test_monitor_and_sizing(ip):
    varz = ip.run_line_magic("dagnats", "monitor varz").set_index("key")["value"]
    assert varz["host"] == "127.0.0.1"
    connz = ip.run_line_magic("dagnats", "monitor connz")
    assert len(connz) >= 1
    report = ip.run_line_magic("dagnats", "sizing hops --runs-per-day 5000 --days 10")
    assert isinstance(report, Report)
    assert report.estimate.workload.steps == 2 and report.estimate.days == 10
    assert report.calibration.source.startswith("measured (")
    with pytest.raises(UsageError, match="invalid choice: 'routez'"):
        ip.run_line_magic("dagnats", "monitor routez")


def shown(ip, value) -> tuple[str, str]:
    """What a notebook shows of a value: its HTML and its text."""
    data, _ = ip.display_formatter.format(value)
    return data.get("text/html", ""), data["text/plain"]


def test_lag_hides_the_engines_ephemeral_consumers_unless_all(ip):
    page, text = shown(ip, ip.run_line_magic("dagnats", "lag"))
    assert "workers-hop" in page and "workers-hop" in text
    # the engine's ordered history reader (and any KV watcher), with random names
    assert "KV_workers" not in page and "$KV." not in text and "history.>" not in text
    assert re.search(r"\d+ ephemeral consumers \(KV watchers, ordered readers\) not shown", text)
    assert "<code>--all</code> shows them" in page
    every = ip.run_line_magic("dagnats", "lag --all -o every")
    assert ip.user_ns["every"] is every
    page, text = shown(ip, every)
    ephemeral = every[~every["durable"].astype(bool)]["consumer"]  # the history reader...
    assert len(ephemeral) >= 1 and all(name in page and name in text for name in ephemeral)
    assert "history.>" in text and "not shown" not in text
    assert "last_active" not in text.splitlines()[0]  # the header: the main columns
    _, text = shown(ip, ip.run_line_magic("dagnats", "lag --wide"))
    assert {"last_active", "max_ack_pending"} <= set(text.splitlines()[0].split())


def test_streams_show_bytes_and_durations_for_people(ip):
    page, text = shown(ip, ip.run_line_magic("dagnats", "streams"))
    assert "e+0" not in page and "e+0" not in text
    assert "<td>1.0 GiB</td>" in page and "<td>7 d</td>" in page  # TELEMETRY's limits
    assert re.search(r"WORKFLOW_HISTORY +engine +18 +\d[\d.]* KiB", text)
    assert "first_seq" not in text.splitlines()[0]
    assert "<code>--wide</code> (or <code>.wide()</code>) shows them" in page
    _, text = shown(ip, ip.run_line_magic("dagnats", "streams --wide"))
    assert {"first_seq", "dedup_window"} <= set(text.splitlines()[0].split())
    page, text = shown(ip, dn.engine())  # the engine card
    assert re.search(r"WORKFLOW_HISTORY +18 msgs +\d[\d.]* KiB", text)
    assert re.search(r"<td>WORKFLOW_HISTORY</td><td>18</td><td>\d[\d.]* KiB</td>", page)


def test_sizing_without_a_workflow_names_the_mix_it_measured(ip):
    """Runs the module's last: it adds a one-step workflow's runs to hops' three."""
    ip.run_cell_magic("dagnats", "workflow solo", "a\na: task=hop")
    for i in range(2):
        ip.run_line_magic("dagnats", f"run solo --input {i}")

    def measured_all():  # a run just ended counts once its record is written (< 1 s)
        report = ip.run_line_magic("dagnats", "sizing --runs-per-day 5000")
        return report if sum(r["runs"] for r in report.workflows) == 5 else None

    report = until(measured_all, timeout=10, what="the five runs measured")
    page, text = shown(ip, report)
    # the workload is the measured mix (3 runs of 2 steps, 2 of 1), not ten-step runs
    assert report.estimate.workload.steps == pytest.approx((3 * 2 + 2 * 1) / 5)
    mix = "the measured mix of 2 workflows (hops: 3 runs of 2 steps; solo: 2 runs of 1 step)"
    assert mix in text and mix in page
    assert "10 steps" not in text
    assert re.search(r"hops +3 +2 +6 +\d+ B +\d[\d.]* KiB", text)
    assert re.search(r"solo +2 +1 +4 +\d+ B +\d[\d.]* KiB", text)
    assert "<b>measured per workflow</b>" in page
    assert "e+0" not in text and re.search(r"disk: [\d.]+ (MiB|GiB) after 30 days", text)
    one = ip.run_line_magic("dagnats", "sizing solo --runs-per-day 5000")
    assert one.estimate.workload.steps == 1
    assert [r["workflow"] for r in one.workflows] == ["solo"]
    assert "runs: 5,000 per day of 'solo' (1 step)" in repr(one)

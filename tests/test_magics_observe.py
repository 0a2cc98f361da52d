"""The observability subcommands of ``%dagnats`` (issue 5) through InteractiveShell."""

from __future__ import annotations

import pytest
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell
from traitlets.config import Config

import dagnats_nb as dn
from dagnats_nb.observe.sizing import Report


@pytest.fixture(scope="module")
def ip(tmp_path_factory):
    cfg = Config()
    cfg.HistoryManager.enabled = False
    shell = InteractiveShell.instance(config=cfg)
    shell.run_line_magic("load_ext", "dagnats_nb")
    data_dir = tmp_path_factory.mktemp("observe") / "engine"
    shell.run_line_magic("dagnats", f"start --data-dir {data_dir} --set monitor_port=0")

    @dn.task("hop")
    async def hop(ctx):
        return ctx.input

    shell.run_cell_magic("dagnats", "workflow hops", "a -> b\na: task=hop\nb: task=hop")
    for i in range(3):
        shell.run_line_magic("dagnats", f"run hops --input {i}")
    yield shell
    shell.run_line_magic("unload_ext", "dagnats_nb")


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

"""Stream, consumer, KV and account statistics of a live engine (issue 5)."""

from __future__ import annotations

import json
import re

import pytest
from conftest import until


def test_stream_stats_count_the_exact_events_of_a_known_workload(engine):
    @engine.task("inc")
    async def inc(ctx):
        return ctx.input + 1

    k, n = 3, 5
    wf = {
        "name": "chain",
        "steps": [
            {"id": f"s{i}", "task": "inc", **({"depends_on": [f"s{i - 1}"]} if i else {})}
            for i in range(k)
        ],
    }
    engine.register(wf)
    for i in range(n):
        assert engine.run("chain", input=i, timeout=20).output == i + k
    df = engine.stream_stats().set_index("stream")
    # per run: workflow.started + (step.queued + step.completed) per step + workflow.completed
    # (fast handlers publish no step.started)
    assert df.loc["WORKFLOW_HISTORY", "messages"] == n * (2 + 2 * k)
    assert df.loc["WORKFLOW_HISTORY", "subjects"] == n  # one subject per run
    assert df.loc["WORKFLOW_HISTORY", "dedup_window_s"] == 5.0
    assert df.loc["TASK_QUEUES", "messages"] == 0 and df.loc["TASK_QUEUES", "retention"] == (
        "workqueue"
    )
    assert df.loc["DEAD_LETTERS", "max_age_s"] == 30 * 86400
    assert df.loc["TELEMETRY", "max_bytes"] == 1 << 30
    assert df.loc["STICKY_TASKS", "storage"] == "memory"
    share = df.loc["WORKFLOW_HISTORY", "store_share"]
    assert share == pytest.approx(df.loc["WORKFLOW_HISTORY", "bytes"] / (10 << 30))
    assert df.loc["WORKFLOW_HISTORY", "first_time"] <= df.loc["WORKFLOW_HISTORY", "last_time"]
    assert {"KV_workflow_defs", "KV_workflow_runs"} <= set(df.index)


def test_consumer_lag_shows_waiting_tasks_then_drains_when_a_worker_starts(engine):
    engine.register({"name": "slow-start", "steps": [{"id": "a", "task": "later"}]})
    runs = [engine.start_run("slow-start", input=i) for i in range(4)]

    def lag():
        df = engine.consumer_lag().set_index("consumer")
        row = df.loc["workers-later"]
        return row.to_dict() if row["pending"] == 4 else None

    row = until(lag, timeout=15, what="four tasks pending on workers-later")
    assert row["stream"] == "TASK_QUEUES" and row["filter"] == "task.later.>"
    assert row["ack_pending"] == 0 and row["durable"]

    @engine.task("later", concurrency=4)
    async def later(ctx):
        return ctx.input

    assert [r.wait(timeout=20).output for r in runs] == [0, 1, 2, 3]
    df = engine.consumer_lag().set_index("consumer")
    assert df.loc["workers-later", "pending"] == 0
    assert df.loc["workers-later", "ack_pending"] == 0
    assert df.loc["workers-later", "max_ack_pending"] == 4
    assert df.loc["workers-later", "last_acked_seq"] >= 4


def test_kv_stats_and_account(engine):
    engine.register({"name": "one", "steps": [{"id": "a", "task": "a"}]})
    kv = engine.kv_stats().set_index("bucket")
    assert kv.loc["workflow_defs", "keys"] == 1  # the definition under its name, as Go keeps it
    assert kv.loc["workers", "ttl_s"] == 60.0
    assert kv.loc["sticky_bindings", "ttl_s"] == 25 * 3600.0
    acct = engine.account().set_index("item")
    used = acct.loc["file storage vs max_store_bytes"]
    assert used["limit"] == 10 << 30 and 0 < used["used"] < used["limit"]
    assert used["share"] == pytest.approx(used["used"] / used["limit"])
    assert acct.loc["streams", "used"] >= 10


def test_stats_cli_prints_json_records(engine):
    import json
    import subprocess
    import sys

    engine.register({"name": "one", "steps": [{"id": "a", "task": "nobody"}]})
    engine.start_run("one")
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "dagnats_nb",
            "stats",
            "consumers",
            "--json",
            "--data-dir",
            str(engine.settings.data_dir),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    rows = {r["consumer"]: r for r in json.loads(out.stdout)}
    assert rows["workers-nobody"]["filter"] == "task.nobody.>"
    text = subprocess.run(
        [
            sys.executable,
            "-m",
            "dagnats_nb",
            "stats",
            "streams",
            "--data-dir",
            str(engine.settings.data_dir),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert text.returncode == 0 and "WORKFLOW_HISTORY" in text.stdout


def test_stats_cli_prints_tables_for_people(engine, capsys):
    """``dagnats stats``: units, the main columns, no ephemeral consumer unless ``--all``;
    ``--wide`` every column; ``--json`` raw numbers."""
    from dagnats_nb.adapters.cli.main import main

    where = ["--data-dir", str(engine.settings.data_dir)]

    def dagnats(*args: str) -> str:
        assert main([*args, *where]) == 0
        return capsys.readouterr().out

    streams = dagnats("stats", "streams")
    assert re.search(r"TELEMETRY +engine +0 +0 B +0 +7 d +1\.0 GiB", streams)
    assert "first_seq" not in streams.splitlines()[0] and "e+0" not in streams
    assert streams.splitlines()[-1].endswith("--wide shows them")
    assert "first_seq" in dagnats("stats", "streams", "--wide").splitlines()[0]
    rows = json.loads(dagnats("stats", "streams", "--json"))
    telemetry = next(r for r in rows if r["stream"] == "TELEMETRY")
    assert telemetry["max_bytes"] == 1 << 30 and telemetry["max_age_s"] == 7 * 86400

    async def watch():  # an ephemeral consumer on KV_workers, as a KV watcher makes one
        kv = await engine._js.key_value("workers")
        return await kv.watchall()

    watcher = engine._call(watch())
    try:
        lag = dagnats("stats", "consumers")
        assert "workers-llm" in lag and "KV_workers" not in lag and "$KV." not in lag
        assert re.search(r"\d+ ephemeral consumers? .* not shown: --all shows them", lag)
        every = dagnats("stats", "lag", "--all")
        assert "KV_workers" in every and "$KV.workers.>" in every and "not shown" not in every
    finally:
        engine._call(watcher.stop())
    assert {r["durable"] for r in json.loads(dagnats("stats", "consumers", "--json"))} == {True}
    assert "60 s" in dagnats("stats", "health")  # the heartbeat gap's threshold
    assert main(["stats", "streams", "--all", *where]) == 1
    assert "--all is for `dagnats stats consumers`" in capsys.readouterr().err


def test_stats_and_health_address_the_engines_jetstream_domain(tmp_path):
    """With ``jetstream_domain``, the raw API requests of stats and health go to
    ``$JS.<domain>.API``: an attached engine naming the server's domain reads them, one
    naming a domain nobody serves gets no answer (the same calls, another prefix)."""
    import dagnats_nb as dn
    from dagnats_nb.server.process import EmbeddedServer

    with EmbeddedServer(data_dir=tmp_path / "srv", jetstream_domain="tdom") as server:
        opts = dict(nats_url=server.client_url, jetstream_domain="tdom", llm_enabled=False)
        with dn.Engine.start(data_dir=tmp_path / "e", **opts) as eng:
            assert eng.jetstream_api == "$JS.tdom.API"
            attached = dn.Engine.connect(data_dir=tmp_path / "a", url=server.client_url, **opts)
            try:
                assert "WORKFLOW_HISTORY" in set(attached.stream_stats()["stream"])
                assert len(attached.kv_stats()) > 0 and len(attached.health()) > 0
            finally:
                attached.stop()
            opts["jetstream_domain"] = "nope"
            stranger = dn.Engine.connect(data_dir=tmp_path / "b", url=server.client_url, **opts)
            try:
                assert stranger.jetstream_api == "$JS.nope.API"
                with pytest.raises(dn.DagnatsError):
                    stranger.stream_stats()
            finally:
                stranger.stop()


def test_consumer_lag_hides_ephemeral_consumers_unless_asked(engine):
    """A KV watcher's consumer (random name, on KV_workers) is left out of the lag and its
    rendering, which says so; ``include_internal=True`` lists it after the durable ones."""

    @engine.task("first-in-line")
    def first(ctx):
        return 1

    async def watch():  # an ephemeral consumer on KV_workers, as a watcher makes one
        kv = await engine._js.key_value("workers")
        return await kv.watchall()

    watcher = engine._call(watch())
    try:
        df = engine.consumer_lag()
        assert set(df["durable"]) == {True} and "workers-first-in-line" in set(df["consumer"])
        text = repr(df)
        assert "$KV.workers" not in text and "KV_workers" not in text
        assert "not shown: `include_internal=True` shows them" in text
        mine = repr(df[df["consumer"] == "workers-first-in-line"])  # rows picked: no note
        assert "workers-first-in-line" in mine and "not shown" not in mine
        every = engine.consumer_lag(include_internal=True)
        durable = list(every["durable"])
        assert False in durable and durable == sorted(durable, reverse=True)
        watchers = every[every["stream"] == "KV_workers"]
        assert len(watchers) >= 1 and not watchers["durable"].any()
        shown = repr(every)
        assert all(name in shown for name in watchers["consumer"]) and "not shown" not in shown
        assert int(every["pending"].sum()) >= int(df["pending"].sum())  # numbers stay numbers
    finally:
        engine._call(watcher.stop())

"""Streams and buckets exist exactly as WIRE.md lists them, and start-up updates them."""

from __future__ import annotations

import dagnats_nb as dn
from dagnats_nb.wire import resources

DAY = 86400.0


def stream_configs(eng) -> dict:
    async def read():
        out = {}
        for name in [s.name for s in resources.STREAMS] + [
            f"KV_{b.name}" for b in resources.BUCKETS
        ]:
            out[name] = (await eng._js.stream_info(name)).config
        return out

    return eng._call(read())


def test_streams_and_buckets_match_the_wire_layout(engine):
    cfg = stream_configs(engine)
    h = cfg["WORKFLOW_HISTORY"]
    assert h.subjects == ["history.>"] and h.retention == "limits"
    assert h.storage == "file" and h.duplicate_window == 5.0
    assert not h.max_age and h.max_bytes == -1
    t = cfg["TASK_QUEUES"]
    assert t.subjects == ["task.>"] and t.retention == "workqueue"
    d = cfg["DEAD_LETTERS"]
    assert d.subjects == ["dead.>"] and d.max_age == 30 * DAY
    tel = cfg["TELEMETRY"]
    assert tel.max_age == 7 * DAY and tel.max_bytes == 1 << 30 and tel.duplicate_window == 5.0
    s = cfg["STICKY_TASKS"]
    assert s.storage == "memory" and s.max_age == 1800.0
    assert cfg["KV_sticky_bindings"].max_age == 25 * 3600.0
    assert cfg["KV_workers"].max_age == 60.0
    for bucket in ("workflow_defs", "workflow_runs", "checkpoints"):
        assert cfg[f"KV_{bucket}"].subjects == [f"$KV.{bucket}.>"]


def test_restart_updates_history_limits_in_place(tmp_path):
    data = tmp_path / "e"
    with dn.Engine.start(data_dir=data) as eng:
        eng.register({"name": "w", "steps": [{"id": "a", "task": "a"}]})
        eng.start_run("w")
    with dn.Engine.start(data_dir=data, runs_max_age="720h", history_max_bytes="64MiB") as eng:
        h = stream_configs(eng)["WORKFLOW_HISTORY"]
        assert h.max_age == 720 * 3600.0
        assert h.max_bytes == 64 << 20
        assert len(eng.runs()) == 1  # nothing was lost by the update


def test_small_store_caps_telemetry_below_it(tmp_path):
    with dn.Engine.start(data_dir=tmp_path / "e", max_store_bytes="100MiB") as eng:
        assert stream_configs(eng)["TELEMETRY"].max_bytes == 10 << 20


def test_store_error_ignores_api_errors_without_a_code():
    from nats.js.errors import KeyWrongLastSequenceError

    from dagnats_nb.transport.errors import store_error

    assert store_error(KeyWrongLastSequenceError("wrong last sequence")) is None


def _raw_configs(url: str, names: list[str]) -> dict:
    """Each stream's config as the server returns it (None when it does not exist)."""
    import asyncio
    import json

    import nats

    async def read() -> dict:
        nc = await nats.connect(url)
        try:
            out = {}
            for name in names:
                msg = await nc.request(f"$JS.API.STREAM.INFO.{name}", b"", timeout=5)
                body = json.loads(msg.data)
                out[name] = None if "error" in body else body["config"]
            return out
        finally:
            await nc.close()

    return asyncio.run(read())


def _add_stream(url: str, config: dict) -> None:
    import asyncio
    import json

    import nats

    async def add() -> None:
        nc = await nats.connect(url)
        try:
            msg = await nc.request(
                f"$JS.API.STREAM.CREATE.{config['name']}", json.dumps(config).encode(), timeout=5
            )
            assert "error" not in json.loads(msg.data), msg.data
        finally:
            await nc.close()

    asyncio.run(add())


def test_streams_of_another_deployment_are_adopted_never_altered(tmp_path):
    """Attached through nats_url, existing streams and buckets nobody marked as ours are used
    as they are (other limits, replicas, dedup windows...); what is missing is created with
    our mark, and only what carries it is updated on the next start."""
    from dagnats_nb.server.process import EmbeddedServer
    from dagnats_nb.transport.provision import OWNER, OWNER_KEY

    with EmbeddedServer(data_dir=tmp_path / "srv") as server:
        theirs = {
            "name": "WORKFLOW_HISTORY",
            "subjects": ["history.>"],
            "retention": "limits",
            "storage": "file",
            "max_age": 30 * 86400 * 10**9,
            "max_bytes": 123_456_789,
            "duplicate_window": 5 * 10**9,
        }
        _add_stream(server.url, theirs)
        dead = {**theirs, "name": "DEAD_LETTERS", "subjects": ["dead.>"], "max_bytes": -1}
        dead["duplicate_window"] = 24 * 3600 * 10**9
        _add_stream(server.url, dead)
        names = ["WORKFLOW_HISTORY", "DEAD_LETTERS", "TASK_QUEUES", "KV_workflow_runs"]
        before = _raw_configs(server.url, names)
        opts = dict(nats_url=server.url, llm_enabled=False, runs_max_age="1h")
        for i in range(2):  # the second start: our own streams are ours by their mark
            with dn.Engine.start(data_dir=tmp_path / f"e{i}", **opts) as eng:

                @eng.task("t")
                def t(ctx):
                    return ctx.input

                eng.register({"name": "w", "steps": [{"id": "a", "task": "t"}]})
                assert eng.run("w", 7, timeout=20).output == 7
        after = _raw_configs(server.url, names)
        for name in ("WORKFLOW_HISTORY", "DEAD_LETTERS"):
            assert after[name] == before[name], name  # not even runs_max_age applied
        assert before["TASK_QUEUES"] is None and before["KV_workflow_runs"] is None
        for name in ("TASK_QUEUES", "KV_workflow_runs"):
            assert after[name]["metadata"][OWNER_KEY] == OWNER  # created, so ours


def test_a_foreign_stream_dagnats_cannot_work_on_is_refused_in_one_line(tmp_path):
    import pytest

    from dagnats_nb.server.process import EmbeddedServer

    with EmbeddedServer(data_dir=tmp_path / "srv") as server:
        wrong = {"name": "TASK_QUEUES", "subjects": ["task.>"], "retention": "limits"}
        _add_stream(server.url, wrong)
        before = _raw_configs(server.url, ["TASK_QUEUES"])
        with pytest.raises(dn.ConfigError) as info:
            dn.Engine.start(data_dir=tmp_path / "e", nats_url=server.url, llm_enabled=False)
        text = str(info.value)
        assert "\n" not in text
        assert "stream TASK_QUEUES" in text and "retention limits" in text
        assert "needs workqueue" in text and "another deployment" in text
        assert _raw_configs(server.url, ["TASK_QUEUES"]) == before


def test_our_streams_on_an_external_server_follow_the_settings(tmp_path):
    """What we created on a server we do not run carries our mark: a restart with another
    runs_max_age updates it, as on the embedded server."""
    from dagnats_nb.server.process import EmbeddedServer

    with EmbeddedServer(data_dir=tmp_path / "srv") as server:
        opts = dict(nats_url=server.url, llm_enabled=False)
        with dn.Engine.start(data_dir=tmp_path / "a", **opts):
            pass
        with dn.Engine.start(data_dir=tmp_path / "b", runs_max_age="2h", **opts) as eng:
            assert stream_configs(eng)["WORKFLOW_HISTORY"].max_age == 7200.0

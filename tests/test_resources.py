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

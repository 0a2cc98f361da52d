"""Streams and buckets exist as WIRE.md lists them, with the Go engine's defaults, and
start-up updates them."""

from __future__ import annotations

import dagnats_nb as dn
from dagnats_nb.wire import resources

DAY = 86400.0
NS = 10**9
MiB, GiB = 1 << 20, 1 << 30

# What the Go engine creates, as nats-server reports it ($JS.API.STREAM.INFO), read from a
# real `dagnats serve` (reference commit ac2a4ad) with DAGNATS_MAX_STORE_BYTES=2GiB; the
# same numbers as internal/natsutil/conn.go (fractions 0.30 / 0.12 / 0.05 / 0.10 of the
# budget, floor(budget * fraction); 30 d, 24 h, 7 d, 5 s...). Durations in ns, as NATS sends.
GO_BUDGET = 2 * GiB
GO_COMMON = {
    "retention": "limits",
    "storage": "file",
    "discard": "old",
    "num_replicas": 1,
    "max_age": 0,
    "max_bytes": -1,
    "max_msgs": -1,
    "max_msg_size": -1,
    "max_msgs_per_subject": -1,
    "max_consumers": -1,
    "duplicate_window": 120 * NS,
    "allow_direct": False,
    "allow_rollup_hdrs": False,
    "deny_delete": False,
    "deny_purge": False,
    "allow_msg_ttl": False,
    "compression": "none",
}
GO_STREAMS = {
    "WORKFLOW_HISTORY": {
        "subjects": ["history.>"],
        "max_age": 30 * 86400 * NS,
        "max_bytes": 644_245_094,
        "duplicate_window": 5 * NS,
    },
    "TASK_QUEUES": {
        "subjects": ["task.>"],
        "retention": "workqueue",
        "max_bytes": 257_698_037,
        "allow_atomic": True,
    },
    "DEAD_LETTERS": {
        "subjects": ["dead.>"],
        "max_age": 30 * 86400 * NS,
        "max_bytes": 107_374_182,
        "duplicate_window": 86400 * NS,
    },
    "TELEMETRY": {
        "subjects": ["telemetry.>"],
        "max_age": 7 * 86400 * NS,
        "max_bytes": 214_748_364,
        "duplicate_window": 5 * NS,
    },
    "STICKY_TASKS": {"subjects": ["sticky.>"], "storage": "memory", "max_age": 1800 * NS},
    "EVENTS": {"subjects": ["event.>"], "max_age": 14 * 86400 * NS, "max_bytes": 322_122_547},
}
GO_KV_COMMON = {
    "discard": "new",
    "max_msgs_per_subject": 1,
    "allow_direct": True,
    "allow_rollup_hdrs": True,
    "deny_delete": True,
}
GO_BUCKETS = {  # bucket: (TTL, dedup window), in ns
    "workflow_defs": (0, 120 * NS),
    "workflow_runs": (0, 120 * NS),
    "sticky_bindings": (25 * 3600 * NS, 120 * NS),
    "workers": (60 * NS, 60 * NS),
    "checkpoints": (0, 120 * NS),
    "approval_tokens": (168 * 3600 * NS, 120 * NS),
    "signals": (0, 120 * NS),
    "triggers": (0, 120 * NS),
    "trigger_state": (0, 120 * NS),
}
# Where ours differ on purpose (wire/resources.py says why): what a run still needs is never
# dropped to make room. A full task queue refuses new tasks (a clear "storage is full")
# instead of dropping the oldest pending ones; the history has no byte limit unless
# history_max_bytes sets one (we recover by replaying it: Go's 30 % would drop the
# workflow.started of the oldest runs, waiting or running, as newer runs fill it).
DELIBERATE = {
    ("TASK_QUEUES", "discard"): "new",
    ("WORKFLOW_HISTORY", "max_bytes"): -1,
    ("WORKFLOW_HISTORY", "allow_direct"): True,  # batched direct gets of one run's events
}


def go_config(name: str) -> dict:
    """The Go engine's config of stream ``name`` (KV_* for a bucket), at GO_BUDGET."""
    if name.startswith("KV_"):
        ttl, window = GO_BUCKETS[name[3:]]
        extra = {"subjects": [f"$KV.{name[3:]}.>"], "max_age": ttl, "duplicate_window": window}
        return {**GO_COMMON, **GO_KV_COMMON, **extra}
    return {**GO_COMMON, **GO_STREAMS[name]}


def layout_names() -> list[str]:
    return [s.name for s in resources.STREAMS] + [b.stream for b in resources.BUCKETS]


def stream_configs(eng) -> dict:
    async def read():
        out = {}
        for name in layout_names():
            out[name] = (await eng._js.stream_info(name)).config
        return out

    return eng._call(read())


def test_the_layout_is_the_go_engines():
    """Names and subjects of what we create are Go's; resources.py resolves Go's numbers."""
    assert set(layout_names()) == set(GO_STREAMS) | {f"KV_{b}" for b in GO_BUCKETS}
    for spec in resources.streams_for(max_store_bytes=GO_BUDGET):
        go = go_config(spec.name)
        assert list(spec.subjects) == go["subjects"] and spec.retention == go["retention"]
        want = DELIBERATE.get((spec.name, "max_bytes"), go["max_bytes"])
        assert (spec.max_bytes or -1) == want, spec.name
        assert int((spec.max_age or 0) * NS) == go["max_age"], spec.name
    go_history = GO_STREAMS["WORKFLOW_HISTORY"]["max_bytes"]  # not ours, but Go's formula
    assert int(GO_BUDGET * resources.GO_HISTORY_SHARE) == go_history
    at_ten = {s.name: s.max_bytes for s in resources.STREAMS}  # the default 10 GiB store
    assert at_ten["TASK_QUEUES"] == 1_288_490_188 and at_ten["DEAD_LETTERS"] == 536_870_912
    assert at_ten["TELEMETRY"] == GiB and at_ten["WORKFLOW_HISTORY"] is None


def test_every_stream_and_bucket_has_the_go_engines_defaults(tmp_path):
    """A live engine with Go's store budget: every field of every stream and bucket is what
    the Go engine sets, but the deliberate differences."""
    with dn.Engine.start(data_dir=tmp_path / "e", max_store_bytes=GO_BUDGET) as eng:
        have = _raw_configs(eng.connect_url, layout_names())
    for name, cfg in have.items():
        for key, want in go_config(name).items():
            want = DELIBERATE.get((name, key), want)
            assert cfg.get(key) == want, (name, key, cfg.get(key), want)


def test_allow_atomic_only_for_a_server_that_knows_it():
    [tasks] = [s for s in resources.STREAMS if s.name == "TASK_QUEUES"]
    assert tasks.config(api_level=2).allow_atomic is True
    assert tasks.config(api_level=1).allow_atomic is None  # nats-server < 2.12: left out


def test_direct_gets_on_the_history_only_on_one_replica():
    [history] = [s for s in resources.STREAMS if s.name == "WORKFLOW_HISTORY"]
    assert history.config(replicas=1).allow_direct is True
    assert history.config(replicas=3).allow_direct is None  # a follower may lag: consumer reads
    assert all(not s.config().allow_direct for s in resources.STREAMS if s is not history)


def test_runs_max_age_and_history_max_bytes_override_the_defaults(tmp_path):
    data = tmp_path / "e"
    with dn.Engine.start(data_dir=data) as eng:  # the defaults: Go's 30 days, no byte limit
        h = stream_configs(eng)["WORKFLOW_HISTORY"]
        assert h.max_age == 30 * DAY and h.max_bytes == -1
        assert eng.settings.runs_max_age.total_seconds() == 30 * DAY
    with dn.Engine.start(data_dir=data, runs_max_age="1h", history_max_bytes="1GiB") as eng:
        h = stream_configs(eng)["WORKFLOW_HISTORY"]
        assert h.max_age == 3600.0 and h.max_bytes == GiB
    with dn.Engine.start(data_dir=data, runs_max_age=0, history_max_bytes=0) as eng:
        h = stream_configs(eng)["WORKFLOW_HISTORY"]
        assert not h.max_age and h.max_bytes == -1  # 0: no limit, the whole history kept


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


def test_a_large_history_max_bytes_leaves_the_other_limits_room_in_the_store():
    """NATS reserves every byte limit in the store: when history_max_bytes leaves the other
    shares too little room, they give it up in proportion, so the limits still fit."""
    specs = resources.streams_for(history_max_bytes=8 * GiB, max_store_bytes=10 * GiB)
    limits = {s.name: s.max_bytes for s in specs if s.storage == "file"}
    assert limits["WORKFLOW_HISTORY"] == 8 * GiB
    assert sum(limits.values()) <= 10 * GiB
    assert limits["TASK_QUEUES"] > limits["TELEMETRY"] > limits["DEAD_LETTERS"] > 0
    small = {s.name: s.max_bytes for s in resources.streams_for(max_store_bytes=100 * MiB)}
    assert small["TASK_QUEUES"] == int(0.12 * 100 * MiB) and small["TELEMETRY"] == 10 * MiB


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
        _add_stream(server.client_url, theirs)
        dead = {**theirs, "name": "DEAD_LETTERS", "subjects": ["dead.>"], "max_bytes": -1}
        dead["duplicate_window"] = 24 * 3600 * 10**9
        _add_stream(server.client_url, dead)
        names = ["WORKFLOW_HISTORY", "DEAD_LETTERS", "TASK_QUEUES", "KV_workflow_runs"]
        before = _raw_configs(server.client_url, names)
        opts = dict(nats_url=server.client_url, llm_enabled=False, runs_max_age="1h")
        for i in range(2):  # the second start: our own streams are ours by their mark
            with dn.Engine.start(data_dir=tmp_path / f"e{i}", **opts) as eng:

                @eng.task("t")
                def t(ctx):
                    return ctx.input

                eng.register({"name": "w", "steps": [{"id": "a", "task": "t"}]})
                assert eng.run("w", 7, timeout=20).output == 7
        after = _raw_configs(server.client_url, names)
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
        _add_stream(server.client_url, wrong)
        before = _raw_configs(server.client_url, ["TASK_QUEUES"])
        with pytest.raises(dn.ConfigError) as info:
            dn.Engine.start(data_dir=tmp_path / "e", nats_url=server.client_url, llm_enabled=False)
        text = str(info.value)
        assert "\n" not in text
        assert "stream TASK_QUEUES" in text and "retention limits" in text
        assert "needs workqueue" in text and "another deployment" in text
        assert _raw_configs(server.client_url, ["TASK_QUEUES"]) == before


def test_our_streams_on_an_external_server_follow_the_settings(tmp_path):
    """What we created on a server we do not run carries our mark: a restart with another
    runs_max_age updates it, as on the embedded server."""
    from dagnats_nb.server.process import EmbeddedServer

    with EmbeddedServer(data_dir=tmp_path / "srv") as server:
        opts = dict(nats_url=server.client_url, llm_enabled=False)
        with dn.Engine.start(data_dir=tmp_path / "a", **opts):
            pass
        with dn.Engine.start(data_dir=tmp_path / "b", runs_max_age="2h", **opts) as eng:
            assert stream_configs(eng)["WORKFLOW_HISTORY"].max_age == 7200.0


# What dagnats-nb created before it took the Go engine's defaults (the same server fields).
OLD = {
    "WORKFLOW_HISTORY": {"max_age": 0, "max_bytes": -1, "duplicate_window": 5 * NS},
    "TASK_QUEUES": {"max_bytes": -1, "discard": "old", "allow_atomic": False},
    "DEAD_LETTERS": {"max_bytes": -1, "duplicate_window": 120 * NS},
    "TELEMETRY": {"max_bytes": MiB},  # max(1 MiB, a tenth of a store under 2 GiB)
}
OLD_KV = {"allow_direct": False, "allow_msg_ttl": True}  # nats-py's create_key_value


def _update_raw(url: str, changes: dict[str, dict]) -> None:
    """Set fields of existing streams with raw JetStream API requests."""
    import asyncio
    import json

    import nats

    async def update() -> None:
        nc = await nats.connect(url)
        try:
            for name, fields in changes.items():
                info = await nc.request(f"$JS.API.STREAM.INFO.{name}", b"", timeout=5)
                cfg = {**json.loads(info.data)["config"], **fields}
                reply = await nc.request(
                    f"$JS.API.STREAM.UPDATE.{name}", json.dumps(cfg).encode(), timeout=5
                )
                assert "error" not in json.loads(reply.data), reply.data
        finally:
            await nc.close()

    asyncio.run(update())


def _publish(url: str, messages: list[tuple[str, bytes]]) -> None:
    import asyncio

    import nats

    async def publish() -> None:
        nc = await nats.connect(url)
        try:
            js = nc.jetstream()
            for subject, data in messages:
                await js.publish(subject, data)
        finally:
            await nc.close()

    asyncio.run(publish())


def test_a_data_dir_with_the_old_defaults_is_brought_to_gos_at_start(tmp_path, caplog):
    """Streams and buckets an earlier dagnats-nb created (marked, so ours) get Go's defaults
    in place at the next start: NATS allows every such update, the start does not fail, the
    runs and a pending task stay. Only what a tighter limit holds beyond it goes, and a
    warning says so; per-message TTLs stay on the buckets (NATS cannot turn them off)."""
    import logging

    from dagnats_nb.server.process import EmbeddedServer

    data, store = tmp_path / "e", 8 * MiB
    wf = {"name": "w", "steps": [{"id": "a", "task": "a"}]}
    with dn.Engine.start(data_dir=data, max_store_bytes=store, llm_enabled=False) as eng:

        @eng.task("a")
        def a(ctx):
            return "done"

        eng.register(wf)
        run_id = eng.run("w", timeout=20).id
    old = {**OLD, **{f"KV_{b}": OLD_KV for b in GO_BUCKETS}}
    with EmbeddedServer(data_dir=data, max_store_bytes=store) as server:
        _update_raw(server.client_url, old)  # what the earlier version made of this data dir
        before = _raw_configs(server.client_url, layout_names())
        for name, fields in old.items():
            assert {k: before[name].get(k, False) for k in fields} == fields, name
        junk = [("telemetry.junk", b"t" * 100_000)] * 12  # 1 MiB kept under the old cap
        _publish(server.client_url, [*junk, ("task.nobody.r1", b"{}")])
    caplog.set_level(logging.WARNING, logger="dagnats_nb.transport.provision")
    with dn.Engine.start(data_dir=data, max_store_bytes=store, llm_enabled=False) as eng:
        after = _raw_configs(eng.connect_url, layout_names())
        assert eng.get_run(run_id).status == "completed"
        tasks = eng._call(eng._js.stream_info("TASK_QUEUES", subjects_filter="task.nobody.>"))
        assert tasks.state.subjects == {"task.nobody.r1": 1}
    for name, cfg in after.items():
        want = {**go_config(name), "max_bytes": _max_bytes(name, store)}
        if name.startswith("KV_"):
            want["allow_msg_ttl"] = True  # "message TTL status can not be disabled"
        for key, value in want.items():
            value = DELIBERATE.get((name, key), value)
            assert cfg.get(key) == value, (name, key, cfg.get(key), value)
    [warning] = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
    assert warning.startswith("stream TELEMETRY: its limits") and "dropped 2 stored" in warning


def _max_bytes(name: str, store: int) -> int:
    specs = {s.name: s for s in resources.streams_for(max_store_bytes=store)}
    spec = specs.get(name)
    return spec.max_bytes if spec and spec.max_bytes else -1

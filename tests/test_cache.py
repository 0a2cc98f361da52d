"""Cached steps (issue 14, item 2): the pure key (``dag.cachekey``), and the step cache on a
real engine: hits make no handler call and no LLM call, every key component makes a miss,
the cache outlives a restart, its TTL and byte cap are JetStream's, hits are in the history,
and its stats, clear, magic and CLI work through their public entry points."""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import time
from collections import Counter

import nats
import pytest
from conftest import notebook_shell, until
from llm_server import ChatServer

import dagnats_nb as dn
from dagnats_nb.adapters.cli.main import main as cli_main
from dagnats_nb.config import load_settings
from dagnats_nb.dag.cachekey import cache_key, code_version, step_flag, wants_cache
from dagnats_nb.dag.edges import load_edges
from dagnats_nb.dag.events import Event
from dagnats_nb.errors import WorkflowError
from dagnats_nb.facade import default
from dagnats_nb.facade.worker_process import WorkerProcess
from dagnats_nb.wire import resources

# -- the pure key ------------------------------------------------------------------------

BASE = ("t", {"a": 1, "b": [1, 2]}, {"owner": "x"}, {"n": 1}, "v1", {"model": "m"})


def test_every_key_component_changes_the_key_and_nothing_else_does():
    key = cache_key(*BASE)
    assert len(key) == 64 and key == cache_key(*BASE)
    changed = [
        ("u", *BASE[1:]),
        (BASE[0], {"a": 2, "b": [1, 2]}, *BASE[2:]),
        (*BASE[:2], {"owner": "y"}, *BASE[3:]),
        (*BASE[:3], {"n": 2}, *BASE[4:]),
        (*BASE[:4], "v2", BASE[5]),
        (*BASE[:5], {"model": "n"}),
    ]
    keys = {cache_key(*c) for c in changed}
    assert key not in keys and len(keys) == len(changed)
    # key order, and the cache-control metadata key, do not count
    same = cache_key("t", {"b": [1, 2], "a": 1}, {"owner": "x", "cache": "true"}, *BASE[3:])
    assert same == key


def test_step_flag_and_defaults():
    assert step_flag({"cache": "true"}) is True and step_flag({"cache": "False"}) is False
    assert step_flag({}) is None and step_flag(None) is None and step_flag({"cache": "x"}) is None
    assert wants_cache(None, True) and not wants_cache(False, True) and wants_cache(True, False)


def _compiled(source: str, name: str = "h"):
    scope: dict = {}
    exec(compile(source, "<test>", "exec"), scope)
    return scope[name]


def test_code_version_sees_code_not_lines_or_comments():
    src = "def h(ctx, k=3):\n    def inner(x):\n        return x + 1\n    return inner(ctx) * k\n"
    v = code_version(_compiled(src))
    assert len(v) == 16
    assert code_version(_compiled("\n\n# a comment\n" + src.replace("+ 1", "+ 1  # one"))) == v
    assert code_version(_compiled(src.replace("x + 1", "x + 2"))) != v  # nested code
    assert code_version(_compiled(src.replace("k=3", "k=4"))) != v  # defaults
    assert code_version(_compiled(src.replace("* k", "- k"))) != v  # bytecode
    assert code_version(_compiled(src.replace("inner", "other"))) != v  # names
    fn = _compiled(src)
    assert code_version(functools.partial(fn, k=1)) != code_version(functools.partial(fn, k=2))

    class Obj:
        def __call__(self, ctx):
            return 1

        def method(self, ctx):
            return 2

    assert code_version(Obj()) == code_version(Obj.__call__)
    assert code_version(Obj().method) == code_version(Obj.method)
    assert code_version(len) == code_version(len)


def test_code_version_sees_what_a_factory_captured():
    """Handlers made by one factory share their code: the values they captured tell them
    apart (a model name, a prompt, a helper function's code), so a handler rebuilt with
    another model is a miss."""

    def make(model, helper=None):
        def handler(ctx):
            return helper(ctx) if helper else f"{model}: {ctx}"

        return handler

    assert code_version(make("gpt-4")) == code_version(make("gpt-4"))
    assert code_version(make("gpt-4")) != code_version(make("gpt-5"))
    one, two = (lambda c: c + 1), (lambda c: c + 2)
    assert code_version(make("m", one)) != code_version(make("m", two))

    def recursive(ctx):  # captures itself through its own closure: no endless loop
        return recursive

    assert len(code_version(recursive)) == 16


def test_edge_syntax_cache_key_maps_to_metadata():
    defn = load_edges("a -> b\nb: cache=true\na: cache=false", "w")
    assert defn.step("b").metadata == {"cache": "true"}
    assert defn.step("a").metadata == {"cache": "false"}
    with pytest.raises(WorkflowError, match="line 2 step 'b': cache='maybe': write cache=true"):
        load_edges("a -> b\nb: cache=maybe", "w")


def test_cache_and_handler_version_are_envelope_fields_go_ignores():
    e = Event("step.completed", "r1", step_id="s", payload={"x": 1}, handler_version="abc")
    e.cache = {"hit": True, "key": "k", "run_id": "r0", "step_id": "s"}
    back = Event.decode(e.encode())
    assert back.cache == e.cache and back.handler_version == "abc"
    go = Event.decode(b'{"type":"step.completed","run_id":"r1","step_id":"s","payload":1}')
    assert go.cache is None and go.handler_version == ""
    assert "cache" not in Event("step.completed", "r1", step_id="s").to_wire()


def test_the_fold_counts_each_hit_once_and_a_map_step_by_its_items():
    """``RunState.cached``: step -> results served from the cache; a hit delivered twice
    counts once, and a map step with every item a hit is cached (``eng.steps``)."""
    from dagnats_nb.dag import load_workflow
    from dagnats_nb.dag.advance import advance, replay
    from dagnats_nb.dag.events import STEP_COMPLETED, WORKFLOW_STARTED, format_time

    defn = load_workflow(
        {
            "name": "m",
            "steps": [
                {"id": "a", "task": "a"},
                {"id": "m", "task": "sq", "type": "map", "depends_on": ["a"]},
            ],
        }
    )
    start = {"workflow_def": defn.to_dict(), "input": None, "def_hash": "h"}
    state = replay(defn, [Event(WORKFLOW_STARTED, "r", format_time(0), payload=start)])

    def done(step: str, output, index=None, hit=True) -> Event:
        e = Event(STEP_COMPLETED, "r", format_time(1), step_id=step, payload=output)
        e.map_index, e.cache = index, {"hit": hit, "key": "k"}
        return e

    state, _ = advance(defn, state, done("a", [1, 2, 3]))
    state, _ = advance(defn, state, done("a", [1, 2, 3]))  # delivered again
    for i in range(3):
        state, _ = advance(defn, state, done("m", i * i, index=i, hit=i != 2))
        state, _ = advance(defn, state, done("m", i * i, index=i, hit=i != 2))
    assert state.cached == {"a": 1, "m": 2}
    assert state.step("m").status == "completed"


def test_the_cache_limit_fits_the_store_budget():
    streams = resources.streams_for(max_store_bytes=10 * resources.GiB)
    assert resources.cache_limit(256 << 20, streams, 10 * resources.GiB) == 256 << 20
    small = resources.streams_for(max_store_bytes=64 << 20)
    assert resources.cache_limit(256 << 20, small, 64 << 20) == int((64 << 20) * 0.10)
    spec = resources.cache_bucket(60.0, 1 << 20, streams, None)
    cfg = spec.config()
    assert (cfg.max_bytes, cfg.max_age, cfg.discard.value) == (1 << 20, 60.0, "old")


# -- on an engine --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server():
    srv = ChatServer()
    yield srv
    srv.close()


@pytest.fixture(scope="module")
def eng(tmp_path_factory, server):
    e = dn.Engine.start(
        data_dir=tmp_path_factory.mktemp("cache") / "engine",
        ack_wait="2s",
        llm_provider="openai",
        llm_base_url=server.url,
        llm_api_key="sk-test",
        llm_model="test-model",
        llm_cache="true",
    )
    yield e
    e.stop()


def flow(name: str, task: str, config: dict | None = None, metadata: dict | None = None):
    step: dict = {"id": "s", "task": task}
    if config:
        step["config"] = config
    if metadata:
        step["metadata"] = metadata
    return {"name": name, "steps": [step]}


def cache_field(eng, run) -> dict | None:
    done = [e for e in eng.history(run.id) if e.type == "step.completed"]
    return done[-1].cache


def test_hits_and_misses_for_input_config_handler_and_version(eng):
    calls = Counter()

    def first(ctx):
        calls["first"] += 1
        return {"v": ctx.input, "cfg": ctx.metadata}

    eng.add_handler("c-gen", first, cache=True)
    wf = flow("c-gen", "c-gen", {"mode": "a"})
    r1 = eng.run(wf, input=1)
    r2 = eng.run(wf, input=1)
    assert r1.status == r2.status == "completed" and r2.output == r1.output
    assert calls["first"] == 1  # the hit made no call
    assert cache_field(eng, r1) == {"hit": False, "key": cache_field(eng, r2)["key"]}
    assert cache_field(eng, r2)["hit"] is True
    assert cache_field(eng, r2)["run_id"] == r1.id and cache_field(eng, r2)["step_id"] == "s"

    eng.run(wf, input=2)  # another input
    assert calls["first"] == 2
    eng.run(flow("c-gen", "c-gen", {"mode": "b"}), input=1)  # another config
    assert calls["first"] == 3
    eng.run(flow("c-gen", "c-gen", {"mode": "b"}, {"owner": "z"}), input=1)  # metadata
    assert calls["first"] == 4

    def first(ctx):  # noqa: F811 - the handler redefined: its code changed
        calls["first"] += 1
        return {"v": ctx.input, "cfg": ctx.metadata, "new": True}

    eng.add_handler("c-gen", first, cache=True)
    assert eng.run(wf, input=1).output["new"] is True and calls["first"] == 5
    eng.run(wf, input=1)
    assert calls["first"] == 5
    eng.add_handler("c-gen", first, cache=True, version="2")  # the same code, a new version
    eng.run(wf, input=1)
    assert calls["first"] == 6
    eng.run(wf, input=1)
    assert calls["first"] == 6


def test_step_metadata_turns_caching_on_and_off(eng):
    calls = Counter()

    @eng.task("c-meta")
    def plain(ctx):
        calls["n"] += 1
        return ctx.input

    for _ in range(2):
        eng.run(flow("c-meta", "c-meta"), input=1)
    assert calls["n"] == 2  # the handler does not ask: nothing cached
    for _ in range(2):
        eng.run(flow("c-meta-on", "c-meta", metadata={"cache": "true"}), input=1)
    assert calls["n"] == 3

    eng.add_handler("c-meta", plain, cache=True)
    for _ in range(2):
        run = eng.run(flow("c-meta-off", "c-meta", metadata={"cache": "false"}), input=1)
    assert calls["n"] == 5 and cache_field(eng, run) is None


def test_failures_and_continues_are_never_stored(eng):
    calls = Counter()

    @eng.task("c-fail", cache=True)
    def fail(ctx):
        calls["n"] += 1
        raise dn.Permanent("no")

    for _ in range(2):
        assert eng.run(flow("c-fail", "c-fail"), input=1).status == "failed"
    assert calls["n"] == 2


def test_history_and_steps_show_the_hit_and_the_handler_version(eng):
    @eng.task("c-hist", cache=True, version="h-7")
    def hist(ctx):
        return [ctx.input] * 3

    wf = {
        "name": "c-hist",
        "steps": [
            {"id": "a", "task": "c-hist"},
            {"id": "m", "task": "c-hist", "type": "map", "depends_on": ["a"]},
        ],
    }
    first, second = eng.run(wf, input="x"), eng.run(wf, input="x")
    steps = eng.steps(second.id).set_index("step_id")
    assert steps.loc["a", "cached"] and steps.loc["m", "cached"]
    assert not eng.steps(first.id)["cached"].any()
    events = eng.events(second.id)
    hits = events[events["type"] == "step.completed"]["cache"]
    assert len(hits) == 4 and all(c["hit"] is True for c in hits)
    versions = {e.handler_version for e in eng.history(first.id) if e.type == "step.completed"}
    assert versions == {"h-7"} and eng.workers["c-hist"].handler.version == "h-7"


def llm_flow(name: str, config: dict, metadata: dict | None = None) -> dict:
    return flow(name, "llm", {"prompt": "Say {input}", **config}, metadata)


def test_llm_hits_make_no_call_and_each_option_makes_a_miss(eng, server):
    server.reset()
    base = {"model": "m1", "temperature": 0}
    r1 = eng.run(llm_flow("c-llm", base), input="hi")
    r2 = eng.run(llm_flow("c-llm", base), input="hi")
    assert r1.status == r2.status == "completed" and len(server.requests) == 1
    assert r2.output == r1.output
    variants = [  # each a miss: prompt, model, max_tokens, input (temperature: the next test)
        ({**base, "prompt": "Tell {input}"}, "hi"),
        ({**base, "model": "m2"}, "hi"),
        ({**base, "max_tokens": 5}, "hi"),
        (base, "ho"),
    ]
    for i, (cfg, value) in enumerate(variants, start=2):
        eng.run(llm_flow("c-llm", cfg), input=value)
        assert len(server.requests) == i, cfg
    eng.run(llm_flow("c-llm-default", {"prompt": "Say {input}"}), input="hi")  # model: default
    assert len(server.requests) == 6 and server.requests[-1].body["model"] == "test-model"
    eng.run(llm_flow("c-llm-default", {"prompt": "Say {input}"}), input="hi")
    assert len(server.requests) == 6

    def saved_row():
        usage = eng.llm_usage(r2.id)
        return [row for _, row in usage.iterrows() if row["saved_calls"] == 1]

    (row,) = until(saved_row, what="the cached call's record")
    assert row["calls"] == 0 and row["saved_tokens"] == 11 + 5  # "Hello from the test server."
    assert eng.llm_usage(r1.id).iloc[0]["saved_calls"] == 0


def test_a_hot_llm_step_is_cached_only_when_it_asks(eng, server):
    server.reset()
    hot = {"temperature": 0.7}
    for _ in range(2):
        eng.run(llm_flow("c-hot", hot), input="hi")
    assert len(server.requests) == 2
    for _ in range(2):
        eng.run(llm_flow("c-hot-asks", hot, {"cache": "true"}), input="hi")
    assert len(server.requests) == 3
    changed = {"temperature": 0.9}  # another temperature: a miss
    eng.run(llm_flow("c-hot-asks", changed, {"cache": "true"}), input="hi")
    assert len(server.requests) == 4
    eng.run(llm_flow("c-hot-asks", changed, {"cache": "true"}), input="hi")
    assert len(server.requests) == 4


def test_stats_clear_and_the_cli(eng, capsys):
    calls = Counter()

    @eng.task("c-stats", cache=True)
    def slow(ctx):
        calls["n"] += 1
        time.sleep(0.2)
        return ctx.input

    eng.run(flow("c-stats", "c-stats"), input=1)
    before = eng.cache_stats()
    eng.run(flow("c-stats", "c-stats"), input=1)
    after = eng.cache_stats()
    assert calls["n"] == 1 and after["hits"] == before["hits"] + 1
    assert round(after["saved_s"] - before["saved_s"], 3) >= 0.2  # ms sums: no float slack
    assert after["entries"] >= 1 and 0 < after["bytes"] <= after["max_bytes"]
    assert after["ttl"] == 7 * 86400 and after["max_bytes"] == 256 << 20

    data_dir = str(eng.settings.data_dir)
    assert cli_main(["cache", "--data-dir", data_dir]) == 0
    out = capsys.readouterr().out
    assert f"hits          {after['hits']}" in out and "entries" in out
    assert cli_main(["cache", "clear", "--task", "c-stats", "--data-dir", data_dir]) == 0
    assert capsys.readouterr().out.strip() == "dropped 1 cached result of task c-stats"
    eng.run(flow("c-stats", "c-stats"), input=1)
    assert calls["n"] == 2  # cleared: it ran again
    assert eng.cache_clear("c-stats") == 1 and eng.cache_clear("c-stats") == 0
    assert cli_main(["cache", "--task", "x", "--data-dir", data_dir]) == 1
    assert capsys.readouterr().err.strip() == (
        "dagnats: cache: --task is for `dagnats cache clear --task T`"
    )
    with pytest.raises(dn.DagnatsError, match=r"cache_clear: 'a\.b' is not a task name"):
        eng.cache_clear("a.b")
    eng.run(flow("c-stats", "c-stats"), input=2)  # one entry at least, whatever ran before
    assert eng.cache_clear() >= 1 and eng.cache_stats()["entries"] == 0


def test_a_value_too_large_is_not_stored_and_the_run_goes_on(eng):
    calls = Counter()

    @eng.task("c-big", cache=True)
    def big(ctx):
        calls["n"] += 1
        return "x" * (1 << 20)  # over a KV message: the output goes to the payload store

    before = eng.cache_stats()["too_large"]
    for _ in range(2):
        run = eng.run(flow("c-big", "c-big"), input=1)
        assert run.status == "completed" and len(run.output) == 1 << 20
    assert calls["n"] == 2 and eng.cache_stats()["too_large"] == before + 2


def test_a_failing_cache_write_is_logged_once_and_the_run_goes_on(tmp_path, caplog):
    calls = Counter()

    def work(ctx):
        calls["n"] += 1
        return ctx.input

    with dn.Engine.start(
        data_dir=tmp_path / "engine", llm_enabled=False, handlers={"w": (work, 1, {"cache": True})}
    ) as eng:
        assert eng.run(flow("w", "w"), input=0).status == "completed"  # the bucket is found

        async def refuse_writes():  # the bucket refuses every value now
            nc = await nats.connect(eng.connect_url)
            js = nc.jetstream()
            cfg = (await js.stream_info("KV_task_cache")).config
            cfg.max_msg_size = 16
            await js.update_stream(cfg)
            await nc.close()

        asyncio.run(refuse_writes())
        with caplog.at_level(logging.DEBUG, logger="dagnats_nb.runtime.cache"):
            for i in (1, 2):
                run = eng.run(flow("w", "w"), input=i)
                assert run.status == "completed" and run.output == i
                assert cache_field(eng, run) is None
        said = [r for r in caplog.records if "cannot store step s in the step cache" in r.message]
        assert [r.levelno for r in said] == [logging.WARNING, logging.DEBUG]
        assert calls["n"] == 3 and eng.host.cache.counts["write_errors"] == 2


def test_a_cached_value_survives_a_restart(tmp_path):
    calls = Counter()

    def work(ctx):
        calls["n"] += 1
        return {"twice": ctx.input * 2}

    opts = {"data_dir": tmp_path / "engine", "llm_enabled": False}
    with dn.Engine.start(**opts) as eng:
        eng.add_handler("r", work, cache=True)
        assert eng.run(flow("r", "r"), input=4).output == {"twice": 8}
    with dn.Engine.start(**opts) as eng:
        eng.add_handler("r", work, cache=True)
        run = eng.run(flow("r", "r"), input=4)
        assert run.output == {"twice": 8} and calls["n"] == 1
        assert eng.steps(run.id)["cached"].all()
        stats = eng.cache_stats()
        assert (stats["stored"], stats["hits"]) == (1, 1)  # both processes' counters


def test_the_ttl_is_enforced(tmp_path):
    calls = Counter()

    def work(ctx):
        calls["n"] += 1
        return ctx.input

    with dn.Engine.start(data_dir=tmp_path / "engine", llm_enabled=False, cache_ttl="1s") as eng:
        eng.add_handler("t", work, cache=True)
        eng.run(flow("t", "t"), input=1)
        assert eng.cache_stats()["ttl"] == 1.0
        eng.run(flow("t", "t"), input=1)
        assert calls["n"] == 1
        until(lambda: eng.cache_stats()["entries"] == 0, timeout=10, what="the entry to expire")
        eng.run(flow("t", "t"), input=1)
        assert calls["n"] == 2


def test_the_size_cap_is_enforced_oldest_first(tmp_path):
    calls = Counter()

    def work(ctx):
        calls[ctx.input] += 1
        return "y" * 3000

    with dn.Engine.start(
        data_dir=tmp_path / "engine", llm_enabled=False, cache_max_bytes="64KiB"
    ) as eng:
        eng.add_handler("z", work, cache=True, concurrency=1)
        limit = eng.cache_stats()["max_bytes"]
        assert limit == 64 * 1024
        for i in range(40):  # 40 values of 3 KB: about twice the cap
            eng.run(flow("z", "z"), input=i)
            assert eng.cache_stats()["bytes"] <= limit
        assert eng.cache_stats()["entries"] < 40
        eng.run(flow("z", "z"), input=39)  # the newest is kept
        eng.run(flow("z", "z"), input=0)  # the oldest went
        assert (calls[39], calls[0]) == (1, 2)


def test_llm_cache_auto_is_on_for_a_notebook_engine_only(tmp_path):
    opts = {"llm_sim_latency_ms": 1, "llm_sim_tokens_per_s": 0}
    wf = llm_flow("c-auto", {})
    with dn.Engine.start(data_dir=tmp_path / "plain", **opts) as eng:
        assert eng.settings.llm_cache == "auto"
        eng.run(wf, input="a")
        assert cache_field(eng, eng.run(wf, input="a")) is None
    with dn.Engine.start(data_dir=tmp_path / "nb", notebook=True, **opts) as eng:
        eng.run(wf, input="a")
        assert cache_field(eng, eng.run(wf, input="a"))["hit"] is True
    with dn.Engine.start(data_dir=tmp_path / "off", notebook=True, llm_cache=False, **opts) as eng:
        eng.run(wf, input="a")
        assert cache_field(eng, eng.run(wf, input="a")) is None


def test_the_magic_and_dn_task_cache(tmp_path, capsys):
    calls = Counter()
    try:
        with notebook_shell() as ip:
            ip.run_line_magic("dagnats", f"start --data-dir {tmp_path / 'nb'}")

            @dn.task("c-magic", cache=True)
            def magic(ctx):
                calls["n"] += 1
                return ctx.input

            ip.run_cell_magic("dagnats", "workflow c-magic", "s\ns: task=c-magic")
            for _ in range(2):
                ip.run_line_magic("dagnats", "run c-magic --input 5")
            assert calls["n"] == 1
            stats = ip.run_line_magic("dagnats", "cache")
            assert stats.loc[0, "hits"] >= 1 and stats.loc[0, "entries"] == 1
            capsys.readouterr()
            ip.run_line_magic("dagnats", "cache clear --task c-magic")
            assert "dropped 1 cached result of task c-magic" in capsys.readouterr().out
            ip.run_line_magic("dagnats", "run c-magic --input 5")
            assert calls["n"] == 2
            ip.run_line_magic("dagnats", "stop")
    finally:
        default._handlers.pop("c-magic", None)
        default.stop_engine()


def test_a_worker_process_serves_from_the_cache(engine):
    calls = Counter()
    lock = threading.Lock()

    def triple(ctx):
        with lock:
            calls["n"] += 1
        return ctx.input * 3

    spec = {"c-wp": (triple, 2, {"cache": True, "version": "1"})}
    with WorkerProcess(engine.settings, spec, url=engine.url):
        wf = flow("c-wp", "c-wp")
        first, second = engine.run(wf, input=2), engine.run(wf, input=2)
        assert first.output == second.output == 6 and calls["n"] == 1
        assert cache_field(engine, second)["run_id"] == first.id
        versions = {e.handler_version for e in engine.history(first.id)}
        assert "1" in versions
    stats = engine.cache_stats()  # the worker put its counters when it stopped
    assert (stats["hits"], stats["stored"]) == (1, 1)


def _stream_config(url: str, name: str, create: dict | None = None) -> dict:
    """The stream's config as the server returns it, after creating it from ``create``."""
    import json

    async def go() -> dict:
        nc = await nats.connect(url)
        try:
            if create is not None:
                made = await nc.request(
                    f"$JS.API.STREAM.CREATE.{name}", json.dumps(create).encode(), timeout=5
                )
                assert "error" not in json.loads(made.data), made.data
            msg = await nc.request(f"$JS.API.STREAM.INFO.{name}", b"", timeout=5)
            return json.loads(msg.data)["config"]
        finally:
            await nc.close()

    return asyncio.run(go())


def test_someone_elses_cache_bucket_is_used_as_it_is_or_refused_in_one_line(tmp_path):
    from dagnats_nb.server.process import EmbeddedServer

    theirs = {
        "name": "KV_task_cache",
        "subjects": ["$KV.task_cache.>"],
        "retention": "limits",
        "storage": "file",
        "max_msgs_per_subject": 1,
        "max_bytes": 1 << 20,
        "allow_direct": True,
    }
    with EmbeddedServer(data_dir=tmp_path / "srv") as server:
        before = _stream_config(server.client_url, "KV_task_cache", theirs)
        opts = dict(nats_url=server.client_url, llm_enabled=False, cache_max_bytes="2MiB")
        with dn.Engine.start(data_dir=tmp_path / "e", **opts) as eng:
            assert eng.cache_stats()["max_bytes"] == 1 << 20  # adopted, not updated
        assert _stream_config(server.client_url, "KV_task_cache") == before
    with EmbeddedServer(data_dir=tmp_path / "srv2") as server:
        wrong = {**theirs, "subjects": ["cache.>"]}
        _stream_config(server.client_url, "KV_task_cache", wrong)
        with pytest.raises(dn.ConfigError) as info:
            dn.Engine.start(data_dir=tmp_path / "e2", nats_url=server.client_url)
        text = str(info.value)
        assert "\n" not in text and "stream KV_task_cache" in text and "another deployment" in text


def test_a_worker_module_keeps_its_handlers_cache_options(tmp_path):
    from dagnats_nb.facade.handler_modules import load_handlers

    module = tmp_path / "cached_tasks.py"
    module.write_text(
        "import dagnats_nb as dn\n\n"
        "@dn.task('cq', cache=True, version='v9')\n"
        "def cq(ctx):\n    return ctx.input\n\n"
        "@dn.task('plain')\n"
        "def plain(ctx):\n    return ctx.input\n"
    )
    try:
        found, _ = load_handlers(str(module), concurrency=3)
        assert found["cq"][1:] == (3, {"cache": True, "version": "v9"})
        assert found["plain"][1:] == (3,)
        wp = WorkerProcess(load_settings(data_dir=tmp_path / "d"), found)
        handler = wp.handlers["cq"]
        assert (handler.cache, handler.version, handler.concurrency) == (True, "v9", 3)
        assert not wp.handlers["plain"].cache and len(wp.handlers["plain"].version) == 16
    finally:
        for name in ("cq", "plain"):
            default._handlers.pop(name, None)


def test_the_llm_key_covers_the_resolved_model_provider_and_endpoint():
    from dagnats_nb.dag import load_workflow
    from dagnats_nb.llm import LLMService

    step = load_workflow(llm_flow("k", {})).step("s")

    def scope(cache_on=True, **settings):
        svc = LLMService(load_settings(**settings), None, None, "w", None)
        svc.cache_on = cache_on
        return svc.cache_scope(step)

    on, extra = scope(llm_model="a")
    assert on and extra["model"] == "a" and extra["provider"] == "simulated"
    assert extra["prompt"] == "Say {input}" and extra["sim_seed"] == 0
    assert scope(llm_model="b")[1]["model"] == "b"
    assert scope(llm_sim_seed=3)[1] != extra
    openai = scope(llm_base_url="http://127.0.0.1:9/v1")[1]
    assert openai["provider"] == "openai" and openai["base_url"] == "http://127.0.0.1:9/v1"
    assert scope(cache_on=False)[0] is False
    hot = load_workflow(llm_flow("k", {"temperature": 0.5})).step("s")
    svc = LLMService(load_settings(), None, None, "w", None)
    svc.cache_on = True
    assert svc.cache_scope(hot)[0] is False


def test_without_the_bucket_a_worker_process_runs_every_step(engine, caplog):
    calls = Counter()

    def twice(ctx):
        calls["n"] += 1
        return ctx.input * 2

    async def drop_bucket():
        nc = await nats.connect(engine.connect_url)
        await nc.jetstream().delete_stream("KV_task_cache")
        await nc.close()

    asyncio.run(drop_bucket())  # e.g. an engine of an older version made the streams
    spec = {"c-nob": (twice, 1, {"cache": True})}
    with (
        caplog.at_level(logging.WARNING, logger="dagnats_nb.runtime.cache"),
        WorkerProcess(engine.settings, spec, url=engine.url),
    ):
        for _ in range(2):
            run = engine.run(flow("c-nob", "c-nob"), input=3)
            assert run.output == 6 and cache_field(engine, run) is None
    assert calls["n"] == 2
    said = [r.message for r in caplog.records if "not cached here" in r.message]
    assert said == ["steps are not cached here (task_cache KV: no such bucket)"]

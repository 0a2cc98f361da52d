"""The facade's public API from any thread and any event loop.

- Reads are snapshots taken on the engine loop: read from many threads while others start
  runs, they never see a structure the engine thread is changing, and what they see only
  moves forward.
- Every public coroutine works from a foreign event loop (``asyncio.run`` in the test
  thread, and one in another thread); each is bounded, so a regression fails, not hangs.
- Every public I/O method of Engine (and Run's wait/cancel/output) has an ``*_async`` twin
  made from the same private coroutine.
- Run and TokenStream need only a narrow handle, not the engine.
"""

from __future__ import annotations

import asyncio
import inspect
import re
import sys
import threading
from typing import Any

import nats
import pytest
from conftest import until

import dagnats_nb as dn
from dagnats_nb.facade import Engine, Run
from dagnats_nb.facade.tokens import TokenStream
from dagnats_nb.facade.worker_process import WorkerProcess
from dagnats_nb.runtime import eviction
from dagnats_nb.wire import protocol

BOUND = 30.0  # seconds any one awaited call may take before the test fails

RUNS_PER_STARTER = 100
STATUS_RANK = {"pending": 0, "running": 1, "completed": 2}


def chain(name: str, task: str = "double") -> dict:
    return {
        "name": name,
        "steps": [
            {"id": "a", "task": task},
            {"id": "b", "task": task, "depends_on": ["a"]},
        ],
    }


def one_step(name: str, task: str) -> dict:
    return {"name": name, "steps": [{"id": "f", "task": task}]}


def add_handlers(eng: Engine, release: threading.Event) -> None:
    @eng.task("double")
    async def double(ctx):
        return {"n": ctx.input["n"] * 2}

    @eng.task("fail")
    def fail(ctx):
        raise dn.Permanent("no")

    @eng.task("hold")
    async def hold(ctx):
        while not release.is_set():
            await asyncio.sleep(0.02)
        return {}


# -- reads are snapshots ---------------------------------------------------------------


@pytest.fixture
def many_switches():
    """Threads switch every 10 us instead of 5 ms: a read racing the engine thread shows."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    yield
    sys.setswitchinterval(before)


def test_reads_from_many_threads_while_other_threads_start_runs(engine, many_switches):
    add_handlers(engine, threading.Event())
    engine.register(chain("chain"))
    started: list[str] = []
    lock = threading.Lock()
    errors: list[BaseException] = []
    calls: dict[str, int] = {}
    starting = threading.Event()
    starting.set()

    def starter(k: int) -> None:
        try:
            for i in range(RUNS_PER_STARTER):
                run = engine.start_run("chain", {"n": k * 1000 + i})
                with lock:
                    started.append(run.id)
        except BaseException as exc:
            errors.append(exc)

    def recent() -> list[str]:
        with lock:
            return started[-8:]

    def reader(kind: str) -> None:
        last = 0  # rows of runs(), or runs counted by sizing
        ranks: dict[str, int] = {}
        n = 0
        try:
            while starting.is_set() or n < 100:
                n += 1
                if kind == "runs":
                    df = engine.runs()
                    assert df["run_id"].is_unique
                    assert len(df) >= last, (len(df), last)
                    last = len(df)
                elif kind == "sizing":
                    report = engine.sizing(runs_per_day=100)
                    found = re.match(r"measured \((\d+) runs", report.calibration.source)
                    counted = int(found.group(1)) if found else 0
                    # ended runs leave memory into a bounded sample of each workflow's
                    assert counted >= min(last, eviction.SAMPLE), (counted, last)
                    last = counted
                elif kind == "steps":
                    for run_id in recent():
                        try:
                            df = engine.steps(run_id)
                        except dn.RunError:  # not yet seen by the orchestrator
                            continue
                        assert list(df["step_id"]) == ["a", "b"]
                else:  # run_state and Run.status: a run's status never goes back
                    for run_id in recent():
                        summary = engine.run_state(run_id)
                        status = summary["status"] if summary else "pending"
                        if kind == "status":
                            status = Run(engine, run_id, "chain").status
                        rank = STATUS_RANK[status]
                        assert rank >= ranks.get(run_id, 0), (run_id, status)
                        ranks[run_id] = rank
        except BaseException as exc:
            errors.append(exc)
        calls[kind] = n

    kinds = ["runs", "runs", "sizing", "steps", "run_state", "status"]
    readers = [threading.Thread(target=reader, args=(k,)) for k in kinds]
    starters = [threading.Thread(target=starter, args=(k,)) for k in range(3)]
    for t in readers + starters:
        t.start()
    for t in starters:
        t.join(120)
    starting.clear()
    for t in readers:
        t.join(120)
    assert not any(t.is_alive() for t in readers + starters)
    assert not errors, errors[:3]
    assert len(started) == 3 * RUNS_PER_STARTER and all(n >= 100 for n in calls.values()), calls

    def all_listed_and_done() -> bool:
        df = engine.runs().set_index("run_id")
        return set(started) <= set(df.index) and (df.loc[started, "status"] == "completed").all()

    until(all_listed_and_done, timeout=60, what="every started run to be listed, completed")
    outputs = {engine.get_run(r).output["n"] for r in started[:5]}
    assert all(n % 4 == 0 for n in outputs)


# -- every public coroutine from a foreign loop ----------------------------------------


async def eventually(condition, what: str) -> Any:
    """``until`` for a coroutine condition (None: not yet), on the running loop."""
    for _ in range(500):
        value = await condition()
        if value is not None:
            return value
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def public_coroutines(cls: type) -> set[str]:
    return {
        name
        for name, member in inspect.getmembers(cls)
        if not name.startswith("_") and inspect.iscoroutinefunction(member)
    }


WAIT = {
    "event": "go",
    "match": {"left": "k", "op": "eq", "right": "input.k"},
    "timeout": "1m",
}


async def scenario(eng: Engine, tmp_path, tag: str, release: threading.Event) -> set[str]:
    """Await every public coroutine of Engine, Run and WorkerProcess on the running loop
    (not the engine's), checking what each returns; the names called."""
    called: set[str] = set()

    async def call(obj: Any, name: str, *args: Any, **kwargs: Any) -> Any:
        called.add(name)
        return await asyncio.wait_for(getattr(obj, name)(*args, **kwargs), BOUND)

    # handlers and workflows
    async def triple(ctx):
        return {"n": ctx.input["n"] * 3}

    assert await call(eng, "add_handler_async", f"triple-{tag}", triple) is None
    defn = await call(eng, "register_async", chain(f"chain-{tag}", f"triple-{tag}"))
    assert defn.name == f"chain-{tag}"
    assert f"chain-{tag}" in await call(eng, "workflows_async")
    assert [s.id for s in (await call(eng, "workflow_async", f"chain-{tag}")).steps] == ["a", "b"]
    assert await call(eng, "unserved_tasks_async", f"chain-{tag}") == []  # its handler runs here

    # runs: start, wait, read
    run = await call(eng, "run_async", f"chain-{tag}", {"n": 1}, timeout=20)
    assert isinstance(run, Run) and await call(run, "output_async") == {"n": 9}
    started = await call(eng, "start_run_async", f"chain-{tag}", {"n": 2})
    assert await call(eng, "wait_run_async", started.id, 20) == "completed"
    assert await call(started, "wait_async", 20) is started
    summary = await call(eng, "run_state_async", run.id)
    assert summary["status"] == "completed" and summary["state"].run_id == run.id
    assert (await call(eng, "get_run_async", run.id)).workflow == f"chain-{tag}"
    assert await call(eng, "run_output_async", started.id) == {"n": 18}
    history = await call(eng, "history_async", run.id)
    assert history[0].type == protocol.WORKFLOW_STARTED
    assert history[-1].type == protocol.WORKFLOW_COMPLETED
    assert len(await call(eng, "history_async", run.id, limit=1)) == 1
    assert len(await call(eng, "events_async", run.id)) == len(history)
    steps = await call(eng, "steps_async", run.id)
    assert list(steps["status"]) == ["completed", "completed"]
    assert await call(eng, "step_output_async", run.id, "a") == {"n": 3}
    assert {run.id, started.id} <= set((await call(eng, "runs_async"))["run_id"])
    forked = await call(eng, "fork_async", run.id, "b")
    assert (
        forked.reused == ["a"] and await call(eng, "wait_run_async", forked.id, 20) == "completed"
    )
    assert await call(eng, "run_output_async", forked.id) == {"n": 9}
    again = await call(eng, "rerun_async", run.id, {"n": 2})  # a new input: every step
    assert again.reused == [] and await call(eng, "wait_run_async", again.id, 20) == "completed"
    table = await call(eng, "compare_async", run.id, again.id)
    assert list(table["changed"]) == [True, True]
    assert "step a" in await call(eng, "diff_async", run.id, again.id, "a")
    assert (await call(eng, "comparison_async", run.id, forked.id)).diffs == {}

    # watching, tokens (a TokenStream iterated on this loop)
    states: list = []
    unwatch = await call(eng, "watch_async", run.id, states.append)
    assert states and states[0].status == "completed"
    unwatch()
    chunks: list[dict] = []
    unsubscribe = await call(eng, "subscribe_tokens_async", run.id, "a", chunks.append)
    nc = await nats.connect(eng.connect_url)
    try:
        subject = protocol.stream_subject(run.id, "a")
        await nc.publish(subject, b'{"delta": "hi", "seq": 0, "attempt": 1}')
        await nc.flush()

        async def arrived():
            return chunks or None

        await eventually(arrived, "the chunk")
    finally:
        await nc.close()
    unsubscribe()
    assert chunks == [{"delta": "hi", "seq": 0, "attempt": 1}]
    tokens = [t async for t in run.stream("a", timeout=5)]  # the step is over: ends at once
    assert tokens == []

    # steps that wait for the world: an approval, a signal, an event
    waits = {
        "name": f"waits-{tag}",
        "steps": [
            {"id": "ok", "type": "approval", "config": {"subject": "s", "timeout": "1m"}},
            {"id": "no", "type": "approval", "config": {"subject": "s", "timeout": "1m"}},
            {"id": "sig", "type": "wait_for_event", "depends_on": ["ok"], "config": WAIT},
            {"id": "evt", "type": "wait_for_event", "depends_on": ["sig"], "config": WAIT},
        ],
    }
    gated = await call(eng, "start_run_async", waits, {"k": tag})
    assert (await call(eng, "approve_async", gated.id, "ok", "yes", wait=20))["approved"]
    await call(eng, "signal_async", gated.id, "go", {"k": tag})
    assert await call(eng, "publish_event_async", "go", {"k": tag}) >= 1
    decision = await call(eng, "reject_async", gated.id, "no", "too soon", by="ada", wait=20)
    assert decision == {**decision, "approved": False, "by": "ada"}
    assert await call(eng, "wait_run_async", gated.id, 20) == "failed"
    # triggers: one cron trigger, switched off and on
    cron = {"id": f"tick-{tag}", "enabled": True, "cron": {"expression": "0 3 * * *"}}
    await call(eng, "register_async", {**one_step(f"ticks-{tag}", "double"), "triggers": [cron]})
    table = await call(eng, "triggers_async")
    assert f"tick-{tag}" in set(table["id"])
    assert (await call(eng, "disable_trigger_async", f"tick-{tag}"))["enabled"] is False
    assert (await call(eng, "enable_trigger_async", f"tick-{tag}"))["enabled"] is True

    # cancelling
    held = await call(eng, "start_run_async", one_step(f"hold-{tag}", "hold"))
    await call(eng, "cancel_run_async", held.id, "stop it")
    assert await call(eng, "wait_run_async", held.id, 20) == "cancelled"
    held2 = await call(eng, "start_run_async", f"hold-{tag}")
    await call(held2, "cancel_async")
    assert await call(eng, "wait_run_async", held2.id, 20) == "cancelled"
    with pytest.raises(dn.RunTimeout, match=r"still (pending|running) after 0.2s"):
        held3 = await call(eng, "start_run_async", f"hold-{tag}")
        await call(eng, "wait_run_async", held3.id, 0.2)
    await call(held3, "cancel_async")

    # dead letters and llm usage
    failed = await call(eng, "run_async", one_step(f"fail-{tag}", "fail"))
    assert failed.status == "failed"

    async def letters():
        df = await call(eng, "dlq_async", run=failed.id)
        return df if len(df) else None

    assert list((await eventually(letters, "the dead letter"))["step_id"]) == ["f"]
    assert failed.id in set((await call(eng, "dead_letters_async", 100))["run_id"])
    replayed = await call(eng, "dlq_replay_async", run=failed.id, dry_run=True)
    assert [r["run_id"] for r in replayed] == [failed.id]
    assert len(await call(eng, "llm_usage_async")) == 0
    assert len(await call(eng, "llm_calls_async")) == 0
    stats = await call(eng, "cache_stats_async")  # the step cache
    assert stats["max_bytes"] > 0 and stats["write_errors"] == 0
    assert await call(eng, "cache_clear_async", "double") == 0
    pruned = await call(eng, "prune_async")  # retention: nothing ended 720h ago
    assert pruned["records_pruned"] == 0 and pruned["max_age"] == 720 * 3600

    # observing
    streams = set((await call(eng, "stream_stats_async"))["stream"])
    assert protocol.HISTORY_STREAM in streams
    assert len(await call(eng, "consumer_lag_async")) > 0
    assert len(await call(eng, "kv_stats_async")) > 0
    assert len(await call(eng, "account_async")) > 0
    assert len(await call(eng, "monitor_async", "varz")) > 0
    report = await call(eng, "sizing_async", f"chain-{tag}", runs_per_day=10)
    assert report.calibration.source.startswith("measured")
    assert "level" in (await call(eng, "health_async")).columns
    status = await call(eng, "status_async")
    # ended runs leave memory: the runs held are the active ones and a few just ended
    assert status["connected"] and status["orchestrator"]["last_seq"] >= 8
    sampler = await call(eng, "sample_async", 0.05, 100)

    async def sampled():
        return len(sampler.frame()) or None

    await eventually(sampled, "a sample")
    await call(eng, "stop_sampling_async")

    # attached engine, another embedded engine, a worker process
    attached = await call(Engine, "connect_async", eng.settings.data_dir)
    try:
        assert run.id in set((await call(attached, "runs_async"))["run_id"])
        assert (await call(attached, "run_state_async", run.id))["status"] == "completed"
        assert await call(attached, "run_output_async", run.id) == {"n": 9}
        assert list((await call(attached, "steps_async", run.id))["step_id"]) == ["a", "b"]
    finally:
        await call(attached, "stop_async")
    other = await call(Engine, "start_async", data_dir=tmp_path / f"other-{tag}")
    try:
        assert (await call(other, "status_async"))["connected"]
    finally:
        await call(other, "stop_async")
    worker = WorkerProcess(eng.settings, {f"wp-{tag}": (triple, None)}, url=eng.url)
    assert await call(worker, "start_async") is worker
    await call(worker, "stop_async", 0)

    # backup, restore, pause, resume: the engine runs again afterwards
    df = await call(eng, "backup_async", tmp_path / f"bk-{tag}", streams=["KV_workflow_defs"])
    assert list(df["stream"]) == ["KV_workflow_defs"]
    back = await call(eng, "restore_async", tmp_path / f"bk-{tag}", True, ["KV_workflow_defs"])
    assert list(back["stream"]) == ["KV_workflow_defs"]
    await call(eng, "pause_async")
    await call(eng, "resume_async")
    again = await call(eng, "run_async", f"chain-{tag}", {"n": 5}, timeout=20)
    assert await call(again, "output_async") == {"n": 45}
    return called


def test_every_public_coroutine_works_from_foreign_event_loops(tmp_path):
    release = threading.Event()
    with dn.Engine.start(data_dir=tmp_path / "engine", ack_wait="2s", monitor_port=0) as eng:
        add_handlers(eng, release)
        try:
            # this thread's own loop (as a script's asyncio.run, or Jupyter's)
            called = asyncio.run(scenario(eng, tmp_path, "main", release))
            # a second loop, in another thread
            out: dict[str, Any] = {}

            def in_thread() -> None:
                try:
                    out["called"] = asyncio.run(scenario(eng, tmp_path, "thread", release))
                except BaseException as exc:
                    out["error"] = exc

            t = threading.Thread(target=in_thread)
            t.start()
            t.join(300)
            assert not t.is_alive(), "the scenario on a second loop hung"
            if "error" in out:
                raise out["error"]
            assert out["called"] == called
        finally:
            release.set()
    # every public coroutine was awaited (a new one must be added to the scenario)
    for cls in (Engine, Run, WorkerProcess):
        missing = public_coroutines(cls) - called
        assert not missing, f"{cls.__name__}: not exercised from a foreign loop: {missing}"


# -- twins -----------------------------------------------------------------------------

TWINLESS = {
    "task": "a decorator: add_handler has the twin",
    "add_extension": "records an extension factory: no I/O",
}
THREAD_TWINS = {"start", "connect", "stop"}  # their twins run them in a thread


def test_every_public_engine_method_has_an_async_twin_made_from_one_coroutine():
    checked = []
    for name, member in inspect.getmembers(Engine):
        if name.startswith("_") or name.endswith("_async") or name in TWINLESS:
            continue
        if isinstance(inspect.getattr_static(Engine, name), property) or not callable(member):
            continue
        twin = getattr(Engine, f"{name}_async", None)
        assert twin is not None, f"Engine.{name} has no {name}_async twin"
        assert inspect.iscoroutinefunction(twin), name
        assert (member.__doc__ or "").strip(), f"Engine.{name} has no docstring"
        if name not in THREAD_TWINS:
            op = member.operation  # both made by twins() from one private coroutine
            assert twin.operation is op and op.__name__ == f"_{name}", name
            assert "awaitable twin" in twin.__doc__, name
            assert inspect.signature(twin) == inspect.signature(member), name
        checked.append(name)
    assert {"runs", "sizing", "history", "wait_run", "cancel_run", "backup"} <= set(checked)
    for name in ("wait", "cancel", "output"):
        assert inspect.iscoroutinefunction(getattr(Run, f"{name}_async")), name


def test_a_blocking_method_on_the_engine_loop_is_a_clear_error(engine):
    errors: list[str] = []

    def on_loop(state) -> None:
        try:
            engine.runs()
        except dn.DagnatsError as exc:
            errors.append(str(exc))

    @engine.task("double")
    async def double(ctx):
        return {"n": ctx.input["n"] * 2}

    run = engine.run(chain("chain"), {"n": 1}, timeout=20)
    engine.watch(run.id, on_loop)()
    assert errors and "use its *_async twin" in errors[0]


# -- narrow handles --------------------------------------------------------------------


class FakeSource:
    """A TokenSource and RunHandle without an engine: chunks arrive from another thread."""

    def __init__(self, chunks: list[dict], status: str = "running") -> None:
        self.chunks, self.status = chunks, status
        self.log: list[tuple] = []
        self.running = True

    def run_state(self, run_id: str) -> dict[str, Any]:
        return {"status": self.status}

    async def run_state_async(self, run_id: str) -> dict[str, Any]:
        return self.run_state(run_id)

    def subscribe_tokens(self, run_id: str, step_id: str, callback) -> Any:
        self.log.append(("subscribe", run_id, step_id))
        threading.Thread(target=lambda: [callback(c) for c in self.chunks]).start()
        return lambda: self.log.append(("unsubscribe", run_id, step_id))

    async def subscribe_tokens_async(self, run_id: str, step_id: str, callback) -> Any:
        return self.subscribe_tokens(run_id, step_id, callback)

    def run_output(self, run_id: str) -> Any:
        return {"out": run_id}

    async def run_output_async(self, run_id: str) -> Any:
        return self.run_output(run_id)

    def wait_run(self, run_id: str, timeout: float | None = 60) -> str:
        self.log.append(("wait", run_id, timeout))
        return "completed"

    async def wait_run_async(self, run_id: str, timeout: float | None = 60) -> str:
        return self.wait_run(run_id, timeout)

    def cancel_run(self, run_id: str, reason: str = "cancelled by user") -> None:
        self.log.append(("cancel", run_id, reason))

    async def cancel_run_async(self, run_id: str, reason: str = "cancelled by user") -> None:
        self.cancel_run(run_id, reason)


def test_token_stream_needs_only_a_token_source():
    chunks = [
        {"delta": "a", "seq": 0, "attempt": 1, "map_index": 0},
        {"delta": "x", "seq": 0, "attempt": 1, "map_index": 1},
        {"done": True, "attempt": 1, "error": "boom", "map_index": 0},  # a retry follows
        {"delta": "b", "seq": 0, "attempt": 2, "map_index": 0},
        {"done": True, "attempt": 2, "finish_reason": "stop", "map_index": 0},
        {"delta": "late", "seq": 1, "attempt": 2, "map_index": 0},
    ]
    source = FakeSource(chunks)
    assert list(TokenStream(source, "r1", "s", map_index=0, timeout=5)) == ["a", "b"]
    assert source.log == [("subscribe", "r1", "s"), ("unsubscribe", "r1", "s")]

    async def collect() -> list[str]:
        return [t async for t in TokenStream(source, "r2", "s", map_index=1, timeout=0.5)]

    assert asyncio.run(collect()) == ["x"]  # instance 1 never ends well: the timeout ends it
    finished = FakeSource([], status="completed")
    assert list(TokenStream(finished, "r3", "s", timeout=5)) == []  # the run is over


def test_run_needs_only_a_run_handle():
    handle = FakeSource([])
    run = Run(handle, "r1", "wf")
    assert run.wait(5) is run and run.status == "running" and run.output == {"out": "r1"}
    run.cancel("enough")

    async def both() -> Any:
        await run.wait_async(7)
        await run.cancel_async()
        return await run.output_async()

    assert asyncio.run(both()) == {"out": "r1"}
    assert handle.log == [
        ("wait", "r1", 5),
        ("cancel", "r1", "enough"),
        ("wait", "r1", 7),
        ("cancel", "r1", "cancelled by user"),
    ]


def test_a_finished_run_still_tells_its_end_after_the_engine_stopped(tmp_path):
    """A stopped engine can be asked nothing, yet a Run that was seen to end keeps telling
    how it ended (its repr in a notebook, a script reading it after ``with``)."""
    with dn.Engine.start(data_dir=tmp_path / "e", llm_enabled=False) as eng:

        @eng.task("one")
        def one(ctx):
            return 1

        @eng.task("bad")
        def bad(ctx):
            raise dn.Permanent("no")

        eng.register({"name": "ok", "steps": [{"id": "one", "task": "one"}]})
        eng.register({"name": "ko", "steps": [{"id": "bad", "task": "bad"}]})
        waited = eng.start_run("ok").wait(20)  # only waited on: its status is known
        failed = eng.run("ko", timeout=20)
        assert failed.status == "failed" and "no" in failed.error  # read while running
        running = eng.start_run("ok")
    assert waited.status == "completed" and repr(waited).endswith("completed>")
    assert failed.status == "failed" and "no" in failed.error
    with pytest.raises(dn.DagnatsError, match="the engine is stopped"):
        _ = running.status  # never seen ending: nothing to tell

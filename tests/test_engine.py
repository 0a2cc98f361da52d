"""The engine through its public Python API, on a real embedded nats-server."""

from __future__ import annotations

import asyncio
import json
import threading
import time

import pytest
from conftest import until
from nats.js.errors import KeyNotFoundError

import dagnats_nb as dn
from dagnats_nb.wire import protocol


def test_hello_world_conformance_file_runs_end_to_end(engine, conformance):
    seen: list = []

    @engine.task("greet")
    async def greet(ctx):
        seen.append(
            (
                ctx.run_id,
                ctx.step_id,
                ctx.workflow_name,
                ctx.attempt,
                ctx.iteration,
                ctx.map_index,
                ctx.def_hash,
                ctx.worker_id,
            )
        )
        ctx.heartbeat()
        return {"msg": "hello " + ctx.input["name"]}

    @engine.task("uppercase")
    def uppercase(ctx):
        return {"msg": ctx.input["msg"].upper()}

    engine.register(conformance / "hello-world.json")
    run = engine.run("hello-world", input={"name": "ada"}, timeout=20)

    assert run.status == "completed"
    assert run.output == {"msg": "HELLO ADA"}
    assert run.error is None
    defn_hash = engine.run_state(run.id)["state"].def_hash
    assert seen == [(run.id, "greet", "hello-world", 1, 0, None, defn_hash, engine.worker_id)]
    assert len(defn_hash) == 16
    runs = engine.runs()
    assert {"run_id", "workflow", "status", "started_at", "ended_at", "error"} <= set(runs.columns)
    row = runs.set_index("run_id").loc[run.id]
    assert row["workflow"] == "hello-world" and row["status"] == "completed"
    events = engine.events(run.id)
    assert {"seq", "time", "type", "step_id", "attempt", "worker_id", "payload"} <= set(
        events.columns
    )
    types = list(events["type"])
    assert types[0] == "workflow.started" and types[-1] == "workflow.completed"
    assert types.count("step.completed") == 2
    assert list(events["seq"]) == sorted(events["seq"])


def test_retry_errors_conformance_file_honours_the_exponential_delays(engine, conformance):
    attempts: list[float] = []

    @engine.task("fetch")
    def fetch(ctx):
        attempts.append(time.monotonic())
        if len(attempts) <= 2:
            raise ConnectionError(f"flaky upstream, attempt {ctx.attempt}")
        return {"rows": 3}

    @engine.task("process")
    def process(ctx):
        return {"processed": ctx.input["rows"]}

    @engine.task("report-error")
    def report_error(ctx):
        raise AssertionError("on_failure must not run when fetch succeeds")

    engine.register(conformance / "retry-errors.json")
    run = engine.run("retry-errors", timeout=30)

    assert run.status == "completed", run.error
    assert run.output == {"processed": 3}
    assert len(attempts) == 3
    # initial_delay 1s, multiplier 2: at least 1 s then 2 s between attempts.
    assert attempts[1] - attempts[0] >= 1.0
    assert attempts[2] - attempts[1] >= 2.0
    steps = engine.steps(run.id).set_index("step_id")
    assert steps.loc["fetch", "attempt"] == 3
    assert steps.loc["report-error", "status"] == "pending"
    failed = engine.events(run.id).query("type == 'step.failed'")
    assert list(failed["attempt"]) == [1, 2]
    assert "flaky upstream, attempt 1" in failed.iloc[0]["payload"]["error"]


def dead_letters(engine) -> list[dict]:
    async def read():
        js = engine._js
        info = await js.stream_info(protocol.DEAD_STREAM)
        out = []
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            msg = await js.get_msg(protocol.DEAD_STREAM, seq)
            h = msg.headers or {}
            out.append(  # Go's form: the task as body, the failure in Dagnats-Dlq-* headers
                {
                    "subject": msg.subject,
                    "task": json.loads(msg.data),
                    "error": h.get(protocol.DLQ_ERROR),
                    "attempts": int(h.get(protocol.DLQ_ATTEMPTS, 0)),
                    "headers": h,
                }
            )
        return out

    return engine._call(read())


def test_exhausted_retries_dead_letter_the_task_and_run_on_failure(engine, conformance):
    calls: list[int] = []
    handled: list[dict] = []

    @engine.task("fetch")
    def fetch(ctx):
        calls.append(ctx.attempt)
        raise ValueError("upstream says no")

    @engine.task("process")
    def process(ctx):
        raise AssertionError("process must not run")

    @engine.task("report-error")
    def report_error(ctx):
        handled.append(ctx.input)
        return {"reported": True}

    engine.register(conformance / "retry-errors.json")
    run = engine.start_run("retry-errors", input={"source": "s3://bucket/a"})
    run.wait(timeout=30)

    assert calls == [1, 2, 3, 4]  # max_attempts 3 = three retries after the first attempt
    assert run.status == "failed"
    assert "step 'fetch' failed: ValueError: upstream says no" in run.error
    assert handled == [
        {
            "step_id": "fetch",
            "error": "ValueError: upstream says no",
            "input": {"source": "s3://bucket/a"},
        }
    ]
    letters = dead_letters(engine)
    frame = engine.dead_letters()
    assert list(frame["step_id"]) == ["fetch"] and list(frame["attempts"]) == [4]
    assert list(frame["run_id"]) == [run.id] and frame["error"][0] == "ValueError: upstream says no"
    assert len(letters) == 1
    letter = letters[0]
    assert letter["subject"] == f"dead.fetch.{run.id}.fetch"
    assert letter["headers"]["Nats-Msg-Id"] == f"dlq:{run.id}:fetch:4"
    assert letter["headers"][protocol.DLQ_TASK_SUBJECT] == f"task.fetch.{run.id}"
    assert letter["attempts"] == 4
    assert letter["error"] == "ValueError: upstream says no"
    assert letter["task"]["input"] == {"source": "s3://bucket/a"}
    assert letter["task"]["step_id"] == "fetch"
    steps = engine.steps(run.id).set_index("step_id")
    assert steps.loc["report-error", "status"] == "completed"
    assert steps.loc["process", "status"] == "pending"


def test_permanent_failure_skips_retries(engine):
    calls = []

    @engine.task("charge")
    def charge(ctx):
        calls.append(ctx.attempt)
        raise dn.Permanent("card declined")

    wf = {
        "name": "pay",
        "default_retry": {"max_attempts": 5, "strategy": "fixed", "initial_delay": "10ms"},
        "steps": [{"id": "charge", "task": "charge"}],
    }
    run = engine.run(wf, timeout=20)
    assert run.status == "failed"
    assert calls == [1]
    assert "Permanent: card declined" in run.error
    assert dead_letters(engine)[0]["attempts"] == 1


def test_retry_after_asks_for_an_exact_delay(engine):
    seen: list[float] = []

    @engine.task("call")
    def call(ctx):
        seen.append(time.monotonic())
        if ctx.attempt == 1:
            raise dn.RetryAfter(0.7, "429 too many requests")
        return "ok"

    wf = {
        "name": "throttled",
        "steps": [
            {
                "id": "call",
                "task": "call",
                "retry": {"max_attempts": 2, "strategy": "fixed", "initial_delay": "10ms"},
            }
        ],
    }
    run = engine.run(wf, timeout=20)
    assert run.status == "completed" and run.output == "ok"
    assert seen[1] - seen[0] >= 0.7
    failed = engine.events(run.id).query("type == 'step.failed'").iloc[0]["payload"]
    assert failed["failure_type"] == "retry_after" and failed["retry_after_ms"] == 700


def test_skip_if_skips_and_downstream_steps_still_run(engine):
    @engine.task("check")
    def check(ctx):
        return {"status": "ok", "count": 3}

    @engine.task("fix")
    def fix(ctx):
        raise AssertionError("fix must be skipped")

    @engine.task("notify")
    def notify(ctx):
        return {"seen": ctx.input}

    wf = {
        "name": "skipper",
        "steps": [
            {"id": "check", "task": "check"},
            {
                "id": "fix",
                "task": "fix",
                "depends_on": ["check"],
                "skip_if": {"step_id": "check", "field": "status", "op": "==", "value": "ok"},
            },
            {"id": "notify", "task": "notify", "depends_on": ["check", "fix"]},
        ],
    }
    run = engine.run(wf, timeout=20)
    assert run.status == "completed", run.error
    assert run.output == {"seen": {"check": {"status": "ok", "count": 3}, "fix": None}}
    steps = engine.steps(run.id).set_index("step_id")
    assert steps.loc["fix", "status"] == "skipped"
    assert "step.skipped" in set(engine.events(run.id)["type"])


def test_map_over_1000_items_returns_outputs_in_order(engine):
    @engine.task("numbers")
    def numbers(ctx):
        return list(range(1000))

    @engine.task("square", concurrency=64)
    async def square(ctx):
        await asyncio.sleep(0.001 * (ctx.input % 3))  # finish out of order
        return ctx.input * ctx.input

    received: list = []

    @engine.task("total")
    def total(ctx):
        received.append(ctx.input)
        return {"n": len(ctx.input), "first": ctx.input[:3], "last": ctx.input[-1]}

    wf = {
        "name": "squares",
        "steps": [
            {"id": "numbers", "task": "numbers"},
            {
                "id": "square",
                "task": "square",
                "type": "map",
                "depends_on": ["numbers"],
                "config": {"max_items": 1000},
            },
            {"id": "total", "task": "total", "depends_on": ["square"]},
        ],
    }
    run = engine.run(wf, timeout=120)
    assert run.status == "completed", run.error
    assert run.output == {"n": 1000, "first": [0, 1, 4], "last": 999 * 999}
    assert received == [[i * i for i in range(1000)]]
    assert engine.steps(run.id).set_index("step_id").loc["square", "items"] == "1000/1000"


def test_map_fails_fast_and_over_max_items(engine, conformance):
    @engine.task("fetch-urls")
    def fetch_urls(ctx):
        return [f"https://img/{i}.png" for i in range(ctx.input["n"])]

    @engine.task("resize-image")
    def resize(ctx):
        if ctx.input.endswith("/3.png"):
            raise dn.Permanent("corrupt image")
        return ctx.input.replace(".png", "-small.png")

    @engine.task("build-gallery")
    def gallery(ctx):
        return {"images": ctx.input}

    engine.register(conformance / "map-step.json")  # max_items 10
    ok = engine.run("image-pipeline", input={"n": 3}, timeout=20)
    assert ok.status == "completed", ok.error
    assert ok.output == {"images": [f"https://img/{i}-small.png" for i in range(3)]}

    bad = engine.run("image-pipeline", input={"n": 5}, timeout=20)
    assert bad.status == "failed"
    assert "item 3: Permanent: corrupt image" in bad.error

    big = engine.run("image-pipeline", input={"n": 11}, timeout=20)
    assert big.status == "failed"
    assert "got 11 items, more than max_items 10" in big.error


def test_agent_loop_conformance_file_stops_at_max_iterations(engine, conformance):
    seen = []

    @engine.task("counter")
    def counter(ctx):
        seen.append((ctx.iteration, ctx.input))
        return dn.Continue({"count": (ctx.input or {}).get("count", 0) + 1})

    engine.register(conformance / "agent-loop.json")  # max_iterations 10, loop_delay 1s
    t0 = time.monotonic()
    run = engine.run("agent-loop", input={"count": 0}, timeout=60)
    assert run.status == "completed", run.error
    assert run.output == {"count": 10}
    assert [i for i, _ in seen] == list(range(10))
    assert seen[3][1] == {"count": 3}
    assert time.monotonic() - t0 >= 9.0  # nine 1 s pauses between ten iterations
    done = engine.events(run.id).query("type == 'step.completed'").iloc[-1]["payload"]
    assert done == {"count": 10}  # the raw output, as Go writes it
    why = engine.events(run.id).query("type == 'agent.loop.iteration'").iloc[-1]["payload"]
    assert why == {"iteration": 9, "stopped": "max_iterations"}


def test_agent_loop_stops_when_the_handler_returns_a_plain_value(engine):
    @engine.task("think")
    def think(ctx):
        n = ctx.input["n"] + 1
        return {"n": n, "done": True} if n >= 4 else dn.Continue({"n": n})

    wf = {
        "name": "loop",
        "steps": [
            {"id": "think", "task": "think", "type": "agent_loop", "loop": {"max_iterations": 50}}
        ],
    }
    run = engine.run(wf, input={"n": 0}, timeout=20)
    assert run.output == {"n": 4, "done": True}


def test_agent_loop_max_duration(engine):
    @engine.task("spin")
    async def spin(ctx):
        await asyncio.sleep(0.1)  # each iteration takes 0.1 s: max_duration stops the loop
        return dn.Continue(ctx.iteration)

    wf = {
        "name": "spin",
        "steps": [
            {
                "id": "spin",
                "task": "spin",
                "type": "agent_loop",
                "loop": {"max_iterations": 1000, "max_duration": "600ms"},
            }
        ],
    }
    run = engine.run(wf, timeout=20)
    assert run.status == "completed"
    # at most ~6 iterations of 0.1 s fit in 600 ms: 8 allows for no more (a busy machine
    # only makes fewer): the loop is stopped on time, not after max_iterations
    assert 3 <= run.output <= 8
    why = engine.events(run.id).query("type == 'agent.loop.iteration'").iloc[-1]["payload"]
    assert why["stopped"] == "max_duration"


def test_step_timeout_is_enforced_and_retried(engine):
    calls = []

    @engine.task("slow")
    async def slow(ctx):
        calls.append(ctx.attempt)
        if ctx.attempt == 1:
            await asyncio.sleep(5)  # outlasts the 300 ms step timeout: the subject
        return "fast enough"

    wf = {
        "name": "slowpoke",
        "steps": [
            {
                "id": "slow",
                "task": "slow",
                "timeout": "300ms",
                "retry": {"max_attempts": 1, "strategy": "fixed", "initial_delay": "10ms"},
            }
        ],
    }
    run = engine.run(wf, timeout=20)
    assert run.status == "completed" and run.output == "fast enough"
    failed = engine.events(run.id).query("type == 'step.failed'").iloc[0]["payload"]
    assert "timed out after 0.3s" in failed["error"]


def test_workflow_timeout_fails_the_run(engine):
    @engine.task("nap")
    async def nap(ctx):
        await asyncio.sleep(10)  # outlasts the 500 ms workflow timeout: the subject

    wf = {"name": "sleepy", "timeout": "500ms", "steps": [{"id": "nap", "task": "nap"}]}
    run = engine.run(wf, timeout=20)
    assert run.status == "failed"
    assert "workflow 'sleepy' timed out after 0.5s" in run.error


def test_concurrency_max_steps_limits_parallel_steps(engine):
    running = 0
    peak = 0
    lock = threading.Lock()

    @engine.task("work", concurrency=16)
    async def work(ctx):
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        await asyncio.sleep(0.05)  # simulated work: steps overlap if the limit lets them
        with lock:
            running -= 1
        return ctx.input

    wf = {
        "name": "limited",
        "concurrency": {"max_steps": 2},
        "steps": [{"id": f"s{i}", "task": "work"} for i in range(6)],
    }
    run = engine.run(wf, input=1, timeout=20)
    assert run.status == "completed"
    assert run.output == {f"s{i}": 1 for i in range(6)}
    assert peak == 2


def test_a_plain_def_handler_runs_eight_tasks_at_once_by_default(engine):
    running = 0
    peak = 0
    cond = threading.Condition()

    @engine.task("nap")  # no concurrency=: a plain def takes 8 at once, in pool threads
    def nap(ctx):
        nonlocal running, peak
        with cond:
            running += 1
            peak = max(peak, running)
            cond.notify_all()
            cond.wait_for(lambda: peak >= 8, timeout=3)  # one at a time: 3 s each, then fails
            running -= 1
        return ctx.input

    @engine.task("items")
    def items(ctx):
        return list(range(12))

    wf = {
        "name": "naps",
        "steps": [
            {"id": "items", "task": "items"},
            {"id": "nap", "task": "nap", "type": "map", "depends_on": ["items"]},
        ],
    }
    wf["steps"][1]["config"] = {"concurrency": 8}
    run = engine.run(wf, timeout=60)
    assert run.status == "completed" and run.output == list(range(12))
    assert peak == 8
    mine = next(w for w in engine.status()["workers"] if w["worker_id"] == engine.worker_id)
    assert mine["tasks"]["nap"]["concurrency"] == 8
    assert mine["tasks"]["items"]["concurrency"] == 8


def test_unserialisable_output_fails_the_step_with_a_clear_message(engine):
    @engine.task("bad")
    def bad(ctx):
        return {"when": object()}

    wf = {
        "name": "unserialisable",
        "default_retry": {"max_attempts": 3, "strategy": "fixed", "initial_delay": "10ms"},
        "steps": [{"id": "bad", "task": "bad"}],
    }
    run = engine.run(wf, timeout=20)
    assert run.status == "failed"
    assert "step 'bad' returned a value that is not JSON-serialisable" in run.error
    assert len(engine.events(run.id).query("type == 'step.failed'")) == 1  # not retried


def test_unserialisable_input_is_refused(engine):
    engine.register({"name": "one", "steps": [{"id": "a", "task": "a"}]})
    with pytest.raises(dn.RunError, match="input of workflow 'one' cannot be sent as JSON"):
        engine.start_run("one", input={"x": {1, 2}})


def test_outputs_larger_than_a_message_go_through_the_object_store(engine):
    big = "x" * (3 * 1024 * 1024)

    @engine.task("make")
    def make(ctx):
        return {"blob": big}

    @engine.task("measure")
    def measure(ctx):
        return {"len": len(ctx.input["blob"]), "blob": ctx.input["blob"]}

    wf = {
        "name": "big",
        "steps": [
            {"id": "make", "task": "make"},
            {"id": "measure", "task": "measure", "depends_on": ["make"]},
        ],
    }
    run = engine.run(wf, timeout=60)
    assert run.status == "completed", run.error
    assert run.output["len"] == len(big)
    assert run.output["blob"] == big
    done = engine.events(run.id).query("type == 'step.completed'")
    assert all(protocol.is_ref(x) for x in done["payload"])


def test_missing_handler_leaves_the_task_pending_in_status(engine):
    engine.register({"name": "orphan", "steps": [{"id": "a", "task": "nobody-home"}]})
    with pytest.warns(dn.UnservedTaskWarning, match="no worker serves task 'nobody-home'"):
        run = engine.start_run("orphan")
    status = until(
        lambda: (s := engine.status())["pending_tasks"].get("nobody-home") and s,
        every=0.05,
        what="the task pending",
    )
    assert status["pending_tasks"] == {"nobody-home": 1}
    assert status["tasks_without_worker"] == ["nobody-home"]
    assert run.status == "running"

    @engine.task("nobody-home")
    def late(ctx):
        return "finally"

    assert run.wait(timeout=20).output == "finally"


def test_cancel_ends_the_run(engine):
    gate = threading.Event()
    started = threading.Event()

    @engine.task("block")
    def block(ctx):
        started.set()
        gate.wait(10)
        return "late"

    @engine.task("after")
    def after(ctx):
        raise AssertionError("must not run after cancel")

    wf = {
        "name": "cancellable",
        "steps": [
            {"id": "block", "task": "block"},
            {"id": "after", "task": "after", "depends_on": ["block"]},
        ],
    }
    run = engine.start_run(wf)
    assert started.wait(10), "block never started"
    run.cancel()
    run.wait(timeout=10)
    gate.set()
    assert run.status == "cancelled"
    assert run.error == "cancelled by user"

    def late_result_applied() -> bool:  # block's result, after the cancel, was applied
        events = engine.events(run.id)
        done = events[(events["type"] == "step.completed") & (events["step_id"] == "block")]
        return not done.empty and engine.orchestrator.last_seq >= done["seq"].max()

    until(late_result_applied, what="block's late result to be applied")
    assert engine.steps(run.id).set_index("step_id").loc["after", "status"] == "pending"


def test_wait_times_out_with_a_clear_message(engine):
    engine.register({"name": "never", "steps": [{"id": "a", "task": "nobody"}]})
    with pytest.warns(dn.UnservedTaskWarning):
        run = engine.start_run("never")
    with pytest.raises(dn.RunTimeout, match="is still running after 0.3s"):
        run.wait(timeout=0.3)
    for _ in range(3):  # waits that time out leave no waiter behind (a run waited on often)
        with pytest.raises(dn.RunTimeout):
            run.wait(timeout=0.05)
    assert engine._call(_waiters_of(engine, run.id)) == 0


async def _waiters_of(engine, run_id: str) -> int:
    return len(engine.orchestrator._waiters.get(run_id, ()))


def test_long_handler_heartbeats_and_is_not_redelivered(engine):
    calls = []

    @engine.task("long")
    def long(ctx):  # ack_wait is 2 s in the fixture
        calls.append(ctx.attempt)
        time.sleep(5)  # outlasts the 2 s ack wait: the subject
        return "done"

    run = engine.run({"name": "long", "steps": [{"id": "l", "task": "long"}]}, timeout=30)
    assert run.output == "done"
    assert calls == [1]


def test_unknown_workflow_is_a_clear_error(engine):
    with pytest.raises(dn.WorkflowError, match="workflow 'nope' is not registered"):
        engine.start_run("nope")


def test_async_twins_work_from_another_event_loop(engine):
    @engine.task("echo")
    async def echo(ctx):
        return ctx.input

    async def main():
        await engine.register_async({"name": "echo", "steps": [{"id": "e", "task": "echo"}]})
        run = await engine.run_async("echo", input={"v": 1}, timeout=20)
        runs = await engine.runs_async()
        events = await engine.events_async(run.id)
        return run, runs, events

    run, runs, events = asyncio.run(main())
    assert run.output == {"v": 1}
    assert run.id in set(runs["run_id"])
    assert events["type"].iloc[-1] == "workflow.completed"


def test_blocking_call_from_an_async_handler_is_a_clear_error(engine):
    @engine.task("naughty")
    async def naughty(ctx):
        engine.status()  # a blocking method, on the engine thread

    run = engine.run({"name": "naughty", "steps": [{"id": "n", "task": "naughty"}]}, timeout=20)
    assert run.status == "failed"
    assert "use its *_async twin" in run.error


@pytest.mark.parametrize("snapshot_restart", [True, False])
def test_restart_replays_history_and_keeps_runs(tmp_path, snapshot_restart):
    """With snapshot_restart (the default) no history is replayed: the runs ended before
    the checkpoint, and their records answer; without, the whole history is."""
    data = tmp_path / "engine"
    with dn.Engine.start(data_dir=data, snapshot_restart=snapshot_restart) as eng:

        @eng.task("inc")
        def inc(ctx):
            return ctx.input + 1

        wf = {
            "name": "inc2",
            "steps": [{"id": "a", "task": "inc"}, {"id": "b", "task": "inc", "depends_on": ["a"]}],
        }
        ids = [eng.run(wf, input=i, timeout=20).id for i in range(5)]

    with dn.Engine.start(data_dir=data, snapshot_restart=snapshot_restart) as eng:
        status = eng.status()
        history = next(s for s in status["streams"] if s["stream"] == "WORKFLOW_HISTORY")
        assert history["messages"] >= 5 * 6
        replayed = 0 if snapshot_restart else history["messages"]
        assert status["orchestrator"]["replayed_events"] == replayed
        assert (len(eng.orchestrator.runs) == 0) is snapshot_restart
        runs = eng.runs().set_index("run_id")
        assert set(ids) <= set(runs.index)
        assert all(runs.loc[ids, "status"] == "completed")
        assert [eng.get_run(r).output for r in ids] == [2, 3, 4, 5, 6]


def test_connect_from_another_engine_object_reads_status_and_runs(engine):
    @engine.task("echo")
    async def echo(ctx):
        return ctx.input

    engine.register({"name": "echo", "steps": [{"id": "e", "task": "echo"}]})
    done = engine.run("echo", input="hi", timeout=20)
    other = dn.Engine.connect(data_dir=engine.settings.data_dir)
    try:
        runs = other.runs()
        assert done.id in set(runs["run_id"])
        started = other.start_run("echo", input="from outside")
        started.wait(timeout=20)
        assert started.status == "completed"
        assert engine.get_run(started.id).output == "from outside"
        assert other.status()["url"] == engine.url
    finally:
        other.stop()


def test_second_engine_on_one_data_dir_names_the_holder(engine):
    import os

    with pytest.raises(dn.EngineLocked, match=str(os.getpid())):
        dn.Engine.start(data_dir=engine.settings.data_dir)


def test_missing_server_binary_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("DAGNATS_NATS_SERVER", str(tmp_path / "no-such-nats-server"))
    with pytest.raises(dn.ServerError, match="nats-server"):
        dn.Engine.start(data_dir=tmp_path / "e")


def test_full_store_is_a_clear_error_and_recorded_runs_survive(tmp_path):
    data = tmp_path / "engine"
    wf = {"name": "bulky", "steps": [{"id": "make", "task": "make"}]}
    completed: list[str] = []
    with dn.Engine.start(data_dir=data, max_store_bytes="4MiB", ack_wait="2s") as eng:

        @eng.task("make")
        def make(ctx):
            return {"n": ctx.input, "blob": "y" * 300_000}

        eng.register(wf)
        with pytest.raises(dn.RunError, match="storage is full .*raise max_store_bytes"):
            for i in range(40):
                run = eng.start_run("bulky", input=i)
                run.wait(timeout=20)
                completed.append(run.id)
        assert len(completed) >= 3

    with dn.Engine.start(data_dir=data, max_store_bytes="64MiB", ack_wait="2s") as eng:

        @eng.task("make")
        def make_again(ctx):
            return {"n": ctx.input, "blob": "z"}

        runs = eng.runs().set_index("run_id")
        assert all(runs.loc[completed, "status"] == "completed")
        assert [eng.get_run(r).output["n"] for r in completed] == list(range(len(completed)))
        for run_id in runs.index:  # a run caught by the full store finishes now
            assert eng.get_run(run_id).wait(timeout=30).status == "completed"


def test_attached_engine_sees_a_running_run_then_its_end(engine):
    gate = threading.Event()

    @engine.task("hold")
    def hold(ctx):
        gate.wait(10)
        return "released"

    engine.register({"name": "held", "steps": [{"id": "h", "task": "hold"}]})
    other = dn.Engine.connect(data_dir=engine.settings.data_dir)
    try:
        run = other.start_run("held")
        until(lambda: run.status == "running", every=0.05, what="the attached run running")
        gate.set()
        assert run.wait(timeout=20).status == "completed"
        assert other.get_run(run.id).workflow == "held"
    finally:
        other.stop()


def test_watch_reports_each_state_change_of_a_run(engine):
    @engine.task("step")
    async def step(ctx):
        await asyncio.sleep(0.05)  # simulated work: the watcher sees each state
        return ctx.input

    engine.register(
        {
            "name": "watched",
            "steps": [
                {"id": "a", "task": "step"},
                {"id": "b", "task": "step", "depends_on": ["a"]},
            ],
        }
    )
    seen: list[tuple[str, str, str]] = []
    run = engine.start_run("watched", input=1)
    unwatch = engine.watch(
        run.id, lambda s: seen.append((s.status, s.step("a").status, s.step("b").status))
    )
    run.wait(timeout=20)
    until(lambda: seen and seen[-1][0] == "completed", what="the watcher to see the end")
    unwatch()
    assert seen[-1] == ("completed", "completed", "completed")
    assert ("running", "completed", "queued") in seen or ("running", "completed", "running") in seen
    n = len(seen)
    engine.run("watched", input=2, timeout=20)
    assert len(seen) == n  # unwatched


def test_dead_server_is_one_clear_line_and_runs_resume_after_restart(tmp_path):
    import os
    import signal

    data = tmp_path / "engine"
    eng = dn.Engine.start(data_dir=data, ack_wait="2s")
    eng.register({"name": "later", "steps": [{"id": "a", "task": "later"}]})
    with pytest.warns(dn.UnservedTaskWarning):  # its handler comes after the restart
        waiting = eng.start_run("later", input=41)

    def step_a_queued() -> bool:
        try:
            steps = eng.steps(waiting.id)
        except dn.RunError:  # not seen by the orchestrator yet
            return False
        return steps.set_index("step_id").loc["a", "status"] == "queued"

    until(step_a_queued, what="step a queued")
    os.kill(eng.server.pid, signal.SIGKILL)
    until(lambda: not eng.server.running, what="the server process to exit")
    t0 = time.monotonic()
    with pytest.raises(dn.ServerError, match="the embedded nats-server has exited") as info:
        eng.start_run("later")
    assert "nats-server.log" in str(info.value)
    # Functional bounds, far from what they rule out: a publish retried until its 60 s
    # deadline, and a stop waiting 15 s per part for a drain a dead server cannot answer.
    assert time.monotonic() - t0 < 10
    t0 = time.monotonic()
    eng.stop()
    assert time.monotonic() - t0 < 10

    with (
        pytest.warns(dn.UnservedTaskWarning, match=r"recovered .* 'later' \(1 run\)"),
        dn.Engine.start(data_dir=data, ack_wait="2s") as again,
    ):

        @again.task("later")
        def later(ctx):
            return ctx.input + 1

        assert again.get_run(waiting.id).wait(timeout=20).output == 42


def test_step_output_of_a_finished_run_is_rebuilt_from_its_history(engine):
    @engine.task("split")
    def split(ctx):
        return ctx.input.split()

    @engine.task("upper")
    async def upper(ctx):
        return ctx.input.upper()

    @engine.task("join")
    def join(ctx):
        return " ".join(ctx.input)

    wf = {
        "name": "shout",
        "steps": [
            {"id": "split", "task": "split"},
            {"id": "upper", "task": "upper", "type": "map", "depends_on": ["split"]},
            {"id": "join", "task": "join", "depends_on": ["upper"]},
        ],
    }
    run = engine.run(wf, input="a b c", timeout=20)
    assert run.output == "A B C"
    assert engine.step_output(run.id, "split") == ["a", "b", "c"]
    assert engine.step_output(run.id, "upper") == ["A", "B", "C"]
    with pytest.raises(dn.WorkflowError, match="no step 'nope'"):
        engine.step_output(run.id, "nope")
    with pytest.raises(dn.RunError, match="no history for run missing"):
        engine.step_output("missing", "split")


def test_a_task_message_that_is_not_an_object_does_not_block_its_task_type(engine):
    """JSON that is not an object on ``task.{t}.*`` (``[1,2,3]``, ``5``, ``"x"``) is dropped
    with a log line; the one slot of a ``def`` handler is free for the good runs."""

    @engine.task("one-slot")
    def one_slot(ctx):
        return ctx.input * 2

    engine.register({"name": "one-slot", "steps": [{"id": "a", "task": "one-slot"}]})

    async def garbage():
        for body in (b"[1, 2, 3]", b"5", b'"x"', b"{not json"):
            await engine._js.publish("task.one-slot.garbage", body)

    engine._call(garbage())
    runs = [engine.start_run("one-slot", i) for i in range(5)]
    assert [r.wait(timeout=20).output for r in runs] == [0, 2, 4, 6, 8]
    lag = engine.consumer_lag().set_index("consumer")
    assert lag.loc["workers-one-slot", "pending"] == 0
    assert lag.loc["workers-one-slot", "ack_pending"] == 0


def test_task_consumers_of_others_are_adopted_and_old_ones_replaced(engine):
    """A ``workers-{task}`` consumer we did not make (a Go worker's) is used as it is; a
    ``worker-{task}`` one left by dagnats-nb < 0.2 gives way, its waiting task kept."""
    from nats.js.api import AckPolicy, ConsumerConfig

    seen: list = []

    async def setup():
        js = engine._js
        await js.add_consumer(
            protocol.TASK_STREAM,
            ConsumerConfig(
                durable_name="workers-foreign",
                filter_subject="task.foreign.>",
                ack_policy=AckPolicy.EXPLICIT,
                ack_wait=300,
                max_ack_pending=1000,
            ),
        )
        await js.add_consumer(
            protocol.TASK_STREAM,
            ConsumerConfig(
                durable_name="worker-legacy",
                filter_subject="task.legacy.>",
                ack_policy=AckPolicy.EXPLICIT,
            ),
        )
        body = {"task_id": "R1.a", "run_id": "R1", "step_id": "a", "task": "legacy", "input": 7}
        await js.publish("task.legacy.R1", json.dumps(body).encode())

    engine._call(setup())

    @engine.task("foreign", concurrency=4)
    def foreign(ctx):
        return ctx.input

    @engine.task("legacy")
    def legacy(ctx):
        seen.append(ctx.input)
        return ctx.input

    lag = engine.consumer_lag().set_index("consumer")
    assert lag.loc["workers-foreign", "max_ack_pending"] == 1000  # not ours: not changed
    assert "worker-legacy" not in lag.index
    until(lambda: seen == [7], what="the task left for the old consumer")
    run = engine.run({"name": "f", "steps": [{"id": "a", "task": "foreign"}]}, input=3)
    assert run.output == 3


def run_record(engine, run_id: str) -> dict | None:
    """The run's record in KV ``workflow_runs`` (Go's ``run.{id}``), None while there is none."""

    async def read():
        kv = await engine._js.key_value("workflow_runs")
        try:
            return json.loads((await kv.get(f"run.{run_id}")).value)
        except KeyNotFoundError:
            return None

    return engine._call(read())


def test_run_records_cost_one_put_for_a_short_run_and_show_a_long_one_running(engine):
    """Go's run record (``run.{id}`` in ``workflow_runs``): written when a run ends, and a
    second after its start for a run still going (what ``dagnats run list`` shows)."""
    release = threading.Event()

    @engine.task("quick")
    def quick(ctx):
        return ctx.input

    @engine.task("slow")
    def slow(ctx):
        release.wait(20)
        return "done"

    def puts() -> int:
        return engine._call(engine._js.stream_info("KV_workflow_runs")).state.last_seq

    engine.register({"name": "quick", "steps": [{"id": "a", "task": "quick"}]})
    before = puts()
    runs = [engine.run("quick", i, timeout=20) for i in range(10)]
    assert puts() - before == 10  # one put each: at the end
    done = run_record(engine, runs[3].id)
    assert done["status"] == "completed" and done["workflow_id"] == "quick"
    assert done["steps"]["a"]["status"] == "completed"

    long = engine.start_run({"name": "long", "steps": [{"id": "s", "task": "slow"}]})
    running = until(lambda: run_record(engine, long.id), what="the running run's record")
    assert running["status"] == "running"
    release.set()
    assert long.wait(20).status == "completed"
    assert run_record(engine, long.id)["status"] == "completed"  # written before wait() returned


def test_worker_groups_route_a_steps_tasks_to_its_groups_workers(engine):
    """A step's ``worker_group`` sends its tasks to ``task.{task}.{group}.{run}`` (Go's
    subject), which the group's consumer ``workers-{task}-{group}`` serves; a plain handler
    of the same task type cannot share the work queue and is refused in one line."""
    seen: list = []

    @engine.task("render", group="gpu")
    def render(ctx):
        seen.append((ctx.step_id, ctx.input))
        return {"frames": ctx.input * 2}

    @engine.task("notify")
    def notify(ctx):
        return ctx.input["frames"]

    wf = {
        "name": "grouped",
        "steps": [
            {"id": "draw", "task": "render", "worker_group": "gpu"},
            {"id": "tell", "task": "notify", "depends_on": ["draw"]},
        ],
    }
    run = engine.run(wf, 21, timeout=20)
    assert run.status == "completed" and run.output == 42
    assert seen == [("draw", 21)]
    lag = engine.consumer_lag().set_index("consumer")
    assert lag.loc["workers-render-gpu", "filter"] == "task.render.gpu.>"
    assert "workers-render" not in lag.index

    with pytest.raises(dn.DagnatsError, match="serve a task type either by worker groups"):
        engine.add_handler("render", lambda ctx: None)
    assert engine.run(wf, 5, timeout=20).output == 10  # the group's worker still serves


def test_a_running_runs_record_follows_its_steps(engine):
    """Go's CLI reads a running run's record: it follows the run's steps (a second behind)."""
    gate = [threading.Event() for _ in range(2)]

    @engine.task("gated")
    def gated(ctx):
        gate[ctx.input].wait(20)
        return ctx.input + 1

    wf = {
        "name": "gated",
        "steps": [
            {"id": "a", "task": "gated"},
            {"id": "b", "task": "gated", "depends_on": ["a"]},
        ],
    }
    run = engine.start_run(wf, 0)
    first = until(lambda: (r := run_record(engine, run.id)) and r["status"] == "running" and r)
    assert first["steps"]["a"]["status"] in ("queued", "running") and "b" not in first["steps"]
    gate[0].set()
    until(
        lambda: (
            ((run_record(engine, run.id) or {}).get("steps") or {}).get("b", {}).get("status")
            == "running"
        ),
        what="the record to show step b running",
    )
    assert run_record(engine, run.id)["steps"]["a"]["status"] == "completed"
    gate[1].set()
    assert run.wait(20).output == 2
    assert run_record(engine, run.id)["status"] == "completed"


def test_the_steps_of_a_run_just_started_show_at_once(engine):
    """``steps()`` and ``get_run()`` right after ``start_run`` (before the orchestrator
    applied the start) read the run from its history instead of saying there is no such
    run."""
    engine.register({"name": "nobody", "steps": [{"id": "a", "task": "nobody-serves"}]})
    for _ in range(20):
        with pytest.warns(dn.UnservedTaskWarning):
            run = engine.start_run("nobody")
        assert engine.get_run(run.id).workflow == "nobody"
        assert list(engine.steps(run.id)["step_id"]) == ["a"]

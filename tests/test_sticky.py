"""Worker affinity: sticky soft/hard workflows with two real worker processes' workers
(``WorkerProcess`` in this process, each with its own worker id and connection)."""

from __future__ import annotations

import threading
import time
from collections import defaultdict

from conftest import until

import dagnats_nb as dn
from dagnats_nb.config import load_settings
from dagnats_nb.facade.worker_process import WorkerProcess
from dagnats_nb.wire import protocol


class Calls:
    """Every handler call: (run, step, attempt, worker id); steps named in ``slow`` sleep."""

    def __init__(self, slow: dict[str, float] | None = None, fail_once: set[str] = ()) -> None:
        self.rows: list[tuple[str, str, int, str]] = []
        self.slow = slow or {}
        self.fail_once = set(fail_once)
        self.lock = threading.Lock()

    def handler(self, ctx):
        with self.lock:
            self.rows.append((ctx.run_id, ctx.step_id, ctx.attempt, ctx.worker_id))
        time.sleep(self.slow.get(ctx.step_id, 0.0))  # simulated work of the slow steps
        if ctx.step_id in self.fail_once and ctx.attempt == 1:
            raise RuntimeError("transient")
        return ctx.step_id

    def workers_of(self, run_id: str) -> dict[str, str]:
        return {step: wid for run, step, _, wid in self.rows if run == run_id}


def worker(engine: dn.Engine, calls: Calls, wid: str, concurrency: int = 4) -> WorkerProcess:
    settings = load_settings(data_dir=engine.settings.data_dir)
    handlers = {"hop": (calls.handler, concurrency)}
    return WorkerProcess(settings, handlers, url=engine.url, worker_id=wid).start()


def chain(name: str, sticky: str | None, n: int = 4, **extra) -> dict:
    steps = [{"id": "s0", "task": "hop"}]
    steps += [{"id": f"s{i}", "task": "hop", "depends_on": [f"s{i - 1}"]} for i in range(1, n)]
    out = {"name": name, "steps": steps, **extra}
    if sticky:
        out["sticky"] = sticky
    return out


def bindings(engine: dn.Engine) -> dict[str, str]:
    async def read():
        kv = await engine._js.key_value("sticky_bindings")
        return {k: (await kv.get(k)).value.decode() for k in await kv.keys()}  # Go's form

    return engine._call(read())


def test_every_step_of_a_sticky_run_goes_to_the_worker_of_its_first_step(engine):
    calls = Calls(slow={"s0": 0.05})
    wa, wb = worker(engine, calls, "wa"), worker(engine, calls, "wb")
    try:
        engine.register(chain("sticky-chain", "soft"))
        engine.register(chain("plain-chain", None))
        runs = [engine.start_run("sticky-chain", i) for i in range(12)]
        plain = [engine.start_run("plain-chain", i) for i in range(12)]
        for r in runs + plain:
            assert r.wait(20).status == "completed"
    finally:
        wa.stop(1)
        wb.stop(1)
    first = defaultdict(int)
    for r in runs:
        by_step = calls.workers_of(r.id)
        assert len(by_step) == 4 and len(set(by_step.values())) == 1, by_step
        first[by_step["s0"]] += 1
    assert set(first) == {"wa", "wb"}  # both took first steps, and kept their runs
    mixed = [r for r in plain if len(set(calls.workers_of(r.id).values())) > 1]
    assert mixed  # without sticky, steps of one run spread over the workers
    bound = bindings(engine)
    assert {r.id: calls.workers_of(r.id)["s0"] for r in runs} == {r.id: bound[r.id] for r in runs}
    assert not any(r.id in bound for r in plain)


def test_soft_falls_back_to_the_shared_queue_when_the_bound_worker_is_gone(engine):
    calls = Calls(slow={"s1": 3.0})
    wa = worker(engine, calls, "wa", concurrency=2)
    engine.register(chain("soft-two", "soft", n=3))
    run = engine.start_run("soft-two", 1)
    until(lambda: "s1" in calls.workers_of(run.id), what="s1 to start")
    assert calls.workers_of(run.id) == {"s0": "wa", "s1": "wa"}
    wb = worker(engine, calls, "wb")
    try:
        wa.stop(drain_timeout=0)  # s1 is released into wa's own queue, and wa is gone
        assert run.wait(20).status == "completed"
    finally:
        wb.stop(1)
    assert [(s, a, w) for r, s, a, w in calls.rows if r == run.id] == [
        ("s0", 1, "wa"),
        ("s1", 1, "wa"),
        ("s1", 1, "wb"),
        ("s2", 1, "wb"),
    ]
    assert engine.orchestrator.counters["sticky_fallbacks"] >= 1


def test_hard_waits_for_its_worker_and_a_restart_with_the_same_id_takes_it(engine):
    calls = Calls(fail_once={"s1"})
    wf = chain("hard-two", "hard", n=3, timeout="60s")
    wf["steps"][1]["retry"] = {"max_attempts": 2, "strategy": "fixed", "initial_delay": "1s"}
    wa = worker(engine, calls, "wa")
    wb = worker(engine, calls, "wb")
    try:
        engine.register(wf)
        run = engine.start_run("hard-two", 1)
        until(lambda: any(s == "s1" for r, s, *_ in calls.rows if r == run.id), what="s1")
        bound = calls.workers_of(run.id)["s0"]
        other = wb if bound == "wa" else wa
        (wa if bound == "wa" else wb).stop(1)  # gone during s1's retry delay
        # The retry is due after 1 s: it is sent to the bound worker's own queue (the first
        # attempt's message is the other one there), where it waits for that worker.
        subject = protocol.sticky_subject("hop", bound, run.id)

        def queued_for_the_bound_worker() -> int:
            info = engine._call(
                engine._js.stream_info(protocol.STICKY_STREAM, subjects_filter=subject)
            )
            return (info.state.subjects or {}).get(subject, 0)

        until(lambda: queued_for_the_bound_worker() == 2, what="the retry in its worker's queue")
        assert engine.get_run(run.id).status == "running"  # the retry waits for its worker
        assert [a for r, s, a, _ in calls.rows if r == run.id and s == "s1"] == [1]
        back = worker(engine, calls, bound)
        try:
            assert run.wait(20).status == "completed"
        finally:
            back.stop(1)
    finally:
        other.stop(1)
    assert {w for r, _, _, w in calls.rows if r == run.id} == {bound}

"""Reads of a finished run that has left memory answer from its ``workflow_runs`` record
(issue 15, increment 4; design/history-at-scale.md (c)) with the same answers as from
memory: ``steps()``, ``run_state()``, ``get_run()``'s status, error and output,
``step_output()`` of every step and ``runs()``. Each run is read, evicted from memory on
the engine loop (as the orchestrator will evict finished runs), read again and compared.
A record without ``nb`` (Go's, an older one) and one that is not JSON answer from the
run's history, the same again. ``wire.runs.record_state`` rebuilds the state memory holds
(``dag.advance.compact``) from a real run's record."""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from typing import Any

import pandas.testing as pdt
import pytest
from conftest import until

import dagnats_nb as dn
from dagnats_nb.dag.state import MapState, RunState
from dagnats_nb.errors import RunError
from dagnats_nb.wire.runs import run_key

BIG = "x" * 1_500_000  # over the payload limit: stored behind a {"$ref", "size"}

SAGA = {
    "name": "rr-trip",
    "steps": [
        {"id": "flight", "task": "rr-book", "compensate": "cancel-flight"},
        {"id": "hotel", "task": "rr-book", "depends_on": ["flight"], "compensate": "cancel-hotel"},
        {"id": "pay", "task": "rr-fail", "depends_on": ["hotel"]},
        {"id": "cancel-flight", "task": "rr-cancel"},
        {"id": "cancel-hotel", "task": "rr-cancel"},
    ],
}


def chain(name: str, *tasks: str) -> dict:
    steps = [{"id": f"s{i}", "task": t} for i, t in enumerate(tasks)]
    for i in range(1, len(steps)):
        steps[i]["depends_on"] = [f"s{i - 1}"]
    return {"name": name, "steps": steps}


@pytest.fixture(scope="module")
def eng(tmp_path_factory):
    # every run stays in memory (no eviction), so that memory's answers can be compared
    data_dir = tmp_path_factory.mktemp("rr") / "engine"
    e = dn.Engine.start(data_dir=data_dir, llm_enabled=False, snapshot_restart=False)
    e.release = threading.Event()

    @e.task("rr-double")
    def double(ctx):
        return {"n": (ctx.input or {}).get("n", 1) * 2}

    @e.task("rr-items")
    def items(ctx):
        return [1, 2, 3, 4, 5]

    @e.task("rr-square")
    def square(ctx):
        return ctx.input * ctx.input

    @e.task("rr-fail")
    def fail(ctx):
        raise dn.Permanent("card declined")

    @e.task("rr-book")
    def book(ctx):
        return {"booked": ctx.step_id}

    @e.task("rr-cancel")
    def cancel(ctx):
        return {"cancelled": ctx.input["original_step"]}

    @e.task("rr-big")
    def big(ctx):
        return {"text": BIG}

    @e.task("rr-hold")
    def hold(ctx):
        e.release.wait(30)
        return {}

    def cached(ctx):
        return {"seen": ctx.input}

    e.add_handler("rr-cached", cached, cache=True)
    e.register({"name": "rr-kid", "steps": [{"id": "k", "task": "rr-double"}]})
    yield e
    e.release.set()
    e.stop()


@pytest.fixture(scope="module")
def finished(eng) -> dict[str, str]:
    """Name -> the id of a finished run of every kind the reads must answer for."""
    runs: dict[str, str] = {}

    def run(name: str, wf: Any, input: Any = None, status: str = "completed") -> str:
        r = eng.run(wf, input=input, timeout=60)
        assert r.status == status, (name, r.error)
        runs[name] = r.id
        return r.id

    linear = run("linear", chain("rr-linear", "rr-double", "rr-double", "rr-double"), {"n": 3})
    parallel = {
        "name": "rr-parallel",
        "steps": [
            {"id": "a", "task": "rr-double"},
            {"id": "b", "task": "rr-double", "depends_on": ["a"]},
            {"id": "c", "task": "rr-double", "depends_on": ["a"]},
        ],
    }
    run("parallel", parallel, {"n": 1})  # two terminal steps: output {b, c}
    mapped = {
        "name": "rr-map",
        "steps": [
            {"id": "items", "task": "rr-items"},
            {"id": "sq", "task": "rr-square", "type": "map", "depends_on": ["items"]},
        ],
    }
    run("map", mapped)
    run("failed", chain("rr-failed", "rr-double", "rr-fail"), status="failed")
    eng.register(SAGA)
    run("saga", "rr-trip", status="failed")
    parent = {
        "name": "rr-parent",
        "steps": [
            {"id": "a", "task": "rr-double"},
            {"id": "sub", "type": "sub_workflow", "depends_on": ["a"]},
        ],
    }
    parent["steps"][1]["config"] = {"workflow": "rr-kid"}
    pid = run("parent", parent, {"n": 2})
    runs["child"] = f"{pid}-sub"
    fork = eng.fork(linear, "s1")
    assert fork.wait(timeout=60).status == "completed", fork.error
    runs["fork"] = fork.id
    run("cache-miss", chain("rr-cache", "rr-cached"), {"k": 1})
    run("cache-hit", chain("rr-cache", "rr-cached"), {"k": 1})
    run("big", chain("rr-big", "rr-big", "rr-double"))
    held = eng.start_run(chain("rr-cancel-me", "rr-double", "rr-hold", "rr-double"))
    until(lambda: (eng.run_state(held.id) or {}).get("state") and _running(eng, held.id, "s1"))
    eng.cancel_run(held.id)
    assert held.wait(timeout=30).status == "cancelled"
    runs["cancelled"] = held.id
    eng.release.set()
    for rid in runs.values():  # every event the run published is stored and applied
        until(lambda rid=rid: _settled(eng, rid), what=f"run {rid} settled")
    return runs


def _running(eng, run_id: str, step: str) -> bool:
    return eng.run_state(run_id)["state"].step(step).status == "running"


def _settled(eng, run_id: str) -> bool:
    state = eng.run_state(run_id)["state"]
    return state.terminal and not state.outbox


def evict(eng, run_id: str) -> None:
    """Drop a run from the orchestrator's memory, on the engine loop (as eviction will),
    and forget the records rebuilt so far."""

    async def pop() -> None:
        eng.orchestrator.runs.pop(run_id)
        eng.orchestrator.run_defs.pop(run_id)
        eng._recent_records().clear()

    eng._call(pop())


def forget(eng) -> None:
    async def clear() -> None:
        eng._recent_records().clear()

    eng._call(clear())


def lean(state: RunState) -> dict[str, Any]:
    """What memory holds of a finished run for its reads: its fields but the step inputs and
    outputs, map outputs and instances, the outbox (a failed run keeps them in memory, a
    record does not) and ``last_seq`` (the record's is its last event before its end)."""
    out = {f.name: getattr(state, f.name) for f in dataclasses.fields(RunState)}
    del out["last_seq"], out["outbox"]
    steps = {}
    for sid, st in state.steps.items():
        st = st.clone()
        st.input = st.output = None
        if st.map is not None:
            st.map = MapState(st.map.count, [], st.map.next_index, st.map.done)
        steps[sid] = st
    out["steps"] = steps
    return out


def answers(eng, run_id: str) -> dict[str, Any]:
    """Every read of the run, as the public API gives it."""
    summary = eng.run_state(run_id)
    run = eng.get_run(run_id)
    steps = eng.steps(run_id)
    outputs = {}
    for sid in steps["step_id"]:
        try:
            outputs[sid] = eng.step_output(run_id, sid)
        except RunError as exc:
            outputs[sid] = f"RunError: {exc}"
    return {
        "summary": {k: v for k, v in summary.items() if k != "state"},
        "state": lean(summary["state"]),
        "run": (run.workflow, run.status, run.error, run.output),
        "steps": steps,
        "outputs": outputs,
    }


def assert_same(before: dict[str, Any], after: dict[str, Any], late: int = 0) -> None:
    """Equal answers; ``late``: the events memory applied after the run's end was recorded
    (a cancelled run's step result that came after; eviction drops them)."""
    pdt.assert_frame_equal(before["steps"], after["steps"])
    before = {**before, "state": {**before["state"]}}
    before["state"]["event_count"] -= late
    for key in ("summary", "state", "run", "outputs"):
        assert before[key] == after[key], key


KINDS = [
    "linear",
    "parallel",
    "map",
    "failed",
    "saga",
    "parent",
    "child",
    "fork",
    "cache-miss",
    "cache-hit",
    "big",
    "cancelled",
]


# the cancelled run's held step completes after the run ended: memory counts its result
LATE = {"cancelled": 1}


@pytest.fixture(scope="module")
def parity(eng, finished) -> dict[str, Any]:
    """Every run's answers from memory, and the runs() frame, before any eviction."""
    before = {kind: answers(eng, finished[kind]) for kind in KINDS}
    return {"before": before, "runs": eng.runs()}


def test_every_read_of_an_evicted_run_answers_from_its_record_as_from_memory(eng, finished, parity):
    b = parity["before"]
    assert b["fork"]["steps"]["reused"].tolist() == [True, False, False]
    assert b["cache-hit"]["steps"]["cached"].tolist() == [True]
    assert b["map"]["steps"].set_index("step_id").loc["sq", "items"] == "5/5"
    assert b["big"]["outputs"]["s0"] == {"text": BIG}
    assert b["saga"]["run"][2].endswith("(compensated)")
    assert b["child"]["summary"]["status"] == "completed"
    assert b["parallel"]["run"][3] == {"b": {"n": 4}, "c": {"n": 4}}
    for kind in KINDS:
        evict(eng, finished[kind])
        assert finished[kind] not in eng.orchestrator.runs
        assert_same(b[kind], answers(eng, finished[kind]), LATE.get(kind, 0))
    pdt.assert_frame_equal(parity["runs"], eng.runs())


def test_a_record_without_nb_or_not_json_answers_from_history(eng, finished, parity):
    kv = eng._call(eng._js.key_value("workflow_runs"))
    for kind in ("linear", "map", "saga", "big"):
        rid = finished[kind]
        if rid in eng.orchestrator.runs:
            evict(eng, rid)
        raw = json.loads(eng._call(kv.get(run_key(rid))).value)
        go = {k: v for k, v in raw.items() if k != "nb"}  # Go's record, or an older one
        eng._call(kv.put(run_key(rid), json.dumps(go).encode()))
        forget(eng)
        assert_same(parity["before"][kind], answers(eng, rid))
        eng._call(kv.put(run_key(rid), b"\x00 not json"))
        forget(eng)
        assert_same(parity["before"][kind], answers(eng, rid))
        eng._call(kv.put(run_key(rid), json.dumps(raw).encode()))  # as it was
    forget(eng)


def test_record_state_rebuilds_what_memory_holds(eng, finished, parity):
    """The pure rebuild, on real runs' records: equal to memory's state for every field
    but last_seq (and, for a failed run, what only memory keeps)."""
    from dagnats_nb.wire.runs import record_state

    kv = eng._call(eng._js.key_value("workflow_runs"))
    for kind in KINDS:
        raw = json.loads(eng._call(kv.get(run_key(finished[kind]))).value)
        state = record_state(raw)
        assert state is not None, kind
        memory = dict(parity["before"][kind]["state"])
        memory["event_count"] -= LATE.get(kind, 0)
        assert lean(state) == memory, kind
        assert raw["nb"]["v"] == 1 and "nb" not in raw["steps"]
        assert record_state({**raw, "nb": {**raw["nb"], "v": 99}}) is None
        assert record_state({k: v for k, v in raw.items() if k != "nb"}) is None
        assert record_state({**raw, "status": "running"}) is None  # behind a running run
    child = json.loads(eng._call(kv.get(run_key(finished["parent"]))).value)
    assert child["steps"]["sub"]["child_run_id"] == finished["child"]
    mapped = json.loads(eng._call(kv.get(run_key(finished["map"]))).value)
    assert mapped["steps"]["sq"]["map_instances"] == [{"status": "completed"}] * 5


def test_every_field_of_a_finished_state_comes_back_from_its_record():
    """The pure round trip on a state with every field set (``test_snapshot``'s): what
    memory keeps of it comes back, and Go's fields say what Go's engine would."""
    from test_snapshot import every_field_set

    from dagnats_nb.dag.state import StepState
    from dagnats_nb.wire.runs import record_state, run_record

    s = every_field_set()
    s.steps["retry"] = StepState("retrying", 2, error="flaky", due_at=50.0, queued_at=4.0)
    s.steps["nap"] = StepState("running", 1, due_at=60.0, first_at=3.0)
    s.steps["loop"] = StepState("waiting", 1, 3, first_at=2.0, due_at=70.0)
    raw = json.loads(json.dumps(run_record(s)))
    back = record_state(raw, s.extended)
    expected = lean(s)
    expected["event_count"] = s.event_count + len(s.outbox)  # each outbox event comes back
    assert lean(back) == expected and back.extended == s.extended
    go = raw["steps"]
    assert go["retry"]["status"] == "queued" and go["loop"]["status"] == "running"
    assert go["nap"]["wake_at"] == "1970-01-01T00:01:00.000000Z"
    assert go["loop"]["loop_started_at"] == "1970-01-01T00:00:02.000000Z"
    assert go["child"]["child_run_id"] == "r-child" and "wake_at" not in go["ok"]
    statuses = [i["status"] for i in go["m"]["map_instances"]]
    assert statuses == ["completed", "queued", "x"]
    assert raw["root_run_id"] == "root" and raw["parent_run_id"] == "p"


def test_a_record_any_client_wrote_is_read_from_history_not_trusted():
    from dagnats_nb.wire.runs import read_record, record_state

    nb = {"v": 1, "def_hash": "h", "t": [1.0, 2.0], "steps": {"a": [1.0, 1.5, 2.0, 1.0, "w"]}}
    raw = {"run_id": "r", "workflow_id": "w", "status": "completed", "nb": nb}
    raw["steps"] = {"a": {"status": "completed", "attempts": 1, "output": "eyJ4IjoxfQ=="}}
    state = record_state(raw)
    assert state is not None and state.step("a").ended_at == 2.0 and state.output is None
    assert read_record(raw, exact=True)["started_at"] == 1.0
    assert read_record(raw)["started_at"] is None  # the text, which this record lacks
    for bad in (
        {**nb, "t": ["yesterday", 2.0]},
        {**nb, "t": [True, 2.0]},
        {**nb, "steps": {"a": [1.0, 1.5, 2.0, 1.0, 7]}},
        {**nb, "steps": {"a": "row"}},
        {**nb, "steps": {"b": [1.0, 1.5, 2.0, 1.0, "w"]}},  # no such step in Go's fields
        {**nb, "failure": {"step_id": "a"}},
        {**nb, "steps": {"a": [1.0, 1.5, 2.0, 1.0, "w", None, None, None, {"kind": "?"}]}},
    ):
        assert record_state({**raw, "nb": bad}) is None, bad
    assert record_state([raw]) is None and record_state({**raw, "nb": []}) is None


def _p(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def test_time_reads_from_records_and_from_history(eng, finished, capsys):
    """Prints p50/p99 per read (no assertion: speed is the benchmarks' business)."""
    rid = finished["linear"]
    if rid in eng.orchestrator.runs:
        evict(eng, rid)
    reads = {
        "get_run": lambda: eng.get_run(rid).status,
        "run.output": lambda: eng.run_output(rid),
        "steps": lambda: eng.steps(rid),
        "step_output": lambda: eng.step_output(rid, "s1"),
        "run_state": lambda: eng.run_state(rid),
    }
    kv = eng._call(eng._js.key_value("workflow_runs"))
    raw = eng._call(kv.get(run_key(rid))).value
    go = json.dumps({k: v for k, v in json.loads(raw).items() if k != "nb"}).encode()
    lines = []
    # a record with nb, then one without (the history tells), each read cold (the rebuilt
    # runs forgotten before each read) and warm
    for source, value in (("record", raw), ("history", go)):
        eng._call(kv.put(run_key(rid), value))
        for cold in (True, False):
            for name, read in reads.items():
                took = []
                for _ in range(50):
                    if cold:
                        forget(eng)
                    t0 = time.perf_counter()
                    read()
                    took.append((time.perf_counter() - t0) * 1000)
                label = f"{source}{'' if cold else '+lru'}"
                p50, p99 = _p(took, 0.5), _p(took, 0.99)
                lines.append(f"{label:12} {name:12} p50 {p50:6.2f} ms  p99 {p99:6.2f} ms")
    eng._call(kv.put(run_key(rid), raw))
    forget(eng)
    with capsys.disabled():
        print("\n" + "\n".join(lines))

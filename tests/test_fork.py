"""Forking a run from a step (``eng.fork``, ``dagnats fork``, ``%dagnats fork``) on a real
engine: the handlers count their calls, so a step the fork reuses is one not called again."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from conftest import notebook_shell, until

import dagnats_nb as dn
from dagnats_nb.wire import protocol

CHAIN = {
    "name": "chain",
    "steps": [
        {"id": "a", "task": "a"},
        {"id": "b", "task": "b", "depends_on": ["a"]},
        {"id": "c", "task": "c", "depends_on": ["b"]},
        {"id": "d", "task": "d", "depends_on": ["c"]},
    ],
}


def chain_handlers(eng, calls: Counter, broken: set[str] | None = None) -> None:
    """Handlers of CHAIN: each appends its letter to the list it gets (``a`` starts from
    the run's input); a step named in ``broken`` fails for good while it is there."""
    broken = broken if broken is not None else set()

    def handler(letter: str):
        def run(ctx):
            calls[letter] += 1
            if letter in broken:
                raise dn.Permanent(f"{letter} is broken")
            base = ctx.input["seen"] if letter != "a" else [ctx.input["start"]]
            return {"seen": [*base, letter]}

        return run

    for letter in "abcd":
        eng.task(letter)(handler(letter))


def started(eng, run_id: str) -> dict:
    first = eng.history(run_id, limit=1)[0]
    assert first.type == protocol.WORKFLOW_STARTED
    return first.payload


def test_fork_after_a_failed_step_reruns_it_and_what_follows_only(engine):
    calls: Counter = Counter()
    broken = {"c"}
    chain_handlers(engine, calls, broken)
    engine.register(CHAIN)
    failed = engine.run("chain", {"start": "s"}, timeout=20)
    assert failed.status == "failed" and "c is broken" in failed.error
    assert calls == Counter(a=1, b=1, c=1)

    broken.clear()  # the handler fixed
    fork = engine.fork(failed.id, "c")
    assert fork.forked_from == failed.id and fork.reused == ["a", "b"]
    assert fork.wait(20).status == "completed"
    assert fork.output == {"seen": ["s", "a", "b", "c", "d"]}
    assert calls == Counter(a=1, b=1, c=2, d=1)  # a and b were not called again

    payload = started(engine, fork.id)
    assert payload["forked_from"]["run_id"] == failed.id
    assert payload["forked_from"]["step_id"] == "c"
    assert payload["reused"] == {"a": {"seen": ["s", "a"]}, "b": {"seen": ["s", "a", "b"]}}
    assert payload["input"] == {"start": "s"}  # the source's input, kept
    events = engine.events(fork.id)
    kinds = {(r.type, r.step_id) for r in events.itertuples()}
    assert ("step.completed", "a") in kinds and ("step.queued", "a") not in kinds
    assert ("step.queued", "c") in kinds
    steps = engine.steps(fork.id).set_index("step_id")
    assert list(steps["reused"]) == [True, True, False, False]
    assert list(steps["status"]) == ["completed"] * 4
    assert engine.step_output(fork.id, "b") == {"seen": ["s", "a", "b"]}
    # the source run is left as it was
    assert engine.get_run(failed.id).status == "failed"


def test_fork_from_the_middle_of_a_chain_and_of_a_diamond(engine):
    calls: Counter = Counter()
    chain_handlers(engine, calls)
    engine.register(CHAIN)
    done = engine.run("chain", {"start": "x"}, timeout=20)
    assert done.status == "completed" and calls == Counter(a=1, b=1, c=1, d=1)
    fork = engine.fork(done.id, "b", workflow="chain")
    assert fork.reused == ["a"] and fork.wait(20).status == "completed"
    assert fork.output == {"seen": ["x", "a", "b", "c", "d"]}
    assert calls == Counter(a=1, b=2, c=2, d=2)

    @engine.task("top")
    def top(ctx):
        calls["top"] += 1
        return ctx.input * 10

    @engine.task("left")
    def left(ctx):
        calls["left"] += 1
        return ctx.input + 1

    @engine.task("right")
    def right(ctx):
        calls["right"] += 1
        return ctx.input + 2 + calls["right"]  # each call returns something new

    @engine.task("join")
    def join(ctx):
        calls["join"] += 1
        return ctx.input

    diamond = {
        "name": "diamond",
        "steps": [
            {"id": "top", "task": "top"},
            {"id": "left", "task": "left", "depends_on": ["top"]},
            {"id": "right", "task": "right", "depends_on": ["top"]},
            {"id": "join", "task": "join", "depends_on": ["left", "right"]},
        ],
    }
    first = engine.run(diamond, 1, timeout=20)
    assert first.output == {"left": 11, "right": 13}
    fork = engine.fork(first.id, "left")
    assert fork.reused == ["top", "right"] and fork.wait(20).status == "completed"
    assert fork.output == {"left": 11, "right": 13}  # right's recorded output, not a new one
    assert (calls["top"], calls["left"], calls["right"], calls["join"]) == (1, 2, 1, 2)
    fork = engine.fork(first.id, "right")
    assert fork.reused == ["top", "left"] and fork.wait(20).status == "completed"
    assert fork.output == {"left": 11, "right": 14}
    assert (calls["top"], calls["left"], calls["right"], calls["join"]) == (1, 2, 2, 3)


def test_fork_from_a_map_step_and_from_a_step_after_it(engine):
    calls: Counter = Counter()
    broken = {2}

    @engine.task("items")
    def items(ctx):
        calls["items"] += 1
        return list(range(ctx.input))

    @engine.task("square")
    def square(ctx):
        calls[ctx.map_index] += 1
        if ctx.input in broken:
            raise dn.Permanent(f"item {ctx.input} is broken")
        return ctx.input * ctx.input

    @engine.task("total")
    def total(ctx):
        calls["total"] += 1
        return sum(ctx.input)

    wf = {
        "name": "squares",
        "steps": [
            {"id": "items", "task": "items"},
            {
                "id": "sq",
                "task": "square",
                "type": "map",
                "config": {"concurrency": 1},  # in order: item 3 never starts
                "depends_on": ["items"],
            },
            {"id": "total", "task": "total", "depends_on": ["sq"]},
        ],
    }
    failed = engine.run(wf, 4, timeout=20)
    assert failed.status == "failed" and "item 2 is broken" in failed.error
    assert calls == Counter({"items": 1, 0: 1, 1: 1, 2: 1})

    broken.clear()
    fork = engine.fork(failed.id, "sq")  # a map step runs again whole
    assert fork.reused == ["items"] and fork.wait(20).status == "completed"
    assert fork.output == 0 + 1 + 4 + 9
    assert calls == Counter({"items": 1, 0: 2, 1: 2, 2: 2, 3: 1, "total": 1})
    per_item = [calls[i] for i in range(4)]

    after = engine.fork(fork.id, "total")  # a fork of a fork: the map's outputs kept
    assert after.reused == ["items", "sq"] and after.wait(20).status == "completed"
    assert after.output == 14 and calls["total"] == 2
    assert [calls[i] for i in range(4)] == per_item and calls["items"] == 1
    assert engine.step_output(after.id, "sq") == [0, 1, 4, 9]
    counts = engine.steps(after.id).set_index("step_id")["items"]
    assert counts["sq"] == "4/4" and counts.isna()["items"]  # a reused map step: its items
    assert started(engine, after.id)["forked_from"]["run_id"] == fork.id


def test_fork_from_the_middle_of_a_map_step_pays_only_for_the_items_that_did_not_finish(engine):
    """A map step runs again whole, but with its task cached the items that completed in
    the source are served from the cache: no call for them, a call for the failed item and
    for the one that never started."""
    calls: Counter = Counter()
    broken = {2}

    @engine.task("items")
    def items(ctx):
        return list(range(ctx.input))

    @engine.task("square", cache=True, version="1")  # the fix below keeps the version
    def square(ctx):
        calls[ctx.input] += 1
        if ctx.input in broken:
            raise dn.Permanent(f"item {ctx.input} is broken")
        return ctx.input * ctx.input

    wf = {
        "name": "squares-cached",
        "steps": [
            {"id": "items", "task": "items"},
            {
                "id": "sq",
                "task": "square",
                "type": "map",
                "config": {"concurrency": 1},  # in order: item 3 never starts
                "depends_on": ["items"],
            },
        ],
    }
    failed = engine.run(wf, 4, timeout=20)
    assert failed.status == "failed" and calls == Counter({0: 1, 1: 1, 2: 1})
    broken.clear()
    fork = engine.fork(failed.id, "sq")
    assert fork.reused == ["items"] and fork.wait(20).status == "completed"
    assert fork.output == [0, 1, 4, 9]
    assert calls == Counter({0: 1, 1: 1, 2: 2, 3: 1})  # items 0 and 1: no second call
    hits = [e for e in engine.history(fork.id) if e.cache and e.cache.get("hit")]
    assert sorted(e.map_index for e in hits) == [0, 1]
    assert {e.cache["run_id"] for e in hits} == {failed.id}


def test_fork_against_an_edited_version_reruns_the_changed_step_and_what_follows(engine):
    calls: Counter = Counter()
    chain_handlers(engine, calls)

    @engine.task("c2")
    def c2(ctx):
        calls["c2"] += 1
        return {"seen": [*ctx.input["seen"], "C"]}

    engine.register(CHAIN)
    done = engine.run("chain", {"start": "s"}, timeout=20)
    assert done.output == {"seen": ["s", "a", "b", "c", "d"]}
    edited = json.loads(json.dumps(CHAIN))
    edited["steps"][2]["task"] = "c2"  # the cell edited: step c runs another task
    edited["steps"].append({"id": "e", "task": "d", "depends_on": ["b"]})
    engine.register(edited)

    same = engine.fork(done.id, "d")  # no workflow: the source's own version
    assert same.reused == ["a", "b", "c"] and same.wait(20).status == "completed"
    assert same.output == {"seen": ["s", "a", "b", "c", "d"]}

    fork = engine.fork(done.id, "d", workflow="chain")  # its latest registered version
    assert fork.reused == ["a", "b"] and fork.wait(20).status == "completed"
    assert fork.output == {
        "d": {"seen": ["s", "a", "b", "C", "d"]},
        "e": {"seen": ["s", "a", "b", "d"]},
    }
    assert calls == Counter(a=1, b=1, c=1, d=4, c2=1)
    assert started(engine, fork.id)["def_hash"] != started(engine, done.id)["def_hash"]


def test_a_new_input_runs_every_step_again(engine):
    calls: Counter = Counter()
    chain_handlers(engine, calls)
    engine.register(CHAIN)
    done = engine.run("chain", {"start": "s"}, timeout=20)
    same = engine.fork(done.id, "c", input={"start": "s"})  # the same input: reuse
    assert same.reused == ["a", "b"] and same.wait(20).status == "completed"
    fork = engine.fork(done.id, "c", input={"start": "t"})
    assert fork.reused == [] and fork.wait(20).status == "completed"
    assert fork.output == {"seen": ["t", "a", "b", "c", "d"]}
    assert calls == Counter(a=2, b=2, c=3, d=3)
    assert started(engine, fork.id)["forked_from"]["run_id"] == done.id


def test_a_large_output_is_reused_through_the_forks_own_store(engine):
    calls: Counter = Counter()
    big = "x" * (1_300_000)  # over a NATS message: stored in the object store as a $ref

    @engine.task("big")
    def make_big(ctx):
        calls["big"] += 1
        return {"text": big}

    @engine.task("measure")
    def measure(ctx):
        calls["measure"] += 1
        return len(ctx.input["text"])

    wf = {
        "name": "bigflow",
        "steps": [
            {"id": "big", "task": "big"},
            {"id": "measure", "task": "measure", "depends_on": ["big"]},
        ],
    }
    done = engine.run(wf, timeout=30)
    assert done.output == len(big)
    fork = engine.fork(done.id, "measure")
    assert fork.reused == ["big"] and fork.wait(30).status == "completed"
    assert fork.output == len(big) and calls == Counter(big=1, measure=2)
    ref = started(engine, fork.id)["reused"]["big"]
    assert protocol.is_ref(ref) and ref["$ref"].startswith(f"{fork.id}/big/")  # a copy
    assert engine.step_output(fork.id, "big") == {"text": big}


def test_a_fork_keeps_its_reused_outputs_over_a_restart(tmp_path):
    data = tmp_path / "engine"
    calls: Counter = Counter()
    edited = json.loads(json.dumps(CHAIN))
    edited["steps"][3]["task"] = "later"  # no handler until after the restart
    with dn.Engine.start(data_dir=data, ack_wait="2s") as eng:
        chain_handlers(eng, calls)
        done = eng.run(CHAIN, {"start": "s"}, timeout=20)
        with pytest.warns(dn.UnservedTaskWarning):
            fork = eng.fork(done.id, "c", workflow=edited)

        def waits_at_d():
            steps = eng.steps(fork.id).set_index("step_id")
            return steps.loc["d", "status"] == "queued"

        until(waits_at_d, timeout=20, what="the fork to wait for its step d")
    assert calls == Counter(a=1, b=1, c=2, d=1)

    with (
        pytest.warns(dn.UnservedTaskWarning),
        dn.Engine.start(data_dir=data, ack_wait="2s") as again,
    ):
        chain_handlers(again, calls)
        steps = again.steps(fork.id).set_index("step_id")
        assert list(steps["reused"]) == [True, True, False, False]
        assert list(steps["status"]) == ["completed", "completed", "completed", "queued"]

        @again.task("later")
        def later(ctx):
            calls["later"] += 1
            return {"seen": [*ctx.input["seen"], "later"]}

        assert again.get_run(fork.id).wait(20).status == "completed"
        assert again.get_run(fork.id).output == {"seen": ["s", "a", "b", "c", "later"]}
    assert calls == Counter(a=1, b=1, c=2, d=1, later=1)


def test_a_bad_step_or_an_unknown_run_is_one_line_naming_it(engine):
    calls: Counter = Counter()
    chain_handlers(engine, calls)
    done = engine.run(CHAIN, {"start": "s"}, timeout=20)
    with pytest.raises(dn.RunError) as info:
        engine.fork(done.id, "zz")
    assert str(info.value) == (
        f"cannot fork run {done.id} from step 'zz': workflow 'chain' has no such step "
        "(its steps: a, b, c, d); name one of them"
    )
    with pytest.raises(dn.RunError) as info:
        engine.fork("NOPE", "a")
    assert str(info.value) == "no run with id NOPE to fork: list runs with eng.runs()"
    other = {"name": "other", "steps": [{"id": "a", "task": "a"}]}
    with pytest.raises(dn.RunError, match="against workflow 'other': pass a version of 'chain'"):
        engine.fork(done.id, "a", workflow=other)
    handled = {
        "name": "handled",
        "steps": [{"id": "a", "task": "a", "on_failure": "h"}, {"id": "h", "task": "a"}],
    }
    run = engine.run(handled, {"start": "s"}, timeout=20)
    with pytest.raises(dn.RunError, match="'h': it is an on_failure or compensate handler"):
        engine.fork(run.id, "h")
    assert calls == Counter(a=2, b=1, c=1, d=1)  # no fork started


def cli_main(capsys, *args: str) -> tuple[int, str, str]:
    from dagnats_nb.adapters.cli.main import main

    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_dagnats_fork_from_the_terminal(engine, capsys):
    calls: Counter = Counter()
    broken = {"d"}
    chain_handlers(engine, calls, broken)
    engine.register(CHAIN)
    failed = engine.run("chain", {"start": "s"}, timeout=20)
    assert failed.status == "failed"
    broken.clear()
    where = ("--data-dir", str(engine.settings.data_dir))
    code, out, err = cli_main(capsys, "fork", failed.id, "d", "--json", *where)
    assert code == 0, err
    result = json.loads(out)
    assert result["forked_from"] == failed.id and result["reused"] == ["a", "b", "c"]
    assert result["status"] == "completed"
    assert result["output"] == {"seen": ["s", "a", "b", "c", "d"]}
    assert calls == Counter(a=1, b=1, c=1, d=2)

    code, out, err = cli_main(capsys, "fork", "last", "c", "--input", '{"start": "t"}', *where)
    assert code == 0, err
    lines = out.splitlines()
    new = lines[0].split()[1]
    assert lines[0] == f"run {new} forked from step 'c' of run {result['run_id']}: reuses no step"
    assert lines[1] == f"run {new} completed"
    assert json.loads("\n".join(lines[2:])) == {"seen": ["t", "a", "b", "c", "d"]}
    code, out, err = cli_main(capsys, "fork", result["run_id"], "c", "--no-wait", *where)
    assert code == 0 and protocol.is_token(out.strip())
    assert engine.get_run(out.strip()).wait(20).status == "completed"

    code, out, err = cli_main(capsys, "fork", failed.id, "zz", *where)
    assert code == 1 and out == ""
    assert err.strip() == (
        f"dagnats: cannot fork run {failed.id} from step 'zz': workflow 'chain' has no such "
        "step (its steps: a, b, c, d); name one of them"
    )
    code, out, err = cli_main(capsys, "fork", "nope", "a", *where)
    assert code == 1
    assert err.strip() == "dagnats: no run with id nope: `dagnats runs` lists them"


def test_percent_dagnats_fork_in_a_notebook(tmp_path, capsys):
    with notebook_shell() as ip:
        eng = ip.run_line_magic("dagnats", f"start --data-dir {tmp_path / 'nb'} --set ack_wait=2s")
        try:
            calls: Counter = Counter()
            broken = {"b"}
            chain_handlers(eng, calls, broken)
            ip.run_cell_magic("dagnats", "workflow chain", "a -> b -> c -> d")
            ip.user_ns["inp"] = {"start": "n"}
            failed = ip.run_line_magic("dagnats", "run chain --input $inp")
            assert failed.status == "failed"
            broken.clear()
            capsys.readouterr()
            fork = ip.run_line_magic("dagnats", "fork last b -o forked")
            assert ip.user_ns["forked"] is fork and fork.status == "completed"
            assert fork.forked_from == failed.id and fork.reused == ["a"]
            assert fork.output == {"seen": ["n", "a", "b", "c", "d"]}
            assert calls == Counter(a=1, b=2, c=1, d=1)
            assert (
                f"run {fork.id} forked from step 'b' of run {failed.id}" in capsys.readouterr().out
            )
            steps = ip.run_line_magic("dagnats", f"steps {fork.id}")
            assert list(steps["reused"]) == [True, False, False, False]

            result = ip.run_cell(f"%dagnats fork {failed.id} nope")
            assert not result.success
            assert str(result.error_in_exec) == (
                f"cannot fork run {failed.id} from step 'nope': workflow 'chain' has no such "
                "step (its steps: a, b, c, d); name one of them"
            )
        finally:
            ip.run_line_magic("dagnats", "stop")

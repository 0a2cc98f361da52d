"""Edit, then run again paying only for what changed (``eng.rerun``, ``%dagnats rerun``,
``dagnats rerun``): the fork starts from the steps whose definition changed and from the
steps whose handler is another version now; the handlers count their calls."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from conftest import notebook_shell
from test_fork import CHAIN, chain_handlers, cli_main, started

from dagnats_nb.errors import RunError


def edited_chain(step: int, note: str) -> dict:
    raw = json.loads(json.dumps(CHAIN))
    raw["steps"][step]["metadata"] = {"note": note}
    return raw


def test_rerun_after_an_edit_runs_the_changed_step_and_what_follows(engine):
    calls: Counter = Counter()
    chain_handlers(engine, calls)
    engine.register(CHAIN)
    done = engine.run("chain", {"start": "s"}, timeout=20)
    assert calls == Counter(a=1, b=1, c=1, d=1)

    with pytest.raises(RunError) as nothing:
        engine.rerun(done.id)
    assert str(nothing.value) == (
        f"nothing changed since run {done.id}: its workflow 'chain' and the handlers that ran "
        "it are the same; edit the workflow or a handler, or fork from a step (eng.fork / "
        "%dagnats fork RUN STEP)"
    )

    engine.register(edited_chain(2, "edited"))  # step c's definition
    again = engine.rerun(done.id)
    assert again.forked_from == done.id and again.fork_steps == ["c"]
    assert again.reused == ["a", "b"] and again.wait(20).status == "completed"
    assert calls == Counter(a=1, b=1, c=2, d=2)
    source = started(engine, again.id)["forked_from"]
    assert source["run_id"] == done.id and source["step_id"] == "c"

    # a new input with nothing else changed runs every step
    fresh = engine.rerun(again.id, input={"start": "t"})
    assert fresh.reused == [] and fresh.wait(20).status == "completed"
    assert fresh.output == {"seen": ["t", "a", "b", "c", "d"]}


def test_rerun_after_a_handler_changed_runs_its_step_and_what_follows(engine):
    calls: Counter = Counter()
    chain_handlers(engine, calls)
    engine.register(CHAIN)
    done = engine.run("chain", {"start": "s"}, timeout=20)
    recorded = {r.step_id: r.handler_version for r in engine.history(done.id) if r.step_id}
    assert recorded["b"] and recorded["b"] != recorded["a"]  # one factory, two letters

    @engine.task("b")
    def b_upper(ctx):  # the handler of b edited
        calls["B"] += 1
        return {"seen": [*ctx.input["seen"], "B"]}

    again = engine.rerun(done.id)
    assert again.fork_steps == ["b"] and again.reused == ["a"]
    assert again.wait(20).status == "completed"
    assert again.output == {"seen": ["s", "a", "B", "c", "d"]}
    assert calls == Counter(a=1, b=1, B=1, c=2, d=2)

    # a handler and the definition both changed: both are where the rerun starts from
    engine.register(edited_chain(3, "edited"))

    @engine.task("c")
    def c_upper(ctx):
        calls["C"] += 1
        return {"seen": [*ctx.input["seen"], "C"]}

    both = engine.rerun(again.id)
    assert both.fork_steps == ["c", "d"] and both.reused == ["a", "b"]
    assert both.wait(20).output == {"seen": ["s", "a", "B", "C", "d"]}
    assert started(engine, both.id)["forked_from"]["also"] == ["d"]


def test_percent_dagnats_rerun_last_after_editing_the_cell(tmp_path, capsys):
    with notebook_shell() as ip:
        eng = ip.run_line_magic("dagnats", f"start --data-dir {tmp_path / 'nb'}")
        try:
            calls: Counter = Counter()
            chain_handlers(eng, calls)
            ip.run_cell_magic("dagnats", "workflow chain", "a -> b -> c -> d")
            first = ip.run_line_magic("dagnats", 'run chain --input \'{"start": "n"}\'')
            assert first.status == "completed"
            capsys.readouterr()
            ip.run_cell_magic("dagnats", "workflow chain", "a -> b -> c -> d")  # the same
            assert "changed" not in capsys.readouterr().out
            # the cell edited and run again: c gets a timeout, e is new
            edited = "a -> b -> c -> d\nb -> e\nc: timeout=30s"
            ip.run_cell_magic("dagnats", "workflow chain", edited)
            assert (
                capsys.readouterr()
                .out.strip()
                .endswith(
                    "workflow 'chain' changed: c (edited), e (new); `%dagnats rerun` runs the last "
                    "run again from there, reusing the rest"
                )
            )

            @eng.task("e")
            def e(ctx):
                calls["e"] += 1
                return ctx.input

            again = ip.run_line_magic("dagnats", "rerun last -o again")
            assert ip.user_ns["again"] is again and again.status == "completed"
            assert again.reused == ["a", "b"] and calls == Counter(a=1, b=1, c=2, d=2, e=1)
            out = capsys.readouterr().out
            forked = f"run {again.id} forked from steps 'c', 'e' of run {first.id}: reuses a, b"
            assert forked in out

            result = ip.run_cell("%dagnats rerun last")
            assert not result.success
            assert str(result.error_in_exec).startswith(f"nothing changed since run {again.id}:")
        finally:
            ip.run_line_magic("dagnats", "stop")


def test_dagnats_rerun_from_the_terminal(engine, capsys):
    calls: Counter = Counter()
    chain_handlers(engine, calls)
    engine.register(CHAIN)
    done = engine.run("chain", {"start": "s"}, timeout=20)
    engine.register(edited_chain(1, "edited"))
    where = ("--data-dir", str(engine.settings.data_dir))
    code, out, err = cli_main(capsys, "rerun", "--json", *where)  # last, by default
    assert code == 0, err
    result = json.loads(out)
    assert result["forked_from"] == done.id and result["from_steps"] == ["b"]
    assert result["reused"] == ["a"] and result["status"] == "completed"
    assert calls == Counter(a=1, b=2, c=2, d=2)

    code, out, err = cli_main(capsys, "rerun", result["run_id"], *where)
    assert code == 1 and out == ""
    assert err.startswith(f"dagnats: nothing changed since run {result['run_id']}:")

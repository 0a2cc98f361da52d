"""Two runs side by side (``eng.compare``, ``eng.diff``, ``%dagnats compare``, ``dagnats
compare``): the pure comparison case by case, then on a real engine (real nats-server)."""

from __future__ import annotations

import json
import re
from collections import Counter

import pytest
from conftest import notebook_shell

import dagnats_nb as dn
from dagnats_nb.dag import load_workflow
from dagnats_nb.dag.compare import (
    Side,
    canonical,
    check_prices,
    compare_runs,
    output_diff,
    step_order,
)
from dagnats_nb.dag.state import MapState, RunState, StepState
from dagnats_nb.observe.units import human_cost

# -- the pure comparison -------------------------------------------------------------------


def side(run_id: str, defn, steps: dict[str, StepState], outputs=None, calls=(), reused=()):
    state = RunState(run_id, defn.name, defn.version, "h", None, 0.0, steps=steps)
    state.reused = frozenset(reused)
    return Side(run_id, defn, state, outputs or {}, calls)


def done(output_at: float = 1.0, first: float = 0.0) -> StepState:
    return StepState(status="completed", first_at=first, ended_at=output_at)


V1 = load_workflow(
    {
        "name": "w",
        "steps": [
            {"id": "a", "task": "a"},
            {"id": "b", "task": "b", "depends_on": ["a"]},
            {"id": "c", "task": "c", "depends_on": ["b"]},
        ],
    }
)
V2 = load_workflow(  # c removed, b edited, n new between a and b
    {
        "name": "w",
        "steps": [
            {"id": "a", "task": "a"},
            {"id": "n", "task": "n", "depends_on": ["a"]},
            {"id": "b", "task": "b2", "depends_on": ["n"]},
        ],
    }
)


def test_the_steps_are_both_versions_dependencies_first():
    assert step_order(V1, V1) == ["a", "b", "c"]
    assert step_order(V1, V2) == ["a", "n", "b", "c"]
    assert step_order(V2, V1) == ["a", "n", "b", "c"]
    flipped = load_workflow(
        {
            "name": "w",
            "steps": [{"id": "b", "task": "b"}, {"id": "a", "task": "a", "depends_on": ["b"]}],
        }
    )
    assert sorted(step_order(V1, flipped)) == ["a", "b", "c"]  # a cycle together: all there


def test_one_changed_output_is_one_changed_row_with_its_diff():
    steps = {"a": done(), "b": done(2.5), "c": done()}
    a = side("A", V1, steps, {"a": 1, "b": {"text": "old line", "n": 1}, "c": [1]})
    b = side("B", V1, steps, {"a": 1, "b": {"text": "new line", "n": 1}, "c": [1]})
    c = compare_runs(a, b)
    assert [(r["step_id"], r["changed"]) for r in c.rows] == [
        ("a", False),
        ("b", True),
        ("c", False),
    ]
    assert not any(r["definition_changed"] or r["reused"] for r in c.rows)
    assert c.rows[1]["duration_a"] == 2.5 and c.rows[1]["tokens_a"] is None
    assert list(c.diffs) == ["b"] and c.marks == {"b": ("output",)}
    assert c.diffs["b"].splitlines() == [
        "--- run A step b (completed)",
        "+++ run B step b (completed)",
        "@@ -1,4 +1,4 @@",
        " {",
        '   "n": 1,',
        '-  "text": "old line"',
        '+  "text": "new line"',
        " }",
    ]


def test_latency_is_left_out_and_key_order_does_not_count():
    assert canonical({"x": 1, "y": 2}) == canonical({"y": 2, "x": 1})
    llm = {"text": "hi", "latency_ms": 12.5, "usage": {"prompt_tokens": 3}}
    again = {**llm, "latency_ms": 80.1}
    assert canonical([llm], ("latency_ms",)) == canonical([again], ("latency_ms",))
    assert canonical(llm) != canonical(again)
    assert output_diff(llm, again, ("a", "b")) == ""
    assert "latency_ms" in output_diff(llm, again, ("a", "b"), ignore=())


def test_definitions_statuses_and_steps_in_one_version_only():
    a = side("A", V1, {"a": done(), "b": StepState(status="failed", error="boom")}, {"a": 1})
    b = side("B", V2, {"a": done(), "n": done(), "b": done()}, {"a": 1, "n": 2, "b": 3})
    rows = {r["step_id"]: r for r in compare_runs(a, b).rows}
    assert (rows["a"]["definition_changed"], rows["a"]["changed"]) == (False, False)
    assert rows["b"]["status_a"] == "failed" and rows["b"]["status_b"] == "completed"
    assert rows["b"]["definition_changed"] and rows["b"]["changed"]  # null -> 3
    assert rows["n"]["status_a"] is None and rows["n"]["definition_changed"]
    assert rows["c"]["status_a"] == "pending" and rows["c"]["status_b"] is None
    assert not rows["c"]["changed"]  # no output in either
    assert compare_runs(a, b).marks["n"] == ("output", "definition")


def test_a_map_step_is_one_row_with_its_items():
    defn = load_workflow(
        {
            "name": "m",
            "steps": [
                {"id": "items", "task": "items"},
                {"id": "sq", "task": "sq", "type": "map", "depends_on": ["items"]},
            ],
        }
    )
    half = StepState(status="failed", map=MapState(count=4, outputs=[0, 1], done=2))
    full = StepState(status="completed", map=MapState(count=4, outputs=[0, 1, 4, 9], done=4))
    a = side("A", defn, {"items": done(), "sq": half}, {"items": [0, 1, 2, 3]})
    b = side("B", defn, {"items": done(), "sq": full}, {"items": [0, 1, 2, 3], "sq": [0, 1, 4, 9]})
    rows = compare_runs(a, b).rows
    assert [r["step_id"] for r in rows] == ["items", "sq"]
    assert (rows[1]["items_a"], rows[1]["items_b"], rows[1]["type"]) == ("2/4", "4/4", "map")


def test_tokens_from_call_records_else_from_the_outputs_usage_and_cost_at_prices():
    defn = load_workflow({"name": "l", "steps": [{"id": "ask", "task": "llm"}]})
    usage = {"model": "m1", "usage": {"prompt_tokens": 10, "completion_tokens": 5}}
    calls = [  # a retry and a map item count too; another step's call does not
        {"step_id": "ask", "model": "m1", "prompt_tokens": 100, "completion_tokens": 20},
        {"step_id": "ask", "model": "m1", "prompt_tokens": 100, "completion_tokens": 0},
        {"step_id": "ask.map.1", "model": "m2", "prompt_tokens": 1000, "completion_tokens": 0},
        {"step_id": "asked", "model": "m1", "prompt_tokens": 7, "completion_tokens": 7},
    ]
    a = side("A", defn, {"ask": done()}, {"ask": usage}, calls)
    b = side("B", defn, {"ask": done()}, {"ask": usage})  # TELEMETRY gone: the output's usage
    fork = side("F", defn, {"ask": done()}, {"ask": usage}, reused={"ask"})
    row = compare_runs(a, b, prices={"m1": (1.0, 2.0), "m2": (0.5, 0)}).rows[0]
    assert (row["tokens_a"], row["tokens_b"]) == (1220, 15)
    assert row["cost_a"] == pytest.approx(0.2 + 0.04 + 0.5)
    assert row["cost_b"] == pytest.approx(0.01 + 0.01)
    row = compare_runs(a, fork).rows[0]
    assert (row["tokens_b"], row["reused"]) == (0, True) and "cost_a" not in row
    elsewhere = [{"step_id": "other", "model": "m1", "prompt_tokens": 1, "completion_tokens": 1}]
    served = side("S", defn, {"ask": done()}, {"ask": usage}, elsewhere)  # e.g. a cache hit
    assert compare_runs(a, served).rows[0]["tokens_b"] == 0
    with pytest.raises(dn.RunError) as info:
        compare_runs(a, b, prices={"m1": (1.0, 2.0)})
    assert str(info.value) == (
        "prices has no entry for model 'm2' (step 'ask' of run A): add prices['m2'] = "
        "(in_per_1k, out_per_1k)"
    )
    for bad in ({"m1": 3}, {"m1": (1, -1)}, [("m1", 1, 2)]):
        with pytest.raises(dn.RunError, match="in_per_1k, out_per_1k"):
            check_prices(bad)
    assert [human_cost(v) for v in (0, 0.00042, 0.0315, 1.25, 1234.5)] == [
        "0",
        "0.000420",
        "0.0315",
        "1.25",
        "1,234.50",
    ]


def test_runs_of_two_workflows_are_not_compared():
    other = load_workflow({"name": "other", "steps": [{"id": "a", "task": "a"}]})
    with pytest.raises(dn.RunError) as info:
        compare_runs(side("A", V1, {}), side("B", other, {}))
    assert str(info.value) == (
        "cannot compare run A of workflow 'w' with run B of workflow 'other': compare two "
        "runs of one workflow"
    )


# -- on a real engine ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def eng(tmp_path_factory):
    e = dn.Engine.start(
        data_dir=tmp_path_factory.mktemp("compare") / "engine",
        ack_wait="2s",
        llm_sim_latency_ms=5,
        llm_sim_latency_sigma=0,
        llm_sim_tokens_per_s=0,
    )
    yield e
    e.stop()


def chain(name: str, eng, factor: dict[str, int], calls: Counter) -> dict:
    """A workflow a -> b -> c whose step b multiplies by ``factor["b"]`` (c's output does
    not depend on b's value)."""

    def step(letter: str):
        def run(ctx):
            calls[letter] += 1
            if letter == "a":
                return {"v": ctx.input["n"]}
            if letter == "b":
                return {"v": ctx.input["v"] * factor["b"], "note": "kept\nas is"}
            return {"keys": sorted(ctx.input)}

        return run

    for letter in "abc":
        eng.task(f"{name}-{letter}")(step(letter))
    return {
        "name": name,
        "steps": [
            {"id": "a", "task": f"{name}-a"},
            {"id": "b", "task": f"{name}-b", "depends_on": ["a"]},
            {"id": "c", "task": f"{name}-c", "depends_on": ["b"]},
        ],
    }


def test_two_runs_with_one_changed_step(eng):
    factor, calls = {"b": 1}, Counter()
    wf = chain("one", eng, factor, calls)
    first = eng.run(wf, {"n": 3}, timeout=20)
    factor["b"] = 2  # the handler changed
    second = eng.run("one", {"n": 3}, timeout=20)
    assert first.status == second.status == "completed"
    df = eng.compare(first.id, second)  # an id or a Run
    rows = df.set_index("step_id")
    assert list(rows.index) == ["a", "b", "c"]
    assert list(rows["changed"]) == [False, True, False]
    assert list(rows["status_a"]) == list(rows["status_b"]) == ["completed"] * 3
    assert not rows["reused"].any() and not rows["definition_changed"].any()
    assert rows["tokens_a"].isna().all()  # no LLM call
    assert (rows["duration_a"] > 0).all() and (rows["duration_b"] > 0).all()
    assert df.attrs["runs"] == (first.id, second.id)
    diff = df.attrs["diffs"]["b"]
    assert list(df.attrs["diffs"]) == ["b"]
    assert '-  "v": 3' in diff and '+  "v": 6' in diff and '"note"' in diff
    assert eng.diff(first.id, second.id) == diff == eng.diff(first.id, second.id, "b")
    assert eng.diff(first.id, second.id, "a") == ""
    shown = repr(df)  # human units, as the other tables
    assert re.search(r"\d+ ms", shown) and "duration_a" in shown
    assert "`.wide()` shows them" in shown
    with pytest.raises(dn.RunError) as info:
        eng.diff(first.id, second.id, "zz")
    assert str(info.value) == (
        f"no step 'zz' in runs {first.id} and {second.id} of workflow 'one' (its steps: "
        "a, b, c); name one of them"
    )


def test_a_fork_and_a_fork_against_an_edited_version(eng):
    factor, calls = {"b": 1}, Counter()
    wf = chain("forked", eng, factor, calls)
    source = eng.run(wf, {"n": 2}, timeout=20)
    fork = eng.fork(source.id, "c")
    assert fork.wait(20).status == "completed"
    rows = eng.compare(source.id, fork.id).set_index("step_id")
    assert list(rows["reused"]) == [True, True, False]
    assert not rows["changed"].any() and not rows["definition_changed"].any()
    assert rows.loc["a", "duration_b"] != rows.loc["a", "duration_b"]  # NaN: it did not run

    @eng.task("forked-b2")
    def b2(ctx):
        return {"v": -ctx.input["v"], "note": "kept\nas is"}

    edited = json.loads(json.dumps(wf))
    edited["steps"][1]["task"] = "forked-b2"
    eng.register(edited)
    again = eng.fork(source.id, "c", workflow="forked")  # b changed: it runs again
    assert again.wait(20).status == "completed" and again.reused == ["a"]
    df = eng.compare(source, again)
    rows = df.set_index("step_id")
    assert list(rows["reused"]) == [True, False, False]
    assert list(rows["definition_changed"]) == [False, True, False]
    assert list(rows["changed"]) == [False, True, False]
    assert '-  "v": 2' in df.attrs["diffs"]["b"] and '+  "v": -2' in df.attrs["diffs"]["b"]


def test_failed_and_completed_steps_and_a_map_step(eng):
    broken = {2}

    @eng.task("cmp-items")
    def items(ctx):
        return list(range(ctx.input))

    @eng.task("cmp-square")
    def square(ctx):
        if ctx.input in broken:
            raise dn.Permanent(f"item {ctx.input} is broken")
        return ctx.input * ctx.input

    @eng.task("cmp-total")
    def total(ctx):
        return sum(ctx.input)

    wf = {
        "name": "squares",
        "steps": [
            {"id": "items", "task": "cmp-items"},
            {
                "id": "sq",
                "task": "cmp-square",
                "type": "map",
                "config": {"concurrency": 1},
                "depends_on": ["items"],
            },
            {"id": "total", "task": "cmp-total", "depends_on": ["sq"]},
        ],
    }
    failed = eng.run(wf, 4, timeout=20)
    assert failed.status == "failed"
    broken.clear()
    fixed = eng.run("squares", 4, timeout=20)
    assert fixed.status == "completed"
    df = eng.compare(failed.id, fixed.id)
    rows = df.set_index("step_id")
    assert list(rows.index) == ["items", "sq", "total"]  # a map step is one row
    assert list(rows["status_a"]) == ["completed", "failed", "pending"]
    assert list(rows["status_b"]) == ["completed"] * 3
    assert (rows.loc["sq", "items_a"], rows.loc["sq", "items_b"]) == ("2/4", "4/4")
    assert list(rows["changed"]) == [False, True, True]
    assert "+  9" in df.attrs["diffs"]["sq"] and "-null" in df.attrs["diffs"]["sq"]
    assert "items_a" in repr(df.wide()) and "items_a" not in repr(df).splitlines()[0]


def test_llm_tokens_are_counted_and_priced(eng):
    wf = {
        "name": "asking",
        "steps": [
            {"id": "ask", "task": "llm", "config": {"prompt": "Name three colours: {input}"}}
        ],
    }
    first = eng.run(wf, "warm ones", timeout=30)
    second = eng.run("asking", "warm ones", timeout=30)
    assert first.status == second.status == "completed", first.error
    row = eng.compare(first.id, second.id).iloc[0]
    usage = first.output["usage"]
    assert row["tokens_a"] == usage["prompt_tokens"] + usage["completion_tokens"] > 0
    assert row["tokens_b"] == row["tokens_a"]
    assert not row["changed"]  # the same reply; only latency_ms differs
    model = first.output["model"]
    priced = eng.compare(first.id, second.id, prices={model: (1.0, 2.0)}).iloc[0]
    expected = usage["prompt_tokens"] / 1000 + usage["completion_tokens"] * 2 / 1000
    assert priced["cost_a"] == pytest.approx(expected) == priced["cost_b"]
    with pytest.raises(dn.RunError, match=f"prices has no entry for model '{model}'"):
        eng.compare(first.id, second.id, prices={"other": (1.0, 1.0)})


def test_unknown_runs_and_runs_of_two_workflows_are_one_line_errors(eng):
    calls = Counter()
    one = eng.run(chain("left", eng, {"b": 1}, calls), {"n": 1}, timeout=20)
    two = eng.run(chain("right", eng, {"b": 1}, calls), {"n": 1}, timeout=20)
    with pytest.raises(dn.RunError) as info:
        eng.compare(one.id, two.id)
    assert str(info.value) == (
        f"cannot compare run {one.id} of workflow 'left' with run {two.id} of workflow "
        "'right': compare two runs of one workflow"
    )
    for bad in ("NOPE", "not a token"):
        with pytest.raises(dn.RunError) as info:
            eng.compare(one.id, bad)
        assert str(info.value) == f"no run with id {bad} to compare: list runs with eng.runs()"


def cli_main(capsys, *args: str) -> tuple[int, str, str]:
    from dagnats_nb.adapters.cli.main import main

    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_dagnats_compare_from_the_terminal(eng, capsys):
    factor, calls = {"b": 1}, Counter()
    first = eng.run(chain("term", eng, factor, calls), {"n": 5}, timeout=20)
    factor["b"] = 3
    second = eng.run("term", {"n": 5}, timeout=20)
    where = ("--data-dir", str(eng.settings.data_dir))
    code, out, err = cli_main(capsys, "compare", first.id, "last", *where)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == f"run a {first.id}, run b {second.id}: 1 output changed (b)"
    assert lines[1].split()[:4] == ["step_id", "status_a", "status_b", "duration_a"]
    assert [ln.split()[0] for ln in lines[2:5]] == ["a", "b", "c"]
    assert "--wide shows them" in out
    assert f"--- run {first.id} step b (completed)" in out
    assert '-  "v": 5' in out and '+  "v": 15' in out

    code, out, err = cli_main(capsys, "compare", first.id, second.id, "--json", *where)
    assert code == 0, err
    result = json.loads(out)
    assert (result["run_a"], result["run_b"]) == (first.id, second.id)
    assert [s["changed"] for s in result["steps"]] == [False, True, False]
    assert result["steps"][0]["tokens_a"] is None and result["steps"][0]["duration_a"] > 0
    assert list(result["diffs"]) == ["b"] and '+  "v": 15' in result["diffs"]["b"]

    code, out, err = cli_main(capsys, "compare", first.id, "nope", *where)
    assert code == 1 and out == ""
    assert err.strip() == "dagnats: no run with id nope: `dagnats runs` lists them"


def test_percent_dagnats_compare_draws_both_runs_with_the_changed_step_marked(tmp_path):
    with notebook_shell() as ip:
        eng = ip.run_line_magic("dagnats", f"start --data-dir {tmp_path / 'nb'} --set ack_wait=2s")
        try:
            factor, calls = {"b": 1}, Counter()
            first = eng.run(chain("nb", eng, factor, calls), {"n": 4}, timeout=20)
            factor["b"] = 10
            eng.run("nb", {"n": 4}, timeout=20)
            ip.user_ns["first"] = first
            view = ip.run_line_magic("dagnats", "compare $first last -o cmp")
            assert ip.user_ns["cmp"] is view
            assert list(view.table["changed"]) == [False, True, False]
            page = view._repr_html_()
            marked = re.findall(r'<g class="dagnats-step" data-step="(\w+)"[^>]*data-changed', page)
            assert marked == ["b", "b"]  # in both drawings, and no other step
            assert page.count('class="dagnats-dag"') == 2
            assert page.count('<rect class="dagnats-changed"') == 2
            assert 'data-changed="output"' in page and "output changed" in page
            assert '<details class="dagnats-diff" data-step="b">' in page
            assert "+  &quot;v&quot;: 40" in page
            assert '<table border="1" class="dataframe dagnats-table">' in page
            assert "output changed (b)" in repr(view)

            result = ip.run_cell("%dagnats compare $first nope")
            assert not result.success
            assert str(result.error_in_exec) == "no run with id nope: list runs with eng.runs()"
        finally:
            ip.run_line_magic("dagnats", "stop")

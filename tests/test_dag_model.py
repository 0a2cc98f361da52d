"""Unit tests of dagnats_nb.dag: durations, models, validation, graph helpers, loading."""

from __future__ import annotations

import copy
import json
import re
from datetime import timedelta
from pathlib import Path
from typing import get_args

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dagnats_nb.dag import (
    SUPPORTED_STEP_TYPES,
    AgentLoopConfig,
    MapConfig,
    ParentCond,
    RetryPolicy,
    StepDef,
    WorkflowDef,
    format_duration,
    load_workflow,
    parse_duration,
    validate,
)
from dagnats_nb.dag.model import StepType
from dagnats_nb.dag.validate import check
from dagnats_nb.errors import UnsupportedStepType, WorkflowError

SCHEMA_DURATION = re.compile(r"^[0-9]+(ns|us|µs|ms|s|m|h)+$")


def step(step_id: str, **fields) -> dict:
    return {"id": step_id, "task": fields.pop("task", step_id), **fields}


def wf(*steps: dict, **top) -> dict:
    return {"name": top.pop("name", "w"), "version": "1.0", "steps": list(steps), **top}


def problems_of(data) -> list[str]:
    with pytest.raises(WorkflowError) as info:
        load_workflow(data)
    assert info.type is WorkflowError, info.value
    problems = info.value.problems
    assert str(info.value) == "; ".join(problems)
    return problems


def assert_problem(data, *parts: str) -> None:
    problems = problems_of(data)
    assert any(all(p in line for p in parts) for line in problems), problems


# --- durations -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1h30m", timedelta(hours=1, minutes=30)),
        ("500ms", timedelta(milliseconds=500)),
        ("1.5s", timedelta(seconds=1.5)),
        ("2h45m30.5s", timedelta(hours=2, minutes=45, seconds=30.5)),
        ("300us", timedelta(microseconds=300)),
        ("300µs", timedelta(microseconds=300)),
        ("300μs", timedelta(microseconds=300)),
        ("10ns", timedelta(0)),
        ("1500ns", timedelta(microseconds=2)),
        ("0", timedelta(0)),
        ("0s", timedelta(0)),
        ("+5s", timedelta(seconds=5)),
        (".5s", timedelta(milliseconds=500)),
        ("1m1ms", timedelta(minutes=1, milliseconds=1)),
        ("-0s", timedelta(0)),
    ],
)
def test_parse_duration_strings(text, expected):
    assert parse_duration(text, where="x") == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1_000_000_000, timedelta(seconds=1)),
        (0, timedelta(0)),
        (1_500, timedelta(microseconds=2)),
        (1e9, timedelta(seconds=1)),
        (timedelta(minutes=3), timedelta(minutes=3)),
    ],
)
def test_parse_duration_numbers_and_timedeltas(value, expected):
    assert parse_duration(value, where="x") == expected


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("abc", '"abc" is not a duration'),
        ("", '"" is not a duration'),
        ("1x", "is not a duration"),
        ("1h 30m", "is not a duration"),
        ("1.5.s", "is not a duration"),
        ("s", "is not a duration"),
        ("-1s", "is negative"),
        (-5, "is negative"),
        (timedelta(seconds=-1), "is negative"),
        (True, "true is not a duration"),
        (None, "null is not a duration"),
        ([1], "is not a duration"),
        (1.5, "not a whole number of nanoseconds"),
        (2**64, "too large"),
        ("3000000h", "too large"),
    ],
)
def test_parse_duration_rejects(value, says):
    where = "workflow 'x' step 'fetch' field 'timeout'"
    with pytest.raises(WorkflowError) as info:
        parse_duration(value, where=where)
    message = str(info.value)
    assert message.startswith(where + ": ")
    assert says in message
    assert info.value.problems == [message]


def test_parse_duration_message_suggests_go_duration():
    with pytest.raises(WorkflowError, match='use a Go duration such as "30s" or integer nano'):
        parse_duration("abc", where="here")


@pytest.mark.parametrize(
    ("td", "text"),
    [
        (timedelta(hours=1, minutes=30), "90m"),
        (timedelta(hours=2), "2h"),
        (timedelta(seconds=1.5), "1500ms"),
        (timedelta(microseconds=300), "300us"),
        (timedelta(microseconds=1_000_001), "1000001us"),
        (timedelta(0), "0s"),
        (timedelta(days=2), "48h"),
    ],
)
def test_format_duration(td, text):
    assert format_duration(td) == text
    assert SCHEMA_DURATION.match(text)
    assert parse_duration(text, where="x") == td


def test_format_duration_rejects_negative():
    with pytest.raises(ValueError, match="negative"):
        format_duration(timedelta(seconds=-1))


@given(st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=106_000)))
def test_duration_format_parse_round_trip(td):
    text = format_duration(td)
    assert SCHEMA_DURATION.match(text)
    assert parse_duration(text, where="x") == td


@given(st.integers(min_value=0, max_value=2**63 - 1))
def test_integer_nanoseconds_round_to_microseconds(ns):
    td = parse_duration(ns, where="x")
    micros = (td.days * 86_400 + td.seconds) * 1_000_000 + td.microseconds
    assert abs(micros * 1000 - ns) <= 500


def test_durations_in_model_fields_accept_all_forms():
    defn = load_workflow(
        wf(
            step(
                "a",
                timeout="1h30m",
                retry={"max_attempts": 1, "strategy": "fixed", "initial_delay": 2_000_000_000},
            ),
            step("b", timeout=timedelta(seconds=7), depends_on=["a"]),
            timeout=60_000_000_000,
        )
    )
    assert defn.timeout == timedelta(minutes=1)
    assert defn.step("a").timeout == timedelta(minutes=90)
    assert defn.step("a").retry.initial_delay == timedelta(seconds=2)
    assert defn.step("b").timeout == timedelta(seconds=7)


def test_bad_duration_in_a_step_names_workflow_step_and_field():
    assert_problem(
        wf(step("fetch", timeout="abc"), name="x"),
        "workflow 'x' step 'fetch': field 'timeout':",
        '"abc" is not a duration',
    )
    assert_problem(
        wf(step("fetch", retry={"max_attempts": 1, "strategy": "fixed", "initial_delay": -1})),
        "step 'fetch'",
        "field 'retry.initial_delay'",
        "is negative",
    )


# --- retry policy --------------------------------------------------------------------------


def policy(strategy: str, **kw) -> RetryPolicy:
    return RetryPolicy(max_attempts=5, strategy=strategy, initial_delay="1s", **kw)


def test_fixed_delay():
    assert [policy("fixed").delay(n) for n in (1, 2, 7)] == [timedelta(seconds=1)] * 3


def test_linear_delay():
    assert [policy("linear").delay(n).total_seconds() for n in (1, 2, 3)] == [1, 2, 3]


def test_exponential_delay():
    p = policy("exponential", multiplier=3.0)
    assert [p.delay(n).total_seconds() for n in (1, 2, 3, 4)] == [1, 3, 9, 27]
    assert policy("exponential").delay(4) == timedelta(seconds=8)


@pytest.mark.parametrize("strategy", ["fixed", "linear", "exponential"])
def test_delay_capped_by_max_delay(strategy):
    p = RetryPolicy(max_attempts=5, strategy=strategy, initial_delay="4s", max_delay="5s")
    assert p.delay(1) == timedelta(seconds=4)
    assert p.delay(3) <= timedelta(seconds=5)
    assert p.delay(1000) <= timedelta(seconds=5)


@pytest.mark.parametrize("strategy", ["linear", "exponential"])
def test_huge_attempt_numbers_do_not_overflow(strategy):
    capped = policy(strategy, max_delay="10s")
    assert capped.delay(10**9) == timedelta(seconds=10)
    huge = policy(strategy).delay(10**15)
    assert huge == timedelta(microseconds=(2**63 - 1) // 1000)  # Go's longest duration
    assert parse_duration(format_duration(huge), where="x") == huge


def test_exponential_with_zero_initial_delay_stays_zero():
    p = RetryPolicy(max_attempts=1, strategy="exponential", initial_delay=0)
    assert p.delay(10**9) == timedelta(0)


def test_delay_needs_attempt_from_one():
    with pytest.raises(ValueError):
        policy("fixed").delay(0)


@pytest.mark.parametrize(
    ("retry", "field", "says"),
    [
        ({"max_attempts": -1}, "retry.max_attempts", "must be >= 0"),
        ({"max_attempts": 100_001}, "retry.max_attempts", "must be <= 100000"),
        ({"strategy": "random"}, "retry.strategy", "must be one of 'fixed'"),
        ({"multiplier": 0}, "retry.multiplier", "must be > 0"),
        ({"initial_delay": None}, "retry.initial_delay", "not a duration"),
    ],
)
def test_bad_retry_policy(retry, field, says):
    base = {"max_attempts": 2, "strategy": "fixed", "initial_delay": "1s"}
    assert_problem(wf(step("a", retry={**base, **retry})), "step 'a'", f"field '{field}'", says)


def test_retry_resolution_order():
    explicit = {"max_attempts": 1, "strategy": "linear", "initial_delay": "1s"}
    default = {"max_attempts": 9, "strategy": "exponential", "initial_delay": "2s"}
    with_default = load_workflow(
        wf(step("a", retry=explicit, retries=4), step("b", retries=4), default_retry=default)
    )
    assert with_default.retry_policy("a").strategy == "linear"
    assert with_default.retry_policy("b").max_attempts == 9
    bare = load_workflow(wf(step("a", retries=4), step("b", retries=0), step("c")))
    legacy = bare.retry_policy("a")
    assert (legacy.max_attempts, legacy.strategy) == (4, "fixed")
    assert legacy.initial_delay == legacy.max_delay == timedelta(seconds=5)
    assert bare.retry_policy("b") is None
    assert bare.retry_policy("c") is None


# --- ParentCond ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("output", "op", "value", "expected"),
    [
        ({"n": 5}, "==", 5, True),
        ({"n": 5}, "==", 5.0, True),
        ({"n": 5}, "!=", 4, True),
        ({"n": 5}, "<", 10, True),
        ({"n": 5}, ">", 10, False),
        ({"n": 5}, "<=", 5, True),
        ({"n": 5.5}, ">=", 5, True),
        ({"n": 10}, "<", 9, False),
        ({"s": "apple"}, "<", "banana", True),
        ({"s": "b"}, ">=", "abc", True),
        ({"s": "x"}, "==", "x", True),
        ({"b": True}, "==", True, True),
        ({"b": True}, "!=", False, True),
        ({"b": True}, "<", False, False),
        ({"b": True}, "==", 1, False),
        ({"n": 1}, "==", True, False),
        ({"n": 5}, "<", "10", False),
        ({"n": 5}, "!=", "5", False),
        ({"s": "5"}, ">", 1, False),
        ({"x": None}, "==", None, False),
        ({"x": [1]}, "==", [1], False),
        ({"x": {"a": 1}}, "<", {"a": 2}, False),
    ],
)
def test_parent_cond_compares(output, op, value, expected):
    field = next(iter(output))
    cond = ParentCond(step_id="p", field=field, op=op, value=value)
    assert cond.matches(output) is expected


@pytest.mark.parametrize("output", [None, [1, 2], "text", 5, {"other": 1}, b'{"n": 1}'])
def test_parent_cond_false_without_the_field(output):
    assert ParentCond(step_id="p", field="n", op="==", value=1).matches(output) is False


# --- graph helpers -----------------------------------------------------------------------


def test_graph_helpers_with_handlers():
    defn = load_workflow(
        wf(
            step("fetch", on_failure="report", compensate="undo"),
            step("left", depends_on=["fetch"]),
            step("right", depends_on=["fetch"]),
            step("join", depends_on=["right", "left"]),
            step("report"),
            step("undo"),
        )
    )
    assert defn.step_ids == ["fetch", "left", "right", "join", "report", "undo"]
    assert defn.handler_steps == ["report", "undo"]
    assert defn.roots == ["fetch"]
    assert defn.terminal_steps == ["join"]
    assert defn.dependents("fetch") == ["left", "right"]
    assert defn.dependents("join") == []
    assert defn.topological_order == ["fetch", "left", "right", "join", "report", "undo"]


def test_topological_order_puts_dependencies_first_and_keeps_ties_in_order():
    defn = load_workflow(
        wf(step("d", depends_on=["c", "b"]), step("c", depends_on=["a"]), step("b"), step("a"))
    )
    order = defn.topological_order
    assert order == ["b", "a", "c", "d"]
    for s in defn.steps:
        assert all(order.index(dep) < order.index(s.id) for dep in s.depends_on)


def test_topological_order_of_an_unchecked_cycle_raises():
    defn = WorkflowDef.model_validate(wf(step("a", depends_on=["b"]), step("b", depends_on=["a"])))
    with pytest.raises(WorkflowError, match="cycle between steps a -> b -> a"):
        _ = defn.topological_order


def test_unknown_step_lookups_name_the_step():
    defn = load_workflow(wf(step("a")))
    with pytest.raises(WorkflowError, match="workflow 'w': no step 'zz'"):
        defn.step("zz")
    with pytest.raises(WorkflowError, match="no step 'zz'"):
        defn.dependents("zz")
    with pytest.raises(WorkflowError, match="no step 'zz'"):
        defn.retry_policy("zz")


# --- validation rules -------------------------------------------------------------------


def test_valid_definition_has_no_problems():
    defn = load_workflow(wf(step("fetch-urls"), step("report-error", depends_on=["fetch-urls"])))
    assert validate(defn) == []
    check(defn)


def test_empty_name():
    assert_problem(
        wf(step("a"), name=""), "workflow (unnamed)", "field 'name'", "must not be empty"
    )


def test_an_empty_version_is_accepted_as_go_accepts_it():
    defn = load_workflow(wf(step("a"), version=""))
    assert defn.version == "" and defn.to_dict()["version"] == ""


def test_no_steps():
    assert_problem(wf(), "workflow 'w'", "field 'steps'", "at least one step")


def test_duplicate_step_ids():
    assert_problem(wf(step("a"), step("b"), step("a")), "step 'a'", "duplicate step id", "#1")


def test_empty_step_id_named_by_position():
    assert_problem(wf(step("a"), step("", task="t")), "step #2", "field 'id'", "must not be empty")


@pytest.mark.parametrize("step_type", ["normal", "map", "agent_loop", "agent"])
def test_worker_run_steps_need_a_task(step_type):
    data = wf(step("src"), {"id": "a", "type": step_type, "depends_on": ["src"]})
    assert_problem(data, "workflow 'w' step 'a'", "field 'task'", f"'{step_type}' step needs")
    data["steps"][1]["task"] = ""
    assert_problem(data, "step 'a'", "field 'task'")


@pytest.mark.parametrize(
    ("data", "where", "bad"),
    [
        (wf(step("a"), name="my.flow"), "field 'name'", "'.'"),
        (wf(step("a*")), "step 'a*': field 'id'", "'*'"),
        (wf(step("a", task="do it")), "step 'a': field 'task'", "whitespace"),
        (wf(step("a", task="x>")), "field 'task'", "'>'"),
        (wf(step("a\tb")), "field 'id'", "whitespace"),
    ],
)
def test_ids_must_be_nats_tokens(data, where, bad):
    assert_problem(data, where, bad, "must not contain '.', '*', '>' or whitespace")


def test_unknown_dependency():
    assert_problem(
        wf(step("a"), step("b", depends_on=["zz"])),
        "workflow 'w' step 'b'",
        "field 'depends_on'",
        "unknown step 'zz'",
    )


def test_repeated_dependency():
    assert_problem(wf(step("a"), step("b", depends_on=["a", "a"])), "step 'b'", "'a' twice")


def test_self_dependency():
    assert_problem(wf(step("a", depends_on=["a"])), "step 'a'", "may not depend on itself")


@pytest.mark.parametrize("key", ["on_failure", "compensate"])
def test_handler_references(key):
    assert_problem(wf(step("a", **{key: "zz"})), "step 'a'", f"field '{key}'", "unknown step 'zz'")
    assert_problem(wf(step("a", **{key: "a"})), "step 'a'", f"field '{key}'", "own handler")
    data = wf(step("a", **{key: "h"}), step("b"), step("h", depends_on=["b"]))
    assert_problem(data, "step 'a'", f"field '{key}'", "'h' must not have depends_on")


def test_negative_retries():
    assert_problem(
        wf(step("greet", retries=-1), name="hello"),
        "workflow 'hello' step 'greet': field 'retries': must be >= 0",
    )


def test_negative_retries_set_after_construction():
    defn = load_workflow(wf(step("greet")))
    defn.steps[0].retries = -2
    assert any("step 'greet': field 'retries'" in p for p in validate(defn))


def test_agent_loop_needs_max_iterations():
    assert_problem(
        wf(step("a", type="agent_loop")), "step 'a'", "field 'config'", "max_iterations > 0"
    )
    assert_problem(
        wf(step("a", type="agent_loop", config={"max_iterations": 0})),
        "step 'a'",
        "field 'config.max_iterations'",
        "must be > 0",
    )
    assert_problem(
        wf(step("a", type="agent_loop", loop={"max_iterations": 0})),
        "step 'a'",
        "field 'loop.max_iterations'",
        "must be > 0",
    )
    assert_problem(
        wf(step("a", type="agent_loop", config={"loop_delay": "1s"})),
        "field 'config.max_iterations'",
        "is required",
    )


def test_agent_loop_settings_in_both_places():
    data = wf(
        step("a", type="agent_loop", loop={"max_iterations": 2}, config={"max_iterations": 3})
    )
    assert_problem(data, "step 'a'", "field 'config'", "both 'loop' and 'config'")


def test_only_agent_loop_takes_loop_settings():
    assert_problem(
        wf(step("a", loop={"max_iterations": 3})),
        "step 'a'",
        "field 'loop'",
        "only agent_loop steps",
    )


def test_skip_if_parent_must_be_a_dependency():
    data = wf(step("a"), step("b"), step("c", depends_on=["a"], skip_if=cond("b")))
    assert_problem(data, "step 'c'", "field 'skip_if.step_id'", "'b' must be one of")


def test_skip_if_operator():
    data = wf(step("a"), step("c", depends_on=["a"], skip_if=cond("a", op="=~")))
    assert_problem(data, "step 'c'", "field 'skip_if.op'", "must be one of '=='")


def cond(parent: str, op: str = "==") -> dict:
    return {"step_id": parent, "field": "ok", "op": op, "value": True}


def test_cycle_is_reported_in_order():
    data = wf(
        step("a", depends_on=["c"]),
        step("b", depends_on=["a"]),
        step("c", depends_on=["b"]),
        step("d", depends_on=["c"]),
    )
    assert "workflow 'w': cycle between steps a -> b -> c -> a" in problems_of(data)


def test_two_cycles_are_both_reported():
    data = wf(
        step("x", depends_on=["y"]),
        step("y", depends_on=["x"]),
        step("p", depends_on=["q", "y"]),
        step("q", depends_on=["p"]),
    )
    problems = problems_of(data)
    assert "workflow 'w': cycle between steps x -> y -> x" in problems
    assert "workflow 'w': cycle between steps p -> q -> p" in problems


@pytest.mark.parametrize(
    ("config", "says"),
    [
        ({"max_items": 0}, "must be > 0"),
        ({"max_items": 10_001}, "must be <= 10000"),
        ({"max_items": "ten"}, "must be an integer"),
        ({"concurrency": 0}, "must be > 0"),
    ],
)
def test_map_settings(config, says):
    data = wf(step("src"), step("m", type="map", depends_on=["src"], config=config))
    field = next(iter(config))
    assert_problem(data, "step 'm'", f"field 'config.{field}'", says)


def test_map_needs_one_dependency_and_no_nesting():
    assert_problem(wf(step("m", type="map")), "step 'm'", "field 'depends_on'", "exactly one")
    data = wf(
        step("a"), step("m", type="map", depends_on=["a"]), step("n", type="map", depends_on=["m"])
    )
    assert_problem(data, "step 'n'", "nested map steps are not supported")


def test_triggers_need_exactly_one_kind():
    data = wf(
        step("a"),
        triggers=[{"id": "t", "cron": {"expression": "* * * * *"}, "subject": {"subject": "x"}}],
    )
    assert_problem(data, "field 'triggers[0]'", "exactly one of cron")
    assert_problem(
        wf(step("a"), triggers=[{"id": "t", "cron": {}}]),
        "field 'triggers[0].cron.expression'",
        "is required",
    )


def test_unknown_top_level_field():
    assert_problem(
        wf(step("a"), name="hello", retry_policy={}),
        "workflow 'hello': field 'retry_policy': unknown field",
        "allowed: name, version, steps",
    )


def test_unknown_step_field_suggests_the_right_one():
    assert_problem(
        wf(step("a", dependson=["x"])), "step 'a'", "'dependson'", "did you mean 'depends_on'?"
    )


def test_pydantic_type_errors_name_step_by_id():
    assert_problem(wf(step("a"), step("b", depends_on="a")), "step 'b': field 'depends_on'", "list")
    assert_problem(wf(step("a", metadata={"k": 1})), "step 'a': field 'metadata.k'", "string")
    assert_problem(wf(step("a", type="teleport")), "step 'a': field 'type'", '"teleport"')
    assert_problem(wf("nope"), "workflow 'w' step #1", "must be a mapping")


def test_several_problems_are_all_reported():
    problems = problems_of(wf(step("a", depends_on=["x"]), step("b", on_failure="y")))
    assert len(problems) == 2
    assert "unknown step 'x'" in problems[0] and "unknown step 'y'" in problems[1]


def test_structural_problems_come_before_unsupported_types():
    data = wf({"id": "s", "type": "sleep", "depends_on": ["missing"]})
    with pytest.raises(WorkflowError) as info:
        load_workflow(data)
    assert not isinstance(info.value, UnsupportedStepType)
    assert "unknown step 'missing'" in str(info.value)


def test_supported_step_types():
    assert {
        "normal",
        "map",
        "agent_loop",
        "sleep",
        "wait_for_event",
        "approval",
        "sub_workflow",
        "agent",
        "planner",
        "respond",
    } == SUPPORTED_STEP_TYPES
    assert frozenset(get_args(StepType)) == SUPPORTED_STEP_TYPES  # every type Go has


# --- configs ------------------------------------------------------------------------------


def test_loop_config_from_config_and_from_loop():
    from_config = StepDef(
        id="a",
        task="a",
        type="agent_loop",
        config={"max_iterations": 3, "loop_delay": 1_000_000_000, "model": "m"},
    )
    assert from_config.loop_config == AgentLoopConfig(max_iterations=3, loop_delay="1s")
    assert from_config.config == {"model": "m"}
    from_loop = StepDef(id="a", task="a", type="agent_loop", loop={"max_iterations": 4})
    assert from_loop.loop_config.max_iterations == 4
    assert StepDef(id="a", task="a").loop_config is None


def test_map_config():
    assert StepDef(id="m", task="t", type="map").map_config == MapConfig()
    assert MapConfig().max_items == 1000 and MapConfig().concurrency is None
    got = StepDef(id="m", task="t", type="map", config={"max_items": 5, "concurrency": 2})
    assert got.map_config == MapConfig(max_items=5, concurrency=2)


def test_type_settings_are_written_in_config_as_go_reads_them():
    data = wf(
        step("src"),
        step(
            "m",
            type="map",
            depends_on=["src"],
            metadata={"team": "x"},
            config={"max_items": 7, "concurrency": 3, "label": "ü", "opts": {"a": [1, None]}},
        ),
        step(
            "loop",
            type="agent_loop",
            depends_on=["src"],
            loop={
                "max_iterations": 5,
                "max_duration": "1h",
                "budget_warn_at": 3,
                "budget_force_at": 4,
            },
        ),
        step("n", depends_on=["src"], config={"n": 1}),
        step("bare", type="map", depends_on=["src"]),
    )
    defn = load_workflow(data)
    out = defn.to_dict()
    steps = {s["id"]: s for s in out["steps"]}
    assert steps["m"]["config"] == {
        "max_items": 7,
        "concurrency": 3,
        "label": "ü",
        "opts": {"a": [1, None]},
    }
    assert steps["m"]["metadata"] == {"team": "x"}
    assert steps["loop"]["config"] == {
        "max_iterations": 5,
        "max_duration": 3_600_000_000_000,
        "budget_warn_at": 3,
        "budget_force_at": 4,
    }
    assert "loop" not in steps["loop"] and "metadata" not in steps["loop"]
    assert steps["n"]["config"] == {"n": 1}
    assert steps["bare"]["config"] == {"max_items": 1000}  # Go refuses a map step without
    assert not any(k.startswith("dagnats.") for s in steps.values() for k in s.get("metadata", {}))
    again = load_workflow(out)
    assert again == defn
    assert again.step("m").map_config == MapConfig(max_items=7, concurrency=3)
    assert again.step("loop").loop_config.budget_force_at == 4
    assert again.step("n").config == {"n": 1}


def test_reserved_metadata_of_older_files_is_still_read():
    old = wf(
        step("src"),
        step(
            "m",
            type="map",
            depends_on=["src"],
            metadata={
                "team": "x",
                "dagnats.map.max_items": "7",
                "dagnats.map.concurrency": "3",
                "dagnats.config.opts": '{"a": [1, null]}',
            },
        ),
        step(
            "loop",
            type="agent_loop",
            depends_on=["src"],
            loop={"max_iterations": 5, "max_duration": "1h"},
            metadata={"dagnats.loop.budget_warn_at": "3", "dagnats.loop.budget_force_at": "4"},
        ),
    )
    new = wf(
        step("src"),
        step(
            "m",
            type="map",
            depends_on=["src"],
            metadata={"team": "x"},
            config={"max_items": 7, "concurrency": 3, "opts": {"a": [1, None]}},
        ),
        step(
            "loop",
            type="agent_loop",
            depends_on=["src"],
            config={
                "max_iterations": 5,
                "max_duration": 3_600_000_000_000,
                "budget_warn_at": 3,
                "budget_force_at": 4,
            },
        ),
    )
    assert load_workflow(old) == load_workflow(new)
    assert load_workflow(old).to_dict() == load_workflow(new).to_dict()


def test_to_dict_omits_empty_fields_and_writes_nanoseconds():
    defn = load_workflow(
        wf(
            step("a", timeout=1_500_000_000, retries=2, required_capabilities=[]),
            timeout="2h",
            concurrency={"max_steps": 4},
        )
    )
    out = defn.to_dict()
    assert out == {
        "name": "w",
        "version": "1.0",
        "steps": [
            {"id": "a", "task": "a", "retries": 2, "timeout": 1_500_000_000, "type": "normal"}
        ],
        "concurrency": {"max_steps": 4},
        "timeout": 7_200_000_000_000,
    }
    assert json.loads(defn.to_json()) == out
    assert load_workflow(defn.to_json()) == defn


# --- loading --------------------------------------------------------------------------------

HELLO = wf(step("greet"), step("upper", depends_on=["greet"], timeout="30s"), name="hello")
HELLO_YAML = """\
name: hello
version: "1.0"
steps:
  - id: greet
    task: greet
  - id: upper
    task: upper
    depends_on: [greet]
    timeout: 30s
"""


def test_load_from_every_kind_of_source(tmp_path: Path):
    expected = load_workflow(HELLO)
    (tmp_path / "hello.json").write_text(json.dumps(HELLO))
    (tmp_path / "hello.yaml").write_text(HELLO_YAML)
    (tmp_path / "hello.yml").write_text(HELLO_YAML)
    (tmp_path / "hello.txt").write_text(json.dumps(HELLO))
    sources = [
        json.dumps(HELLO),
        HELLO_YAML,
        str(tmp_path / "hello.json"),
        tmp_path / "hello.json",
        str(tmp_path / "hello.yaml"),
        tmp_path / "hello.yml",
        tmp_path / "hello.txt",
        json.dumps(HELLO).encode(),
    ]
    for source in sources:
        assert load_workflow(source) == expected, source
    assert load_workflow(expected) is expected


def test_load_does_not_change_its_input():
    data = copy.deepcopy(HELLO)
    data["$schema"] = "../../docs/workflow-schema.json"
    before = copy.deepcopy(data)
    load_workflow(data)
    assert data == before


def test_forced_format():
    assert load_workflow(json.dumps(HELLO), fmt="yaml").name == "hello"
    with pytest.raises(WorkflowError, match="invalid JSON"):
        load_workflow(HELLO_YAML, fmt="json")


def test_yaml_numeric_version_becomes_text():
    assert load_workflow("name: v\nversion: 2.5\nsteps: [{id: a, task: a}]").version == "2.5"


def test_missing_file_names_the_path(tmp_path: Path):
    for source in (tmp_path / "nope.json", str(tmp_path / "nope.yaml")):
        with pytest.raises(WorkflowError, match="nope.* not found") as info:
            load_workflow(source)
        assert str(tmp_path) in str(info.value)
    with pytest.raises(WorkflowError, match="is a directory"):
        load_workflow(tmp_path)


def test_json_syntax_error_names_file_and_line(tmp_path: Path):
    path = tmp_path / "bad.json"
    path.write_text('{\n  "name": "x",\n  "steps": [\n    {"id": "a" "task": "b"}\n  ]\n}\n')
    with pytest.raises(WorkflowError) as info:
        load_workflow(path)
    assert f"workflow file '{path}' line 4" in str(info.value)
    assert "invalid JSON" in str(info.value)


def test_yaml_syntax_error_names_file_and_line(tmp_path: Path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\nsteps:\n  - id: a\n    task: [b\n")
    with pytest.raises(WorkflowError) as info:
        load_workflow(path)
    assert f"workflow file '{path}' line " in str(info.value)
    assert "invalid YAML" in str(info.value)


def test_syntax_errors_in_text_name_the_line():
    with pytest.raises(WorkflowError, match="workflow text line 1 column 2: invalid JSON"):
        load_workflow("{oops")
    with pytest.raises(WorkflowError, match=r"workflow text line \d+ column \d+: invalid YAML"):
        load_workflow("name: x\nsteps: [\n")


@pytest.mark.parametrize("text", ["- a\n- b\n", "", "just words"])
def test_top_level_must_be_a_mapping(text):
    with pytest.raises(WorkflowError, match="a workflow is a mapping"):
        load_workflow(text)


def test_a_step_may_not_depend_on_a_failure_handler():
    from dagnats_nb.dag import load_workflow
    from dagnats_nb.errors import WorkflowError

    wf = {
        "name": "w",
        "steps": [
            {"id": "work", "task": "t", "on_failure": "alert"},
            {"id": "alert", "task": "a"},
            {"id": "after", "task": "t", "depends_on": ["alert"]},
        ],
    }
    with pytest.raises(WorkflowError) as info:
        load_workflow(wf)
    assert "workflow 'w' step 'after': field 'depends_on'" in str(info.value)
    assert "'alert' is an on_failure/compensate handler" in str(info.value)

"""Workflow files in the Go engine's form. What ``WorkflowDef.to_dict`` writes is Go's
``dag.WorkflowDef`` JSON (durations in integer nanoseconds, type settings in ``config``),
checked by the real ``dagnats workflow validate``; what Go writes, and what earlier versions
of this package wrote, loads; every field of Go's WorkflowDef / StepDef is accepted and
round-trips.

The Go binary is ``$DAGNATS_GO_BIN`` or ``../shared/interop/dagnats``; without it the tests
that run it skip with one line (``DAGNATS_REQUIRE_SHARED=1`` makes that a failure).
"""

from __future__ import annotations

import copy
import json
import os
import pickle
import subprocess
from datetime import timedelta
from pathlib import Path

import pytest
from conftest import go_binary
from hypothesis import given
from hypothesis import strategies as st

from dagnats_nb.dag import load_workflow
from dagnats_nb.dag.durations import GoDuration, parse_duration, to_nanoseconds
from dagnats_nb.errors import WorkflowError

MAX_NS = 2**63 - 1


def go_run(data: dict, tmp_path: Path) -> subprocess.CompletedProcess:
    """``dagnats workflow validate`` (offline) on ``data`` written as a JSON file."""
    binary = go_binary("dagnats", "DAGNATS_GO_BIN")
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "workflow.json"
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    return subprocess.run(
        [str(binary), "workflow", "validate", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env={**os.environ, "NO_COLOR": "1"},
    )


def go_validate(data: dict, tmp_path: Path) -> None:
    """Assert that the Go engine reads and validates ``data``."""
    proc = go_run(data, tmp_path)
    said = (proc.stdout + proc.stderr).strip()
    assert proc.returncode == 0, f"Go refused {json.dumps(data)}:\n{said}"
    assert f"Valid: {data['name']} ({len(data['steps'])} steps)" in proc.stdout, said


def go_refuses(data: dict, tmp_path: Path) -> str:
    """What the Go engine says refusing ``data`` (asserting it does)."""
    proc = go_run(data, tmp_path)
    assert proc.returncode != 0, f"Go accepted {json.dumps(data)}"
    return proc.stdout + proc.stderr


def step(step_id: str, **fields) -> dict:
    return {"id": step_id, "task": fields.pop("task", step_id), **fields}


def wf(*steps: dict, **top) -> dict:
    return {"name": top.pop("name", "w"), "version": "1.0", "steps": list(steps), **top}


def one_problem(data: dict) -> str:
    with pytest.raises(WorkflowError) as info:
        load_workflow(data)
    assert info.type is WorkflowError, info.value
    assert len(info.value.problems) == 1, info.value.problems
    line = info.value.problems[0]
    assert "\n" not in line and str(info.value) == line
    return line


# --- the Go binary is the judge ------------------------------------------------------------


def test_go_refuses_duration_strings_and_reads_what_we_write(tmp_path):
    data = wf(step("a", timeout="30s"))
    assert "cannot unmarshal string" in go_refuses(data, tmp_path / "strings")
    out = load_workflow(data).to_dict()
    assert out["steps"][0]["timeout"] == 30_000_000_000
    go_validate(out, tmp_path / "ours")


def test_go_refuses_loop_and_needs_config(tmp_path):
    data = wf(step("a", type="agent_loop", loop={"max_iterations": 3}))
    assert "Config is nil for AgentLoop" in go_refuses(data, tmp_path / "loop")
    out = load_workflow(data).to_dict()
    assert out["steps"][0]["config"] == {"max_iterations": 3}
    go_validate(out, tmp_path / "ours")


def test_a_map_step_without_config_gets_max_items(tmp_path):
    data = wf(step("src"), step("m", type="map", depends_on=["src"]))
    assert "Map step must have Map config" in go_refuses(data, tmp_path / "bare")
    defn = load_workflow(data)
    assert defn.step("m").config == {"max_items": 1000}
    go_validate(defn.to_dict(), tmp_path / "ours")


# --- durations -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "ns"),
    [
        (1, 1),
        (999, 999),
        (1500, 1500),
        (1_000_000_001, 1_000_000_001),
        (MAX_NS, MAX_NS),
        ("1.5us", 1500),
        ("1h0.000000001s", 3_600_000_000_001),
        ("2562047h47m16.854775807s", MAX_NS),
        ("0.9ns", 0),  # Go drops a fraction of a nanosecond
        (timedelta(milliseconds=3), 3_000_000),
    ],
)
def test_durations_keep_their_nanoseconds(value, ns):
    td = parse_duration(value)
    assert to_nanoseconds(td) == ns
    assert to_nanoseconds(copy.deepcopy(td)) == ns
    assert to_nanoseconds(pickle.loads(pickle.dumps(td))) == ns
    assert td == timedelta(microseconds=(ns + 500) // 1000)


@given(st.integers(min_value=0, max_value=MAX_NS))
def test_any_nanoseconds_survive_reading_and_writing(ns):
    step_def = load_workflow(
        wf(step("a", retry={"max_attempts": 1, "strategy": "fixed", "initial_delay": ns}))
    )
    assert step_def.to_dict()["steps"][0]["retry"]["initial_delay"] == ns


def every_duration(ns: int) -> dict:
    """A definition with ``ns`` in every duration field Go has (debounce at most 7 days)."""
    retry = {"max_attempts": 2, "strategy": "linear", "initial_delay": ns, "max_delay": ns}
    small = min(ns, 7 * 86_400 * 10**9)
    return wf(
        step("a", timeout=ns, retry=retry, rate_limit={"limit": 1, "period": ns}),
        step(
            "b",
            type="agent_loop",
            depends_on=["a"],
            config={"max_iterations": 2, "max_duration": ns, "loop_delay": ns},
            keyed_rate_limit={"key": "k", "limit": 1, "period": ns, "units": 1},
        ),
        timeout=ns,
        default_retry=retry,
        cancel_on=[{"event": "stop", "timeout": ns}],
        triggers=[{"id": "t", "subject": {"subject": "go"}, "debounce": {"period": small}}],
    )


def durations_of(out: dict) -> list:
    """Every duration field of ``every_duration``'s written form, in order."""
    a, b = out["steps"]
    return [
        out["timeout"],
        out["default_retry"]["initial_delay"],
        out["default_retry"]["max_delay"],
        out["cancel_on"][0]["timeout"],
        a["timeout"],
        a["retry"]["initial_delay"],
        a["retry"]["max_delay"],
        a["rate_limit"]["period"],
        b["config"]["max_duration"],
        b["config"]["loop_delay"],
        b["keyed_rate_limit"]["period"],
    ]


@pytest.mark.parametrize("ns", [1, 1500, 999_999_999_999, MAX_NS])
def test_nanoseconds_round_trip_exactly(ns, tmp_path):
    out = load_workflow(every_duration(ns)).to_dict()
    assert durations_of(out) == [ns] * 11
    assert out["triggers"][0]["debounce"]["period"] == min(ns, 7 * 86_400 * 10**9)
    assert load_workflow(out).to_dict() == out
    go_validate(out, tmp_path)


def test_zero_timeouts_mean_none(tmp_path):
    data = wf(
        step("a", timeout=0),
        step("b", timeout="0s", type="agent_loop", config={"max_iterations": 1, "loop_delay": 0}),
        timeout=0,
    )
    defn = load_workflow(data)
    assert defn.timeout is None and defn.step("a").timeout is None
    assert defn.step("b").timeout is None and defn.step("b").loop_config.loop_delay is None
    out = defn.to_dict()
    assert "timeout" not in out and not any("timeout" in s for s in out["steps"])
    assert out["steps"][1]["config"] == {"max_iterations": 1}
    go_validate(out, tmp_path)


def test_go_zero_values_mean_unset(tmp_path):
    zeros = {
        "worker_group": "",
        "on_failure": "",
        "compensate": "",
        "singleton": False,
        "max_task_concurrency": 0,
        "metadata": {},
        "config": None,
        "skip_if": None,
        "retry": None,
        "rate_limit": None,
        "depends_on": None,
        "required_capabilities": None,
    }
    top = {"sticky": "", "idempotency_key": "", "aux_steps": {}, "cancel_on": None}
    defn = load_workflow(wf(step("a", timeout=0, **zeros), **top))
    assert defn == load_workflow(wf(step("a")))
    assert defn.to_dict() == {
        "name": "w",
        "version": "1.0",
        "steps": [{"id": "a", "task": "a", "type": "normal"}],
    }
    go_validate(wf(step("a", timeout=0, **zeros), **top), tmp_path)


def test_hard_sticky_with_a_zero_timeout_is_refused_as_in_go(tmp_path):
    data = wf(step("a"), sticky="hard", timeout=0)
    assert "hard affinity needs a workflow timeout" in one_problem(data)
    assert "hard sticky requires a timeout" in go_refuses(data, tmp_path)


# --- Go's own output, and ours from before ---------------------------------------------------

GO_WRITTEN = {  # json.Marshal of a dag.WorkflowDef: task, timeout and type always present
    "name": "orders",
    "version": "2",
    "steps": [
        {
            "id": "charge",
            "task": "charge",
            "timeout": 0,
            "type": "normal",
            "retry": {
                "max_attempts": 3,
                "strategy": "fixed",
                "initial_delay": 1000000000,
                "max_delay": 0,
            },
            "on_failure": "refund",
        },
        {
            "id": "notify",
            "task": "notify",
            "depends_on": ["charge"],
            "timeout": 30000000000,
            "type": "normal",
            "metadata": {"team": "billing"},
        },
        {"id": "refund", "task": "refund", "timeout": 0, "type": "normal"},
    ],
    "timeout": 3600000000000,
    "aux_steps": {"refund": True},
}


def test_a_definition_as_go_writes_it_loads_and_goes_back(tmp_path):
    go_validate(GO_WRITTEN, tmp_path / "go")
    defn = load_workflow(GO_WRITTEN)
    assert defn.step("charge").timeout is None
    assert defn.step("notify").timeout == timedelta(seconds=30)
    assert defn.retry_policy("charge").multiplier == 2.0  # omitted by Go (omitempty)
    assert defn.handler_steps == ["refund"] and defn.aux_steps == {"refund": True}
    out = defn.to_dict()
    assert load_workflow(out) == defn
    go_validate(out, tmp_path / "ours")


def test_go_sub_workflow_step_with_empty_task_loads_with_allow_unsupported(tmp_path):
    data = wf(
        step("a", timeout=0, type="normal"),
        {
            "id": "child",
            "task": "",
            "depends_on": ["a"],
            "timeout": 0,
            "type": "sub_workflow",
            "config": {"workflow": "payment-flow"},
        },
    )
    defn = load_workflow(data, allow_unsupported=True)
    out = defn.to_dict()
    assert out["steps"][1] == {  # Go's empty task is no task: written as none
        "id": "child",
        "depends_on": ["a"],
        "type": "sub_workflow",
        "config": {"workflow": "payment-flow"},
    }
    go_validate(out, tmp_path)


OLD_FORM = {  # what WorkflowDef.to_json() wrote before: schema-style strings, loop, metadata
    "name": "old",
    "version": "1.0",
    "steps": [
        {
            "id": "fetch",
            "task": "fetch",
            "type": "normal",
            "timeout": "1500ms",
            "retry": {
                "max_attempts": 2,
                "strategy": "exponential",
                "initial_delay": "1s",
                "max_delay": "10s",
                "multiplier": 2.0,
            },
            "metadata": {"dagnats.config.model": '"small"', "owner": "ops"},
        },
        {
            "id": "think",
            "task": "think",
            "depends_on": ["fetch"],
            "type": "agent_loop",
            "loop": {"max_iterations": 5, "max_duration": "10m", "loop_delay": "500ms"},
            "metadata": {"dagnats.loop.budget_warn_at": "3", "dagnats.loop.budget_force_at": "4"},
        },
        {
            "id": "each",
            "task": "each",
            "depends_on": ["think"],
            "type": "map",
            "metadata": {"dagnats.map.max_items": "50", "dagnats.map.concurrency": "4"},
        },
    ],
    "default_retry": {"max_attempts": 1, "strategy": "fixed", "initial_delay": "1500us"},
    "timeout": "90m",
}

GO_FORM = {
    "name": "old",
    "version": "1.0",
    "steps": [
        {
            "id": "fetch",
            "task": "fetch",
            "timeout": 1_500_000_000,
            "type": "normal",
            "config": {"model": "small"},
            "metadata": {"owner": "ops"},
            "retry": {
                "max_attempts": 2,
                "strategy": "exponential",
                "initial_delay": 1_000_000_000,
                "max_delay": 10_000_000_000,
                "multiplier": 2.0,
            },
        },
        {
            "id": "think",
            "task": "think",
            "depends_on": ["fetch"],
            "type": "agent_loop",
            "config": {
                "max_iterations": 5,
                "max_duration": 600_000_000_000,
                "loop_delay": 500_000_000,
                "budget_warn_at": 3,
                "budget_force_at": 4,
            },
        },
        {
            "id": "each",
            "task": "each",
            "depends_on": ["think"],
            "type": "map",
            "config": {"max_items": 50, "concurrency": 4},
        },
    ],
    "default_retry": {
        "max_attempts": 1,
        "strategy": "fixed",
        "initial_delay": 1_500_000,
        "max_delay": 0,
        "multiplier": 2.0,
    },
    "timeout": 5_400_000_000_000,
}


def test_files_in_the_old_form_load_to_the_same_definition(tmp_path):
    old = load_workflow(OLD_FORM)
    assert old == load_workflow(GO_FORM)
    assert old.to_dict() == GO_FORM
    assert old.step("each").map_config.concurrency == 4
    assert old.step("think").loop_config.budget_force_at == 4
    go_validate(old.to_dict(), tmp_path)


def test_old_form_yaml_with_go_strings_loads():
    text = (
        "name: old\nsteps:\n  - id: a\n    task: a\n    type: agent_loop\n"
        "    loop: {max_iterations: 2, max_duration: 1h30m}\n"
    )
    out = load_workflow(text).to_dict()
    assert out["steps"][0]["config"] == {"max_iterations": 2, "max_duration": 5_400 * 10**9}


# --- every field of Go's WorkflowDef / StepDef ------------------------------------------------

STEP_FIELDS = [
    ("rate_limit", {"limit": 10, "period": "1m"}, {"limit": 10, "period": 60_000_000_000}),
    (
        "keyed_rate_limit",
        {"key": "customer.id", "limit": 5, "period": 1_000_000_000, "units": 2},
        {"key": "customer.id", "limit": 5, "period": 1_000_000_000, "units": 2},
    ),
    ("max_task_concurrency", 4, 4),
    ("singleton", True, True),
    ("worker_group", "gpu", "gpu"),
    ("required_capabilities", ["control-plane"], ["control-plane"]),
    ("metadata", {"owner": "ops"}, {"owner": "ops"}),
    ("config", {"model": "small", "n": [1, None]}, {"model": "small", "n": [1, None]}),
    ("retries", 3, 3),
    ("timeout", "2.5s", 2_500_000_000),
]
WORKFLOW_FIELDS = [
    ("aux_steps", {"a": True}, {"a": True}),
    ("idempotency_key", "order.id", "order.id"),
    (
        "priority",
        {"key": "tier", "rules": {"gold": -60, "free": 120}},
        {"key": "tier", "rules": {"gold": -60, "free": 120}, "default_offset": 0},
    ),
    (
        "cancel_on",
        [{"event": "order.cancelled", "match": {"left": "id", "op": "eq", "right": "input.id"}}],
        [{"event": "order.cancelled", "match": {"left": "id", "op": "eq", "right": "input.id"}}],
    ),
    ("cancel_on", [{"event": "stop", "timeout": "1h"}], [{"event": "stop", "timeout": 3.6e12}]),
    ("singleton", {"mode": "skip", "key": "customer"}, {"mode": "skip", "key": "customer"}),
    ("singleton", {"mode": "cancel"}, {"mode": "cancel"}),
    ("sticky", "soft", "soft"),
    ("concurrency", {"max_runs": 2, "max_steps": 3}, {"max_runs": 2, "max_steps": 3}),
    ("input_schema", {"type": "object"}, {"type": "object"}),
    ("output_schema", {"type": "array"}, {"type": "array"}),
    ("timeout", "1h", 3_600_000_000_000),
    (
        "default_retry",
        {"max_attempts": 2, "strategy": "exponential", "initial_delay": "1s", "multiplier": 3},
        {
            "max_attempts": 2,
            "strategy": "exponential",
            "initial_delay": 1_000_000_000,
            "max_delay": 0,
            "multiplier": 3,
        },
    ),
    (
        "triggers",
        [{"id": "t", "webhook": {"path": "/go"}, "debounce": {"period": "5s", "key": "x"}}],
        [
            {
                "id": "t",
                "webhook": {"path": "/go"},
                "debounce": {"period": 5_000_000_000, "key": "x"},
            }
        ],
    ),
]


@pytest.mark.parametrize(("field", "given", "written"), STEP_FIELDS)
def test_step_fields_of_go_round_trip(field, given, written, tmp_path):
    defn = load_workflow(wf(step("a", **{field: given})))
    out = defn.to_dict()
    assert out["steps"][0][field] == written
    assert load_workflow(out) == defn
    assert load_workflow(json.loads(defn.to_json())).to_dict() == out
    go_validate(out, tmp_path)


@pytest.mark.parametrize(("field", "given", "written"), WORKFLOW_FIELDS)
def test_workflow_fields_of_go_round_trip(field, given, written, tmp_path):
    defn = load_workflow(wf(step("a"), **{field: given}))
    out = defn.to_dict()
    assert out[field] == written
    assert load_workflow(out) == defn
    assert load_workflow(json.loads(defn.to_json())).to_dict() == out
    go_validate(out, tmp_path)


def test_every_go_field_at_once(tmp_path):
    steps = [
        step("a", **{f: v for f, v, _ in STEP_FIELDS if f != "keyed_rate_limit"}),
        step("b", depends_on=["a"], keyed_rate_limit=STEP_FIELDS[1][1], on_failure="h"),
        step(
            "c", depends_on=["b"], skip_if={"step_id": "b", "field": "ok", "op": "==", "value": 1}
        ),
        step("h", compensate="u"),
        step("u"),
    ]
    top = {f: v for f, v, _ in WORKFLOW_FIELDS if f not in ("sticky", "timeout")}
    defn = load_workflow(wf(*steps, **top))
    assert defn.aux_steps == {"a": True, "h": True, "u": True}
    out = defn.to_dict()
    assert load_workflow(out) == defn
    go_validate(out, tmp_path)


def test_handler_steps_are_written_as_aux_steps(tmp_path):
    defn = load_workflow(
        wf(step("a", on_failure="alert", compensate="undo"), step("alert"), step("undo"))
    )
    assert defn.to_dict()["aux_steps"] == {"alert": True, "undo": True}
    given = load_workflow(wf(step("a", on_failure="alert"), step("alert"), aux_steps={"x": False}))
    assert given.aux_steps == {"x": False, "alert": True}
    go_validate(defn.to_dict(), tmp_path)


@pytest.mark.parametrize(
    ("where", "field", "value", "says"),
    [
        (
            "step",
            "rate_limit",
            {"limit": "ten", "period": "1s"},
            "'rate_limit.limit': must be an integer",
        ),
        ("step", "rate_limit", "fast", "'rate_limit': must be a mapping"),
        ("step", "rate_limit", {"limit": 1, "period": 0}, "'rate_limit.period': must be > 0"),
        ("step", "rate_limit", {"limit": 1}, "'rate_limit.period': is required"),
        (
            "step",
            "keyed_rate_limit",
            {"key": "k", "limit": 1, "period": "soon", "units": 1},
            "'keyed_rate_limit.period': \"soon\" is not a duration",
        ),
        (
            "step",
            "keyed_rate_limit",
            {"key": "k", "limit": 1, "period": 1, "units": 0},
            "'keyed_rate_limit.units': must be > 0",
        ),
        ("step", "max_task_concurrency", "4", "'max_task_concurrency': must be an integer"),
        ("step", "max_task_concurrency", 1001, "'max_task_concurrency': must be <= 1000"),
        ("step", "singleton", "yes", "'singleton': must be true or false"),
        (
            "workflow",
            "priority",
            {"key": "t", "rules": {"g": "high"}},
            "'priority.rules.g': must be an integer",
        ),
        (
            "workflow",
            "priority",
            {"key": "t", "rules": {"g": 601}},
            "'priority.rules.g': must be <= 600",
        ),
        ("workflow", "priority", {"key": "", "rules": {"g": 1}}, "'priority.key'"),
        ("workflow", "cancel_on", {"event": "x"}, "'cancel_on': must be a list"),
        ("workflow", "cancel_on", [{"event": "e", "timeout": "never"}], "'cancel_on[0].timeout'"),
        ("workflow", "cancel_on", [{"event": "e"}] * 6, "'cancel_on'"),
        ("workflow", "singleton", {"mode": "once"}, "'singleton.mode': must be one of 'skip'"),
        ("workflow", "aux_steps", {"a": "yes"}, "'aux_steps.a': must be true or false"),
        ("workflow", "idempotency_key", 5, "'idempotency_key': must be a string"),
        ("workflow", "idempotency_key", "order..id", "'idempotency_key': 'order..id' has an empty"),
        ("workflow", "sticky", "always", "'sticky': must be one of 'soft'"),
    ],
)
def test_a_wrong_value_in_a_go_field_is_one_clear_line(where, field, value, says, tmp_path):
    data = wf(step("a", **{field: value})) if where == "step" else wf(step("a"), **{field: value})
    line = one_problem(data)
    assert line.startswith("workflow 'w' step 'a': field" if where == "step" else "workflow 'w':")
    assert says in line, line


def test_go_rules_for_the_fields_we_keep_are_checked_as_go_does(tmp_path):
    both = wf(
        step(
            "a",
            rate_limit={"limit": 1, "period": 1},
            keyed_rate_limit={"key": "k", "limit": 1, "period": 1, "units": 1},
        )
    )
    assert "set one of rate_limit and keyed_rate_limit" in one_problem(both)
    assert "cannot set both" in go_refuses(both, tmp_path / "both")
    bad_key = wf(step("a"), idempotency_key=".order")
    assert "must not start or end with '.'" in one_problem(bad_key)
    assert "must not start or end with dot" in go_refuses(bad_key, tmp_path / "key")
    mismatch = wf(
        step("a"), triggers=[{"id": "t", "workflow_id": "other", "subject": {"subject": "s"}}]
    )
    assert "'other' does not match the workflow's name 'w'" in one_problem(mismatch)
    assert "does not match parent workflow" in go_refuses(mismatch, tmp_path / "owner")
    debounce = wf(
        step("a"),
        triggers=[
            {"id": "t", "subject": {"subject": "s"}, "debounce": {"period": 2, "timeout": 1}}
        ],
    )
    assert "timeout must be 0 or >= period" in one_problem(debounce)
    assert "debounce timeout must be >= period" in go_refuses(debounce, tmp_path / "debounce")


def test_unknown_fields_are_still_refused_by_name():
    line = one_problem(wf(step("a", rate_limits={"limit": 1, "period": 1})))
    assert "step 'a': field 'rate_limits': unknown field; did you mean 'rate_limit'?" in line
    line = one_problem(wf(step("a", rate_limit={"limit": 1, "period": 1, "burst": 2})))
    assert "field 'rate_limit.burst': unknown field (allowed: limit, period)" in line
    line = one_problem(
        wf(step("a"), cancel_on=[{"event": "e", "match": {"left": "a", "rigth": "b"}}])
    )
    assert "field 'cancel_on[0].match.rigth': unknown field; did you mean 'right'?" in line


def test_go_durations_survive_copies_of_a_definition():
    defn = load_workflow(every_duration(1501))
    assert copy.deepcopy(defn).to_dict() == defn.to_dict()
    assert defn.model_copy(deep=True).to_dict() == defn.to_dict()
    assert isinstance(defn.step("a").timeout, GoDuration)

"""The compact edge syntax of ``%%dagnats workflow`` (pure: no engine)."""

from __future__ import annotations

import pytest

from dagnats_nb.dag.edges import load_edges, looks_like_edges, parse_edges
from dagnats_nb.errors import WorkflowError

SKETCH = """\
fetch -> [summarize, classify] -> report   # fan out, fan in
summarize: task=llm retry=3 timeout=30s
classify:  task=classify type=map concurrency=4
workflow:  retry=2 delay=50ms timeout=5m max_steps=8 version=2
"""


def test_the_issue_sketch_builds_the_workflow_it_draws():
    d = load_edges(SKETCH, "digest")
    assert d.name == "digest" and d.version == "2"
    assert d.step_ids == ["fetch", "summarize", "classify", "report"]
    assert d.step("summarize").depends_on == ["fetch"]
    assert d.step("report").depends_on == ["summarize", "classify"]
    assert d.step("summarize").task == "llm" and d.step("fetch").task == "fetch"
    assert d.step("summarize").retry.max_attempts == 3
    assert d.step("summarize").timeout.total_seconds() == 30
    assert d.step("classify").type == "map" and d.step("classify").map_config.concurrency == 4
    assert d.default_retry.initial_delay.total_seconds() == 0.05
    assert d.timeout.total_seconds() == 300 and d.concurrency.max_steps == 8


def test_chains_groups_lone_steps_and_skip_if():
    raw = parse_edges(
        'a -> [b, c]\n[b, c] -> d\nalone\nd: skip_if="b.n == 0" on_failure=alone\n', "w"
    )
    steps = {s["id"]: s for s in raw["steps"]}
    assert steps["d"]["depends_on"] == ["b", "c"]
    assert "depends_on" not in steps["alone"]
    assert steps["d"]["skip_if"] == {"step_id": "b", "field": "n", "op": "==", "value": 0}
    assert steps["d"]["on_failure"] == "alone"
    assert load_edges("a -> b\nb: backoff=exponential retry=2 delay=1s max_delay=4s", "w")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a -> b\nb -> a", "workflow 'w' line 3: cycle between steps a -> b -> a"),
        ("a -> b -> c\n\nc -> a", "workflow 'w' line 4: cycle between steps a -> b -> c -> a"),
        ("a -> b\nsumarize: retry=2", "line 3 step 'sumarize': unknown step 'sumarize'"),
        ("a -> b\nb: retyr=2", "line 3 step 'b': unknown key 'retyr' (did you mean 'retry'?"),
        ("a -> b\nb: timeout=xx", "line 3 step 'b': field 'timeout': \"xx\" is not a duration"),
        ("a -> \n", "line 2: expected a step or [a, b] after '->'"),
        ("a -> [b, c\n", "line 2: unclosed group '[b, c': write [a, b]"),
        ("a b -> c", "line 2: 'a b' is not a step name"),
        ("a -> a", "line 2 step 'a': a step cannot depend on itself"),
        ("a -> b\nb: retry=x", "line 3 step 'b': retry='x': expected a whole number"),
        ("a -> b\nb: on_failure=zz", "line 3 step 'b': on_failure: unknown step 'zz'"),
        ("a -> b\nb: skip_if=zz", "line 3 step 'b': skip_if='zz': write skip_if="),
        (
            "a -> b\nb: type=sleep",
            "line 3 step 'b': field 'config': a sleep step sets exactly one of duration",
        ),
        ("# nothing\n", "line 2: no steps"),
        ("a -> workflow", "line 2: 'workflow' is reserved"),
        ("a -> b\nb: retry", "line 3 step 'b': expected key=value, got 'retry'"),
        ("a -> 'b", "line 2: cannot read the line"),
    ],
)
def test_each_error_is_one_line_naming_the_line_and_step(text, expected):
    with pytest.raises(WorkflowError) as info:
        load_edges(text, "w", first_line=2)
    message = str(info.value)
    assert expected in message
    assert "\n" not in message


def test_format_detection():
    assert looks_like_edges("a -> b")
    assert not looks_like_edges('  {"name": "x"}')
    assert not looks_like_edges("name: x\nsteps:\n  - id: a\n")


def test_workflow_sticky_key_and_its_validation():
    assert load_edges("a -> b\nworkflow: sticky=hard timeout=1m", "w").sticky == "hard"
    assert load_edges("a -> b", "w").sticky is None
    with pytest.raises(WorkflowError, match="must be one of 'soft' or 'hard'"):
        load_edges("a -> b\nworkflow: sticky=medium", "w")
    with pytest.raises(WorkflowError, match="hard affinity needs a workflow timeout"):
        load_edges("a -> b\nworkflow: sticky=hard", "w")


def test_the_edge_syntax_writes_every_step_type_as_go_reads_it():
    from dagnats_nb.dag.edges import load_edges

    defn = load_edges(
        "\n".join(
            [
                "draft -> nap -> review -> paid -> publish -> plan -> reply",
                "nap: type=sleep duration=2s",
                "review: type=approval subject=approvals.x timeout=1h approvers=ada,bob",
                'paid: type=wait_for_event event=payment match="order == input.order" timeout=10m',
                "publish: type=sub_workflow workflow=pub detach=true",
                "plan: type=planner allowed_tasks=llm,draft max_steps=3 max_depth=2",
                "reply: type=respond status=201 body_from=text",
                "draft: compensate=undo",
                "undo",
            ]
        ),
        "every-type",
    )
    steps = {s["id"]: s for s in defn.to_dict()["steps"]}
    assert steps["nap"] == {
        "id": "nap",
        "depends_on": ["draft"],
        "type": "sleep",
        "config": {"duration": 2 * 10**9},
    }
    assert "task" not in steps["review"]
    assert steps["review"]["config"] == {
        "subject": "approvals.x",
        "timeout": 3600 * 10**9,
        "approvers": ["ada", "bob"],
    }
    assert steps["paid"]["config"] == {
        "event": "payment",
        "timeout": 600 * 10**9,
        "match": {"left": "order", "op": "eq", "right": "input.order"},
    }
    assert steps["publish"]["config"] == {"workflow": "pub", "detach": True}
    assert steps["plan"]["task"] == "plan"
    assert steps["plan"]["config"] == {
        "allowed_tasks": ["llm", "draft"],
        "max_steps": 3,
        "max_depth": 2,
    }
    assert steps["reply"]["config"] == {"status": 201, "body_from": "text"}
    assert steps["draft"]["compensate"] == "undo"


def test_a_bad_match_is_named_with_its_line():
    from dagnats_nb.dag.edges import load_edges

    with pytest.raises(
        WorkflowError, match=r"line 2 step 'w'.*write match=\"field == input.path\""
    ):
        load_edges("a -> w\nw: type=wait_for_event event=e match=oops timeout=1s", "bad")

"""sub_workflow steps through the public API on a real engine: a child run with its own
history, linked both ways, awaited by its parent, cancelled with it; the conformance
example order-pipeline -> payment-flow runs without allow_unsupported."""

from __future__ import annotations

import asyncio
import json
from collections import Counter

import nats
import pytest
from conftest import until

from dagnats_nb.dag import load_workflow
from dagnats_nb.errors import WorkflowError

CHILD = {
    "name": "publish",
    "steps": [
        {"id": "format", "task": "format"},
        {"id": "post", "task": "post", "depends_on": ["format"]},
    ],
}


def parent(name="pipeline", child="publish", **cfg):
    return {
        "name": name,
        "steps": [
            {"id": "draft", "task": "draft"},
            {
                "id": "publish",
                "type": "sub_workflow",
                "depends_on": ["draft"],
                "config": {"workflow": child, **cfg},
            },
            {"id": "notify", "task": "notify", "depends_on": ["publish"]},
        ],
    }


@pytest.fixture
def family(engine):
    calls: Counter = Counter()

    @engine.task("draft")
    def draft(ctx):
        calls["draft"] += 1
        return {"text": ctx.input["topic"].upper()}

    @engine.task("format")
    def format_(ctx):
        calls["format"] += 1
        if ctx.input.get("text") == "BAD":
            raise ValueError("cannot format BAD")
        return {"html": f"<p>{ctx.input['text']}</p>"}

    @engine.task("post")
    def post(ctx):
        calls["post"] += 1
        return {"url": "https://example.org/1", "html": ctx.input["html"]}

    @engine.task("notify")
    def notify(ctx):
        calls["notify"] += 1
        return {"notified": ctx.input}

    engine.register(CHILD)
    engine.calls = calls
    return engine


def _run_record(engine, run_id):
    async def read():
        nc = await nats.connect(engine.connect_url)
        try:
            kv = await nc.jetstream().key_value("workflow_runs")
            return json.loads((await kv.get(f"run.{run_id}")).value)
        finally:
            await nc.close()

    return asyncio.run(read())


def test_the_parent_waits_for_its_child_and_gets_its_output(family):
    engine = family
    engine.register(parent())
    run = engine.run("pipeline", input={"topic": "nats"}, timeout=30)
    assert run.status == "completed", run.error
    child_id = f"{run.id}-publish"
    child_out = {"url": "https://example.org/1", "html": "<p>NATS</p>"}
    assert run.output == {"notified": child_out}
    types = list(engine.events(run.id)["type"])
    assert types.index("workflow.spawn") < types.index("workflow.child.completed")
    spawn = engine.events(run.id).set_index("type").loc["workflow.spawn", "payload"]
    assert spawn == {
        "child_run_id": child_id,
        "child_workflow": "publish",
        "detach": False,
        "input": {"text": "NATS"},
        "parent_step_id": "publish",
    }
    child = engine.get_run(child_id)
    assert child.status == "completed" and child.output == child_out
    assert list(engine.events(child_id)["type"])[0] == "workflow.started"
    record = _run_record(engine, child_id)
    assert record["parent_run_id"] == run.id and record["parent_step_id"] == "publish"
    assert record["root_run_id"] == run.id
    assert engine.calls == {"draft": 1, "format": 1, "post": 1, "notify": 1}


def test_a_failed_child_fails_its_parent_step(family):
    engine = family
    engine.register(parent())
    run = engine.run("pipeline", input={"topic": "bad"}, timeout=30)
    assert run.status == "failed"
    assert run.error == (
        "step 'publish' failed: child workflow failed: step 'format' failed: "
        "ValueError: cannot format BAD"
    )
    assert "workflow.child.failed" in set(engine.events(run.id)["type"])


def test_cancelling_the_parent_cancels_the_child(family):
    engine = family
    engine.register(
        {
            "name": "slow-child",
            "steps": [{"id": "nap", "type": "sleep", "config": {"duration": "60s"}}],
        }
    )
    engine.register(parent("waits-long", "slow-child"))
    run = engine.start_run("waits-long", input={"topic": "x"})
    child_id = f"{run.id}-publish"
    until(lambda: "step.sleep.started" in set(engine.events(child_id)["type"]))
    engine.cancel_run(run.id)
    assert run.wait(timeout=20).status == "cancelled"
    child = engine.get_run(child_id)
    assert child.wait(timeout=20).status == "cancelled"
    assert f"parent run {run.id} ended cancelled" in child.error


def test_a_detached_child_runs_on_its_own(family):
    engine = family
    engine.register(parent("fire-and-forget", detach=True))
    run = engine.run("fire-and-forget", input={"topic": "y"}, timeout=30)
    child_id = f"{run.id}-publish"
    assert run.status == "completed"
    assert run.output == {"notified": {"child_run_id": child_id}}
    assert engine.get_run(child_id).wait(timeout=20).status == "completed"
    assert "parent_run_id" not in _run_record(engine, child_id)


def test_an_unknown_child_workflow_fails_the_step_in_one_line(family):
    engine = family
    engine.register(parent("orphaned", "no-such-workflow"))
    run = engine.run("orphaned", input={"topic": "z"}, timeout=30)
    assert run.status == "failed"
    assert "cannot start workflow 'no-such-workflow'" in run.error


def test_nesting_stops_at_three_levels(engine):
    engine.register(
        {
            "name": "matryoshka",
            "steps": [
                {"id": "inner", "type": "sub_workflow", "config": {"workflow": "matryoshka"}}
            ],
        }
    )
    run = engine.run("matryoshka", timeout=30)
    assert run.status == "failed"
    assert "sub_workflow nesting deeper than 3 runs" in run.error


def test_the_conformance_sub_workflow_example_runs(engine, conformance):
    @engine.task("validate-order")
    def validate(ctx):
        return {"order": ctx.input["order"], "amount": 5}

    @engine.task("charge")
    def charge(ctx):
        return {"charged": ctx.input["amount"]}

    @engine.task("send-confirmation")
    def confirm(ctx):
        return {"confirmed": ctx.input}

    engine.register(conformance / "payment-flow.json")
    engine.register(conformance / "sub-workflow.json")
    run = engine.run("order-pipeline", input={"order": 1}, timeout=30)
    assert run.status == "completed", run.error
    assert run.output == {"confirmed": {"charged": 5}}


def test_a_sub_workflow_needs_its_workflow_named():
    with pytest.raises(WorkflowError, match="config.workflow"):
        load_workflow({"name": "p", "steps": [{"id": "s", "type": "sub_workflow"}]})

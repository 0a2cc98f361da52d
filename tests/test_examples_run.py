"""Every dagnats example file runs to its end on our engine, as it is, without
allow_unsupported: one generic handler per task type (it echoes its input; the map step's
parent returns a list, the agent loop counts to 3), the child workflow registered for
sub-workflow.json, and the HTTP example's respond step answering on Go's subject."""

from __future__ import annotations

import pytest
from conftest import conformance_dir, require_shared

import dagnats_nb as dn

FILES = sorted(p.name for p in conformance_dir().glob("*.json") if p.name != "workflow-schema.json")
# without ../shared, one case that skips saying how to get it (not pytest's "empty parameter
# set", which no DAGNATS_REQUIRE_SHARED turns into a failure)
FILES = FILES or ["payment-flow.json"]


def echo(ctx):
    if ctx.step_id == "fetch-urls":  # map-step.json: the map step's parent lists items
        return ["a.png", "b.png", "c.png"]
    if ctx.step_id == "counter":
        n = (ctx.input or {}).get("n", 0) if isinstance(ctx.input, dict) else 0
        return dn.Continue({"n": n + 1}) if n + 1 < 3 else {"n": n + 1}
    return {"step": ctx.step_id, "input": ctx.input}


def test_the_examples_are_all_here():
    folder = require_shared(conformance_dir())
    assert len(FILES) >= 10, sorted(p.name for p in folder.glob("*.json"))


@pytest.mark.parametrize("name", FILES)
def test_every_example_file_runs(engine, name):
    folder = require_shared(conformance_dir())
    defn = dn.load_workflow(folder / name)  # no allow_unsupported: every step type runs
    engine.register(folder / "payment-flow.json")
    tasks = {s.task for s in defn.steps if s.task}
    if name == "sub-workflow.json":
        tasks |= {s.task for s in dn.load_workflow(folder / "payment-flow.json").steps}
    for task in sorted(tasks):
        engine.add_handler(task, echo)
    engine.register(defn)
    run = engine.run(defn.name, input={"name": "ada", "order": 1}, timeout=60)
    assert run.status == "completed", (name, run.error)
    steps = engine.steps(run.id)
    handlers = set(defn.handler_steps)
    ran = steps[~steps["step_id"].isin(handlers)]
    assert set(ran["status"]) <= {"completed", "skipped"}, ran[["step_id", "status"]]

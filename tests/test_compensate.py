"""compensate (sagas) on a real engine: when a step fails for good and no on_failure
handles it, the compensate steps of the completed steps run one at a time, the last
completed undone first, with Go's input; the run ends failed, saying it was compensated."""

from __future__ import annotations

import pytest

import dagnats_nb as dn

SAGA = {
    "name": "trip",
    "steps": [
        {"id": "flight", "task": "book", "compensate": "cancel-flight"},
        {"id": "hotel", "task": "book", "depends_on": ["flight"], "compensate": "cancel-hotel"},
        {"id": "car", "task": "book", "depends_on": ["hotel"], "compensate": "cancel-car"},
        {"id": "pay", "task": "pay", "depends_on": ["car"]},
        {"id": "cancel-flight", "task": "cancel"},
        {"id": "cancel-hotel", "task": "cancel"},
        {"id": "cancel-car", "task": "cancel"},
    ],
}


@pytest.fixture
def trip(engine):
    undone: list = []
    engine.undone = undone

    @engine.task("book")
    def book(ctx):
        return {"booked": ctx.step_id}

    @engine.task("pay")
    def pay(ctx):
        if engine.fail_cancel is None:
            return {"paid": True}
        raise dn.Permanent("card declined")

    @engine.task("cancel")
    def cancel(ctx):
        if ctx.step_id == engine.fail_cancel:
            raise dn.Permanent("the hotel does not answer")
        undone.append((ctx.step_id, ctx.input))
        return {"cancelled": ctx.input["original_step"]}

    engine.fail_cancel = "nobody"
    engine.register(SAGA)
    return engine


def test_a_failed_step_undoes_the_completed_ones_in_reverse(trip):
    engine = trip
    run = engine.run("trip", timeout=30)
    assert run.status == "failed"
    assert run.error == "step 'pay' failed: Permanent: card declined (compensated)"
    assert [step for step, _ in engine.undone] == ["cancel-car", "cancel-hotel", "cancel-flight"]
    first = engine.undone[0][1]
    assert first["original_step"] == "car" and first["original_output"] == {"booked": "car"}
    assert first["trigger_step"] == "pay" and first["trigger_error"] == "Permanent: card declined"
    assert engine.undone[2][1]["trigger_error"] == "Permanent: card declined"
    types = list(engine.events(run.id)["type"])
    assert types.count("compensate.step.completed") == 3
    assert types.index("compensate.started") < types.index("compensate.completed")
    assert types[-1] == "workflow.failed"


def test_a_failing_compensation_stops_the_saga_and_says_so(trip):
    engine = trip
    engine.fail_cancel = "cancel-hotel"
    run = engine.run("trip", timeout=30)
    assert run.status == "failed"
    assert "compensate step 'cancel-hotel' failed" in run.error
    assert [step for step, _ in engine.undone] == ["cancel-car"]
    assert "compensate.failed" in set(engine.events(run.id)["type"])


def test_a_run_that_succeeds_runs_no_compensation(trip):
    engine = trip
    engine.fail_cancel = None
    run = engine.run("trip", timeout=30)
    assert run.status == "completed" and engine.undone == []
    steps = engine.steps(run.id).set_index("step_id")
    assert steps.loc["cancel-car", "status"] == "pending"

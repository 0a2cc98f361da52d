"""Values and references do not share a namespace (issue 16, item 1): a user value shaped
like the engine's stand-in for a large stored value, ``{"$ref": name, "size": n}``, is a
value like any other; only the references the engine made for a run (or for the run a
sub_workflow child descends from) are read from the object store."""

from __future__ import annotations

SECRET = "TOP-SECRET " * 200_000  # ~2 MB: kept in the object store behind a $ref


def test_a_run_cannot_read_another_runs_stored_input_by_naming_it(engine):
    seen: list = []

    @engine.task("peek")
    def peek(ctx):
        seen.append(ctx.input)
        return {"len": len(str(ctx.input))}

    wf = {"name": "peek", "steps": [{"id": "p", "task": "peek"}]}
    secret = engine.run(wf, input={"text": SECRET}, timeout=30)
    assert secret.status == "completed" and seen[0]["text"] == SECRET  # its own: expanded
    started = engine.history(secret.id)[0].payload
    ref = started["input"]
    assert set(ref) == {"$ref", "size"} and ref["$ref"].startswith(f"{secret.id}/")
    thief = engine.run(wf, input=ref, timeout=30)
    assert thief.status == "completed"
    assert seen[1] == ref  # the dict as it was sent, not the other run's 2 MB input
    assert "TOP-SECRET" not in str(engine.step_output(thief.id, "p"))


def test_a_handler_may_return_a_value_shaped_like_a_reference(engine):
    @engine.task("forge")
    def forge(ctx):
        return {"$ref": "nope/zzz", "size": 3}

    @engine.task("read")
    def read(ctx):
        return {"got": ctx.input}

    wf = {
        "name": "forge",
        "steps": [{"id": "f", "task": "forge"}, {"id": "r", "task": "read", "depends_on": ["f"]}],
    }
    run = engine.run(wf, timeout=30)
    assert run.status == "completed", run.error
    assert run.output == {"got": {"$ref": "nope/zzz", "size": 3}}
    assert engine.step_output(run.id, "f") == {"$ref": "nope/zzz", "size": 3}


def test_a_child_run_reads_the_large_input_its_parent_passes_on(engine):
    @engine.task("big")
    def big(ctx):
        return {"text": SECRET}

    @engine.task("size")
    def size(ctx):
        return len(ctx.input["text"])

    engine.register({"name": "kid", "steps": [{"id": "s", "task": "size"}]})
    parent = {
        "name": "parent",
        "steps": [
            {"id": "b", "task": "big"},
            {"id": "c", "type": "sub_workflow", "depends_on": ["b"], "config": {"workflow": "kid"}},
        ],
    }
    run = engine.run(parent, timeout=60)
    assert run.status == "completed", run.error
    assert run.output == len(SECRET)


def test_starting_a_run_with_an_existing_id_is_refused_or_idempotent(engine):
    import pytest

    from dagnats_nb.errors import RunError

    @engine.task("echo")
    def echo(ctx):
        return ctx.input

    wf = {"name": "echo", "steps": [{"id": "e", "task": "echo"}]}
    first = engine.start_run(wf, {"n": 1}, run_id="order-42")
    assert first.wait(timeout=20).output == {"n": 1}
    with pytest.raises(RunError, match="run order-42 exists already"):
        engine.start_run("echo", {"n": 2}, run_id="order-42")
    again = engine.start_run("echo", {"n": 2}, run_id="order-42", exists_ok=True)
    assert again.id == "order-42" and again.wait(timeout=20).output == {"n": 1}


@__import__("pytest").mark.parametrize(
    ("value", "why"),
    [
        (float("nan"), "Out of range float values"),
        ({"deep": __import__("functools").reduce(lambda a, _: [a], range(300), 0)}, "ecursion"),
        (2**70, "64-bit"),
        ("\ud800", "surrogates"),
        (object(), "not JSON serializable"),
    ],
)
def test_an_input_the_wire_cannot_carry_is_one_line(engine, value, why):
    import pytest

    from dagnats_nb.errors import RunError

    engine.add_handler("echo", lambda ctx: ctx.input)
    wf = {"name": "any", "steps": [{"id": "e", "task": "echo"}]}
    with pytest.raises(RunError) as info:
        engine.start_run(wf, value)
    message = str(info.value)
    assert "\n" not in message and "cannot be sent as JSON" in message
    assert why.lower() in message.lower(), message

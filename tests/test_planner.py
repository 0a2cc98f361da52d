"""planner and agent steps on a real engine: a planner's output joins the run as steps
(namespaced, validated, materialised as Go does), from a handler, the offline simulator
and a real OpenAI-compatible endpoint; a bad plan fails the planner step in one line."""

from __future__ import annotations

import json

import pytest
from llm_server import ChatServer, Reply

import dagnats_nb as dn
from dagnats_nb.dag import load_workflow
from dagnats_nb.errors import WorkflowError


def planned(max_steps=5, allowed=("shout", "count"), task="plan-task", **extra):
    return {
        "name": "planned",
        "steps": [
            {
                "id": "plan",
                "task": task,
                "type": "planner",
                "config": {"max_steps": max_steps, "allowed_tasks": list(allowed), **extra},
            },
            {"id": "after", "task": "count", "depends_on": ["plan"]},
        ],
    }


@pytest.fixture
def workers(engine):
    @engine.task("shout")
    def shout(ctx):
        return {"text": str(ctx.input.get("text", ctx.input)).upper()}

    @engine.task("count")
    def count(ctx):
        return {"n": len(json.dumps(ctx.input))}

    return engine


def test_a_planners_steps_join_the_run_and_run(workers):
    engine = workers
    plan = {
        "steps": [
            {"id": "a", "task": "shout", "type": "map"},  # forced to normal, as Go does
            {"id": "b", "task": "count", "depends_on": ["a"]},
        ]
    }

    @engine.task("plan-task")
    def plan_task(ctx):
        return plan

    engine.register(planned())
    run = engine.run("planned", input={"text": "go"}, timeout=30)
    assert run.status == "completed", run.error
    steps = engine.steps(run.id).set_index("step_id")
    assert list(steps.index) == ["plan", "after", "plan.a", "plan.b"]
    assert set(steps["status"]) == {"completed"}
    assert steps.loc["plan.a", "type"] == "normal"
    assert engine.step_output(run.id, "plan.a") == {"text": str(plan).upper()}
    types = list(engine.events(run.id)["type"])
    assert types.index("planner.materialized") == types.index("step.completed") + 1
    plan_b = engine.step_output(run.id, "plan.b")
    assert run.output == {"after": {"n": len(json.dumps(plan))}, "plan.b": plan_b}


@pytest.mark.parametrize(
    ("plan", "why"),
    [
        ({"steps": [{"id": "a", "task": "rm-rf"}]}, "task 'rm-rf' is not one of allowed_tasks"),
        ({"steps": [{"id": "a"}]}, "step 'a' needs a task"),
        ({"steps": [{"id": "a", "task": "shout", "depends_on": ["z"]}]}, "depends on 'z'"),
        (
            {"steps": [{"id": f"s{i}", "task": "shout"} for i in range(6)]},
            "6 steps, more than max_steps 5",
        ),
        (
            {
                "steps": [
                    {"id": "a", "task": "shout", "depends_on": ["b"]},
                    {"id": "b", "task": "shout", "depends_on": ["a"]},
                ]
            },
            "cycle",
        ),
        ("no plan", "parse planner output"),
    ],
)
def test_a_bad_plan_fails_the_planner_step_in_one_line(workers, plan, why):
    engine = workers

    @engine.task("plan-task")
    def plan_task(ctx):
        return plan

    engine.register(planned())
    run = engine.run("planned", input={"text": "go"}, timeout=30)
    assert run.status == "failed"
    assert why in run.error and run.error.startswith("step 'plan' failed: ")
    assert "planner.materialized" not in set(engine.events(run.id)["type"])


def test_the_simulator_plans_and_the_llm_steps_it_plans_run(tmp_path):
    with dn.Engine.start(
        data_dir=tmp_path / "e",
        llm_provider="simulated",
        llm_sim_latency_ms=5,
        llm_sim_tokens_per_s=0,
        llm_sim_seed=3,
    ) as engine:
        engine.register(
            {
                "name": "sim-plan",
                "steps": [
                    {
                        "id": "plan",
                        "task": "llm",
                        "type": "planner",
                        "config": {
                            "prompt": "Plan a short post about {input.topic}",
                            "max_steps": 3,
                            "allowed_tasks": ["llm"],
                        },
                    }
                ],
            }
        )
        run = engine.run("sim-plan", input={"topic": "durable workflows"}, timeout=30)
        assert run.status == "completed", run.error
        steps = engine.steps(run.id).set_index("step_id")
        fragment = [s for s in steps.index if s.startswith("plan.")]
        assert 1 <= len(fragment) <= 3 and set(steps["status"]) == {"completed"}
        first = engine.step_output(run.id, fragment[0])
        assert first["model"].startswith("simulated:") and first["text"]


def test_a_planner_on_an_openai_compatible_endpoint(tmp_path):
    server = ChatServer()
    try:
        reply = {"steps": [{"id": "one", "task": "shout"}, {"id": "two", "task": "shout"}]}
        server.script.append(Reply(text=json.dumps(reply)))
        with dn.Engine.start(
            data_dir=tmp_path / "e",
            llm_provider="openai",
            llm_base_url=server.url,
            llm_api_key="sk-test",
            llm_model="planner-model",
        ) as engine:

            @engine.task("shout")
            def shout(ctx):
                return "LOUD"

            engine.register(
                {
                    "name": "remote-plan",
                    "steps": [
                        {
                            "id": "plan",
                            "task": "llm",
                            "type": "planner",
                            "config": {"prompt": "Plan it", "allowed_tasks": ["shout"]},
                        }
                    ],
                }
            )
            run = engine.run("remote-plan", timeout=30)
            assert run.status == "completed", run.error
            asked = server.requests[0].body
            assert asked["response_format"] == {"type": "json_object"}
            assert "Allowed tasks: shout." in asked["messages"][-1]["content"]
            assert engine.step_output(run.id, "plan.two") == "LOUD"
    finally:
        server.close()


def test_an_agent_step_runs_its_task(workers):
    engine = workers
    engine.register(
        {"name": "agent", "steps": [{"id": "helper", "task": "shout", "type": "agent"}]}
    )
    run = engine.run("agent", input={"text": "hi"}, timeout=30)
    assert run.status == "completed" and run.output == {"text": "HI"}


def test_planner_configs_are_checked_at_register():
    bad = planned(max_steps=0)
    with pytest.raises(WorkflowError, match="config.max_steps': must be 1..100, got 0"):
        load_workflow(bad)


def test_the_live_view_redraws_the_dag_as_the_plan_grows_it(workers):
    from dagnats_nb.adapters.notebook.live import RunView

    engine = workers

    @engine.task("plan-task")
    def plan_task(ctx):
        return {"steps": [{"id": "x", "task": "shout"}]}

    engine.register(planned())
    run = engine.start_run("planned", input={"text": "go"})
    view = RunView(engine, run, interval=0.01).start()
    final = view.wait(30)
    assert final.status == "completed"
    assert list(final.steps) == ["plan", "after", "plan.x"]
    from dagnats_nb.adapters.notebook import render

    assert 'data-step="plan.x"' in render.dag_svg(view.defn, final)

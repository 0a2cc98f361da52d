"""The live run view's model (frames over time), its widgets and the static rendering."""

from __future__ import annotations

import time
import warnings

import pytest
from conftest import until
from IPython.core.interactiveshell import InteractiveShell

import dagnats_nb as dn
from dagnats_nb.adapters.notebook import render
from dagnats_nb.adapters.notebook.live import RunView
from dagnats_nb.adapters.notebook.render import Frame, StepView
from dagnats_nb.dag import load_workflow
from dagnats_nb.dag.edges import load_edges

RANK = {"pending": 0, "queued": 1, "running": 2, "retrying": 2, "completed": 3, "failed": 3}


@pytest.fixture
def eng(engine):
    @engine.task("items")
    def items(ctx):
        return list(range(ctx.input["n"]))

    @engine.task("work", concurrency=2)
    async def work(ctx):
        import asyncio

        await asyncio.sleep(0.05)  # simulated work: the view sees the map in progress
        if ctx.input == "boom":
            raise dn.Permanent("element boom is broken")
        return ctx.input

    @engine.task("report")
    def report(ctx):
        return len(ctx.input)

    engine.register(load_edges("items -> work -> report\nwork: type=map", "fan"))
    return engine


def test_frames_follow_the_run_throttled_to_ten_per_second(eng):
    run = eng.start_run("fan", {"n": 20})
    view = RunView(eng, run, interval=0.1).start()
    final = view.wait(30)
    assert final is not None and final.status == "completed"
    assert final.progress == 1.0 and final.last_error is None
    assert {s.status for s in final.steps.values()} == {"completed"}
    frames = view.frames
    # each step only moves forward: pending -> queued -> running -> completed
    for sid in ("items", "work", "report"):
        ranks = [RANK[f.steps[sid].status] for f in frames]
        assert ranks == sorted(ranks), (sid, [f.steps[sid].status for f in frames])
    # the map's instances were seen progressing (20 x 50 ms, 2 at a time: ~0.5 s)
    partial = [f.steps["work"].done for f in frames if f.steps["work"].count == 20]
    assert any(0 < done < 20 for done in partial), partial
    progress = [f.progress for f in frames]
    assert progress == sorted(progress) and 0 < progress[len(progress) // 2] < 1
    # throttled: live frames at least ~0.1 s apart (the final one is published at once)
    gaps = [b.at - a.at for a, b in zip(frames[:-2], frames[1:-1], strict=True)]
    assert all(g >= 0.09 for g in gaps), gaps
    span = frames[-1].at - frames[0].at
    assert len(frames) <= span * 10 + 2
    assert frames[-1].elapsed > 0.4


def test_widgets_end_as_a_static_rendering(eng, capsys):
    InteractiveShell.instance()  # display() publishes through the shell
    run = eng.start_run("fan", {"n": 6})
    view = RunView(eng, run, interval=0.05, widgets=True).start()
    assert view.wait(30).status == "completed"
    w = view._widgets
    assert w["bar"].value == 1.0 and w["bar"].bar_style == "success"
    assert "completed" in w["header"].value
    assert w["drawing"].value.count('data-status="completed"') == 3
    assert "6/6" in w["drawing"].value
    assert all(x.comm is None for x in w.values())  # closed once the run ended
    out = capsys.readouterr().out
    assert f"run {run.id} of fan: completed" in out  # the display was replaced (text form)


def test_a_failed_run_shows_its_last_error(eng):
    run = eng.start_run("fan", {"n": 0})
    run.wait(10)
    run = eng.start_run("fan", None)  # items fails: input is not a mapping
    view = RunView(eng, run, interval=0.05).start()
    final = view.wait(30)
    assert final.status == "failed"
    assert final.steps["items"].status == "failed" and final.last_error
    html = render.run_html(view.defn, final)
    assert 'data-status="failed"' in html and "color:#b91c1c" in html


def test_a_view_of_an_ended_run_is_final_at_once(eng):
    run = eng.run("fan", {"n": 2}, timeout=10)
    view = RunView(eng, run).start()
    assert view.done.is_set() and view.final.status == "completed" and view.updates == 1


def test_layers_and_drawing_need_no_graphviz():
    d = load_edges("a -> [b, c] -> d\nc -> e\nlone", "w")
    assert render.layers(d) == [["a", "lone"], ["b", "c"], ["d", "e"]]
    frame = Frame("r1", "w", "running", {s: StepView() for s in d.step_ids}, at=time.time())
    frame.steps["a"] = StepView("completed")
    frame.steps["b"] = StepView("running", done=3, count=4)
    svg = render.dag_svg(d, frame)
    assert svg.startswith("<svg") and svg.count("marker-end=") == 5
    assert 'data-step="b" data-status="running"' in svg and "running 3/4" in svg
    assert frame.progress == pytest.approx((1 + 0.75) / 6)
    assert "a | lone" in render.workflow_text(d)


def test_steps_without_a_task_are_captioned_by_their_type_not_none():
    d = load_workflow(
        {
            "name": "w",
            "steps": [
                {"id": "gate", "type": "approval", "config": {"subject": "s", "timeout": "1h"}},
                {"id": "plan", "task": "llm", "type": "planner", "depends_on": ["gate"]},
            ],
        }
    )
    svg = render.dag_svg(d, None)
    assert ">approval</text>" in svg and ">planner · llm</text>" in svg and "None" not in svg


def test_stopping_a_view_leaves_its_last_frame_with_a_note(eng):
    run = eng.start_run("fan", {"n": 40})
    view = RunView(eng, run, interval=0.05).start()
    until(lambda: view.frames, every=0.01, what="the view's first frame")
    view.stop()
    assert view.done.is_set() and view.final.status == "running"
    assert "no longer follows the run" in view.final.last_error
    count = view.updates
    assert run.wait(30).status == "completed"
    assert view.updates == count  # nothing published after the stop


def test_layers_follow_their_parents_to_avoid_crossings():
    d = load_edges("a\nb\nb -> x\na -> y", "w")
    assert render.layers(d) == [["a", "b"], ["y", "x"]]


def test_the_live_view_approves_with_its_buttons_and_opens_child_runs(engine):
    InteractiveShell.instance()  # display() publishes through the shell

    @engine.task("post")
    def post(ctx):
        return {"posted": ctx.input}

    engine.register(
        {"name": "kid", "steps": [{"id": "nap", "type": "sleep", "config": {"duration": "1s"}}]}
    )
    engine.register(
        {
            "name": "gated",
            "steps": [
                {"id": "review", "type": "approval", "config": {"subject": "s", "timeout": "1h"}},
                {
                    "id": "child",
                    "type": "sub_workflow",
                    "depends_on": ["review"],
                    "config": {"workflow": "kid"},
                },
                {"id": "post", "task": "post", "depends_on": ["review"]},
            ],
        }
    )
    run = engine.start_run("gated", {"text": "hi"})
    view = RunView(engine, run, interval=0.05, widgets=True).start()
    w = view._widgets
    until(lambda: w["gate:review"].layout.display is None, what="the approval row shown")
    assert 'data-status="running"' in w["drawing"].value
    assert "awaits approval" in w["drawing"].value
    assert w["child:child"].layout.display == "none"  # no child run yet
    w["gate:review:comment"].value = "fine by me"
    w["gate:review:approve"].click()
    assert w["gate:review:label"].value.startswith("<b>review</b> approved")
    until(lambda: w["child:child"].layout.display is None, what="the child row shown")
    assert f"{run.id}-child" in w["child:child:label"].value
    w["child:child:open"].click()
    assert [v.run.id for v in view.children] == [f"{run.id}-child"]
    assert view.wait(30).status == "completed"
    assert view.children[0].wait(30).status == "completed"
    assert engine.step_output(run.id, "post")["posted"]["comment"] == "fine by me"
    decision = engine.step_output(run.id, "review")
    assert decision["approved"] is True and decision["comment"] == "fine by me"


def test_a_step_no_worker_serves_is_named_until_a_handler_comes(eng):
    eng.register(load_edges("items -> enrich", "orphan"))
    t0 = time.monotonic()
    with warnings.catch_warnings():  # the engine warns at the start too; the view is tested
        warnings.simplefilter("ignore")
        run = eng.start_run("orphan", {"n": 1})
    view = RunView(eng, run, interval=0.05, tick=0.2).start()
    hint = "enrich: no worker serves this task — define `@dn.task('enrich')`"
    frame = until(
        lambda: view.frames and view.frames[-1].hints and view.frames[-1],
        timeout=15,
        every=0.05,
        what="the no-worker hint",
    )
    assert time.monotonic() - t0 >= 2.0  # checked once the step waited 2 s, not at once
    assert frame.hints == [hint]
    assert frame.steps["enrich"].status == "queued"
    assert frame.steps["enrich"].note == "no worker serves this task"
    html = render.run_html(view.defn, frame)
    assert "no worker serves this task — define <code>@dn.task(&#x27;enrich&#x27;)</code>" in html
    assert hint in render.run_text(frame)

    @eng.task("enrich")
    def enrich(ctx):
        return {"enriched": ctx.input}

    final = view.wait(30)
    assert final.status == "completed" and final.hints == []
    assert not final.steps["enrich"].note


def test_a_served_task_queued_behind_another_gets_no_hint(engine):
    @engine.task("hold", concurrency=1)
    def hold(ctx):
        time.sleep(2.5)  # simulated work: the next run's step waits in the queue meanwhile
        return ctx.input

    engine.register(load_edges("hold", "holds"))
    first = engine.start_run("holds", 1)
    run = engine.start_run("holds", 2)
    view = RunView(engine, run, interval=0.05, tick=0.2).start()
    assert view.wait(30).status == "completed"
    assert view._served["hold"][0] is True  # queued long enough to be checked: served
    assert not any(f.hints for f in view.frames)
    assert first.wait(10).status == "completed"

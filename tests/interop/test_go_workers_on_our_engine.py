"""dagnats' own Go worker (``interopworker``, built on its ``worker`` package) serving runs
that our orchestrator drives, beside our own handlers on other task types: the task
payload, consumer names and result events are the same bytes both ways."""

from __future__ import annotations

import json

from conftest import until
from goserve import GoWorker, go_binary

import dagnats_nb as dn

WORKFLOW = {
    "name": "go-mixed",
    "steps": [
        {"id": "greet", "task": "ggreet"},  # Go: {"name"} -> {"msg": "hello NAME"}
        {"id": "shout", "task": "gupper", "depends_on": ["greet"]},  # Go: {"msg"} -> upper
        {"id": "count", "task": "pycount", "depends_on": ["shout"]},  # ours
    ],
}

STRINGS = {
    "name": "go-strings",
    "steps": [
        {"id": "hello", "task": "sgreet"},  # Go: string -> "Hello, s!"
        {"id": "echo", "task": "pyecho", "depends_on": ["hello"]},
    ],
}

MAPPED = {
    "name": "go-map",
    "steps": [
        {"id": "names", "task": "pynames"},
        {"id": "each", "task": "ggreet", "type": "map", "depends_on": ["names"]},
        {"id": "join", "task": "pyjoin", "depends_on": ["each"]},
    ],
}


def test_a_go_worker_serves_our_runs_beside_our_handlers(tmp_path):
    binary = go_binary("interopworker", "DAGNATS_GO_WORKER")
    with dn.Engine.start(data_dir=tmp_path / "nb", llm_enabled=False) as eng:

        @eng.task("pycount")
        def pycount(ctx):
            return {"msg": ctx.input["msg"], "len": len(ctx.input["msg"])}

        @eng.task("pyecho")
        def pyecho(ctx):
            return {"got": ctx.input, "type": type(ctx.input).__name__}

        @eng.task("pynames")
        def pynames(ctx):
            return [{"name": n} for n in ctx.input]

        @eng.task("pyjoin")
        def pyjoin(ctx):
            return [item["msg"] for item in ctx.input]

        for wf in (WORKFLOW, STRINGS, MAPPED):
            eng.register(wf)
        worker = GoWorker(binary, eng.connect_url, tmp_path / "interopworker.log")
        try:
            until(
                lambda: {"workers-ggreet", "workers-sgreet"} <= set(eng.consumer_lag()["consumer"]),
                what="the Go worker's consumers",
            )
            run = eng.run("go-mixed", {"name": "ada"}, timeout=60)
            assert run.status == "completed", run.error
            assert run.output == {"msg": "HELLO ADA", "len": 9}
            assert eng.step_output(run.id, "greet") == {"msg": "hello ada"}

            run = eng.run("go-strings", "grace", timeout=60)
            assert run.status == "completed", run.error
            assert run.output == {"got": "Hello, grace!", "type": "str"}

            names = [f"n{i}" for i in range(7)]
            run = eng.run("go-map", names, timeout=60)
            assert run.status == "completed", run.error
            assert run.output == [f"hello n{i}" for i in range(7)]
            completed = eng.events(run.id).query("type == 'step.completed'")
            go_steps = completed[completed["worker_id"].str.startswith("worker-")]
            assert len(go_steps) == 7  # each item reported once, by the Go worker

            log = (tmp_path / "interopworker.log").read_text()
            assert "[ggreet]" in log and "[gupper]" in log and "[sgreet]" in log
        finally:
            worker.stop()
        assert json.loads(json.dumps(eng.status()))  # still answers after the Go worker left

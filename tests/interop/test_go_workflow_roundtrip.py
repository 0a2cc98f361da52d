"""Every dagnats example file through both engines' stores: what we write, the Go CLI
registers in a Go deployment, and what Go keeps in its ``workflow_defs`` we read back as the
same definition; one the Go CLI registers and starts on our engine, with steps that run
without a worker, runs to its end."""

from __future__ import annotations

import json

from conftest import conformance_dir, require_shared, until
from goserve import go_cli, go_serve  # noqa: F401  (fixtures)

import dagnats_nb as dn

FILES = sorted(p.name for p in conformance_dir().glob("*.json") if p.name != "workflow-schema.json")


def test_every_example_file_round_trips_through_a_go_deployment(go_serve, tmp_path):  # noqa: F811
    folder = require_shared(conformance_dir())
    assert len(FILES) >= 9
    ours = {}
    for name in FILES:
        defn = dn.load_workflow(folder / name, allow_unsupported=True)
        path = tmp_path / name
        path.write_text(defn.to_json())
        go_cli(go_serve.url, "workflow", "register", str(path))
        ours[defn.name] = defn
    eng = dn.Engine.connect(data_dir=tmp_path / "nb", url=go_serve.url)
    try:
        assert set(ours) <= set(eng.workflows())
        for name, defn in ours.items():
            # Go keeps a file's triggers in its trigger service, not in workflow_defs
            assert eng.workflow(name) == defn.model_copy(update={"triggers": None}), name
    finally:
        eng.stop()
    listed = go_cli(go_serve.url, "workflow", "list")
    assert all(name in listed for name in ours)


NO_WORKER_STEPS = {  # Go's file form: durations in nanoseconds
    "name": "no-worker-steps",
    "steps": [
        {"id": "greet", "task": "ggreet"},
        {"id": "nap", "type": "sleep", "depends_on": ["greet"], "config": {"duration": 10**8}},
        {"id": "reply", "type": "respond", "depends_on": ["greet", "nap"]},
    ],
}


def test_a_go_registered_and_started_run_of_no_worker_steps_runs_here(tmp_path):
    require_shared(conformance_dir())
    path = tmp_path / "no-worker-steps.json"
    path.write_text(json.dumps(NO_WORKER_STEPS))
    with dn.Engine.start(data_dir=tmp_path / "nb", llm_enabled=False) as eng:

        @eng.task("ggreet")
        def ggreet(ctx):
            return {"msg": f"hello {ctx.input['name']}"}

        go_cli(eng.connect_url, "workflow", "register", str(path))
        args = ("run", "start", "no-worker-steps", '{"name": "go"}', "--json")
        started = json.loads(go_cli(eng.connect_url, *args))
        run = until(lambda: eng.get_run(started["run_id"]), what="the Go-started run")
        assert run.wait(30).status == "completed", run.error
        assert run.output == {"name": "go"}  # two parents: Go answers with the run input
        status = json.loads(go_cli(eng.connect_url, "run", "status", run.id, "--json"))
        assert status["status"] == "completed"

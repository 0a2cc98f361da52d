"""Every dagnats example file through both engines' stores: what we write, the Go CLI
registers in a Go deployment, and what Go keeps in its ``workflow_defs`` we read back as the
same definition. A definition with step types we do not run yet is refused at ``start_run``
and, started by the Go CLI on our engine, fails its run with one line."""

from __future__ import annotations

import json

import pytest
from conftest import conformance_dir, require_shared, until
from goserve import go_cli, go_serve  # noqa: F401  (fixtures)

import dagnats_nb as dn
from dagnats_nb.errors import UnsupportedStepType

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


RESPOND = {  # a step type this engine does not run yet
    "name": "replies",
    "steps": [
        {"id": "greet", "task": "ggreet"},
        {"id": "reply", "type": "respond", "depends_on": ["greet"]},
    ],
}


def test_a_go_definition_we_cannot_run_fails_its_run_in_one_line(tmp_path):
    require_shared(conformance_dir())
    defn = dn.load_workflow(RESPOND, allow_unsupported=True)
    path = tmp_path / "replies.json"
    path.write_text(defn.to_json())
    with dn.Engine.start(data_dir=tmp_path / "nb", llm_enabled=False) as eng:
        go_cli(eng.url, "workflow", "register", str(path))
        with pytest.raises(UnsupportedStepType, match="is not supported yet"):
            eng.start_run(defn.name)
        started = json.loads(go_cli(eng.url, "run", "start", defn.name, "{}", "--json"))
        run = until(lambda: eng.get_run(started["run_id"]), what="the Go-started run")
        assert run.wait(30).status == "failed"
        assert "uses step types this engine does not run yet: respond" in run.error
        status = json.loads(go_cli(eng.url, "run", "status", run.id, "--json"))
        assert status["status"] == "failed"

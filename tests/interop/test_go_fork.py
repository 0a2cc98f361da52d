"""A fork (``eng.fork``) as the Go dagnats CLI reads it: Go has no fork event, so its reused
steps are ordinary ``step.completed`` events, and its run record lists them completed with
the source's outputs."""

from __future__ import annotations

import base64
import json
from collections import Counter

from conftest import until
from goserve import go_cli

import dagnats_nb as dn

ROWS = {
    "name": "nb-rows",
    "steps": [
        {"id": "load", "task": "load"},
        {"id": "total", "task": "total", "depends_on": ["load"]},
    ],
}


def test_the_go_cli_shows_a_forks_reused_steps_completed(tmp_path):
    calls: Counter = Counter()
    with dn.Engine.start(data_dir=tmp_path / "nb", llm_enabled=False) as eng:

        @eng.task("load")
        def load(ctx):
            calls["load"] += 1
            return {"rows": [1, 2, 3]}

        @eng.task("total")
        def total(ctx):
            calls["total"] += 1
            return sum(ctx.input["rows"]) * calls["total"]

        source = eng.run(ROWS, timeout=30)
        fork = eng.fork(source.id, "total")
        assert fork.wait(30).output == 12 and calls == Counter(load=1, total=2)
        url = eng.connect_url
        until(lambda: fork.id in go_cli(url, "run", "list"), what="the fork's record")
        status = json.loads(go_cli(url, "run", "status", fork.id, "--json"))
        assert status["status"] == "completed" and status["workflow_id"] == "nb-rows"
        load_step = status["steps"]["load"]
        assert load_step["status"] == "completed"
        assert json.loads(base64.b64decode(load_step["output"])) == {"rows": [1, 2, 3]}
        assert status["steps"]["total"]["status"] == "completed"
        events = go_cli(url, "run", "events", fork.id)
        lines = [line for line in events.splitlines() if "step.completed" in line]
        assert any("load" in line for line in lines) and any("total" in line for line in lines)
        assert '{"rows":[1,2,3]}' in events

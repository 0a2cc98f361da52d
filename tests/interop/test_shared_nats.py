"""Our engine and the Go engine on one NATS: who orchestrates is the ``orchestrate``
setting. Beside a running Go ``dagnats serve``, ``auto`` leaves orchestration to Go and our
engine works tasks (in-kernel handlers) and reads; ``on`` refuses in one line."""

from __future__ import annotations

import threading
from collections import Counter

import pytest
from goserve import go_serve, go_worker  # noqa: F401  (fixtures)

import dagnats_nb as dn
from dagnats_nb.errors import ConfigError

WORKFLOW = {
    "name": "shared-nats",
    "steps": [
        {"id": "greet", "task": "ggreet"},  # the Go worker
        {"id": "shout", "task": "pyshout", "depends_on": ["greet"]},  # our in-kernel handler
    ],
}


def test_beside_a_go_engine_ours_works_tasks_and_reads(go_serve, go_worker, tmp_path):  # noqa: F811
    calls: Counter = Counter()
    lock = threading.Lock()
    opts = dict(nats_url=go_serve.url, llm_enabled=False)
    with pytest.raises(ConfigError, match="orchestrate = on, but the Go dagnats engine"):
        dn.Engine.start(data_dir=tmp_path / "on", orchestrate="on", **opts)
    with dn.Engine.start(data_dir=tmp_path / "nb", **opts) as eng:
        assert eng.orchestrator is None  # auto: the Go engine orchestrates

        @eng.task("pyshout")
        def pyshout(ctx):
            with lock:
                calls[ctx.run_id] += 1
            return {"shout": ctx.input["msg"].upper()}

        eng.register(WORKFLOW)
        runs = [eng.start_run("shared-nats", {"name": f"n{i}"}) for i in range(5)]
        for i, run in enumerate(runs):
            assert run.wait(60).status == "completed", run.error
            assert run.output == {"shout": f"HELLO N{i}"}
        assert calls == Counter({r.id: 1 for r in runs})  # one orchestrator: each task once
        listed = eng.runs().set_index("run_id")
        assert all(listed.loc[r.id, "status"] == "completed" for r in runs)
        steps = eng.steps(runs[0].id).set_index("step_id")
        assert list(steps["status"]) == ["completed", "completed"]
        assert eng.step_output(runs[0].id, "greet") == {"msg": "hello n0"}

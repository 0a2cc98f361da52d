"""required_capabilities matched against what workers offer, on a real engine: a worker
without a step's capabilities leaves its tasks for one that has them (registered in the
workers KV); control-plane is never granted, as Go's default; the task carries Go's field."""

from __future__ import annotations

import asyncio
import json
import time

import nats

from dagnats_nb.facade.worker_process import WorkerProcess

GPU = {
    "name": "render",
    "steps": [
        {"id": "plan", "task": "plan", "required_capabilities": ["control-plane"]},
        {"id": "draw", "task": "draw", "depends_on": ["plan"], "required_capabilities": ["gpu"]},
    ],
}


def _worker(engine, worker_id: str) -> dict:
    """A worker's entry in the workers KV, read as another tool would."""

    async def read():
        nc = await nats.connect(engine.connect_url)
        try:
            kv = await nc.jetstream().key_value("workers")
            return json.loads((await kv.get(worker_id)).value)
        finally:
            await nc.close()

    return asyncio.run(read())


def test_a_step_runs_only_on_a_worker_with_its_capabilities(engine):
    @engine.task("plan")
    def plan(ctx):  # control-plane is stripped (never granted), so any worker takes it
        return {"frames": 2}

    @engine.task("draw")
    def draw_here(ctx):
        raise AssertionError("this worker has no gpu")

    engine.register(GPU)
    run = engine.start_run("render")
    time.sleep(1.5)
    assert engine.get_run(run.id).status == "running"
    steps = engine.steps(run.id).set_index("step_id")
    assert steps.loc["plan", "status"] == "completed"
    assert steps.loc["draw", "status"] in ("queued", "pending")
    assert engine.workers["draw"].skipped >= 1

    def draw_on_gpu(ctx):
        return {"drawn": ctx.input["frames"], "by": ctx.worker_id}

    gpu = WorkerProcess(
        engine.settings,
        {"draw": (draw_on_gpu, 1)},
        url=engine.url,
        worker_id="gpu-box",
        capabilities=["gpu"],
    )
    with gpu:
        assert run.wait(timeout=30).status == "completed"
        assert run.output == {"drawn": 2, "by": "gpu-box"}
        offered = _worker(engine, "gpu-box")
        assert offered["capabilities"] == ["gpu"]
        assert offered["tasks"]["draw"]["capabilities"] == ["gpu"]
    assert _worker(engine, engine.worker_id)["capabilities"] == []

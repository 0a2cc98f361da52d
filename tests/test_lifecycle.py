"""The engine's public life cycle: extensions that plug in (how the HTTP adapter is wired)
and pause() / resume() (what a restore goes through)."""

from __future__ import annotations

import pytest
from conftest import until

import dagnats_nb as dn
from dagnats_nb.facade import extensions
from dagnats_nb.wire import protocol

FLOW = {"name": "twice", "steps": [{"id": "double", "task": "double"}]}


class Recorder:
    """An extension that notes what the engine looked like when it started and stopped."""

    def __init__(self, engine: dn.Engine, log: list) -> None:
        self.engine, self.log = engine, log

    async def start(self) -> None:
        eng = self.engine
        self.log.append(("start", eng._nc.is_connected, eng.orchestrator is None))

    async def stop(self) -> None:
        self.log.append(("stop", self.engine._nc.is_connected))


@pytest.fixture
def recorded():
    log: list = []

    def factory(engine):
        return Recorder(engine, log) if engine.settings.http_addr is None else None

    dn.Engine.add_extension(factory)
    try:
        yield log
    finally:
        extensions.remove_extension(factory)


def test_an_extension_starts_once_connected_before_replay_and_stops_with_the_engine(
    tmp_path, recorded
):
    eng = dn.Engine.start(data_dir=tmp_path / "e", llm_enabled=False)
    try:
        # connected to NATS, orchestrator not yet started: /ready can report the replay
        assert recorded == [("start", True, True)]
        assert any(isinstance(x, Recorder) for x in eng.extensions)
    finally:
        eng.stop()
    assert recorded == [("start", True, True), ("stop", True)]


def test_a_factory_that_returns_none_adds_nothing(tmp_path, recorded):
    with dn.Engine.start(data_dir=tmp_path / "e", llm_enabled=False, http_addr="127.0.0.1:0"):
        pass
    assert recorded == []


def test_the_http_adapter_is_an_extension(tmp_path):
    from dagnats_nb.adapters.http.extension import HTTPSide, http_side

    with dn.Engine.start(data_dir=tmp_path / "e", llm_enabled=False, http_addr="127.0.0.1:0") as e:
        side = http_side(e)
        assert isinstance(side, HTTPSide) and e.http_url == side.server.url
    with dn.Engine.start(data_dir=tmp_path / "f", llm_enabled=False) as e:
        assert http_side(e) is None and e.http_url is None


def test_pause_stops_applying_history_and_taking_tasks_until_resume(tmp_path):
    with dn.Engine.start(data_dir=tmp_path / "e", llm_enabled=False) as eng:

        @eng.task("double")
        def double(ctx):
            return ctx.input * 2

        eng.register(FLOW)
        assert eng.run("twice", 2, timeout=20).output == 4
        eng.pause()
        assert eng.workers == {}
        run = eng.start_run("twice", 21)
        # the start is recorded on the stream (positive signal), yet nothing acts on it
        until(lambda: len(eng.events(run.id)) > 0, what="the run's start on the stream")
        assert list(eng.events(run.id)["type"]) == [protocol.WORKFLOW_STARTED]
        assert eng.run_state(run.id) is None  # the paused orchestrator has not seen it
        eng.pause()  # idempotent
        eng.resume()
        assert set(eng.workers) == {"double"}
        assert run.wait(20).output == 42
        eng.resume()  # idempotent
        assert eng.run("twice", 5, timeout=20).output == 10


def test_an_attached_engine_cannot_pause(tmp_path):
    with dn.Engine.start(data_dir=tmp_path / "e", llm_enabled=False):
        attached = dn.Engine.connect(data_dir=tmp_path / "e")
        try:
            with pytest.raises(dn.DagnatsError, match="cannot pause on an attached engine"):
                attached.pause()
        finally:
            attached.stop()

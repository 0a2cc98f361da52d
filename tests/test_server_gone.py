"""A run wait does not outlive the embedded nats-server (issue 16, item 6): when the
server's process dies, every wait ends at once with one line naming what happened and
what to do, and a wait started afterwards fails the same way."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

import dagnats_nb as dn
from dagnats_nb.errors import RunError


def test_killing_the_server_ends_a_wait_with_no_timeout(tmp_path):
    eng = dn.Engine.start(data_dir=tmp_path / "e")
    try:
        eng.register({"name": "stuck", "steps": [{"id": "a", "task": "nobody"}]})
        with pytest.warns(dn.UnservedTaskWarning):
            run = eng.start_run("stuck")
        outcome: dict = {}

        def wait() -> None:
            try:
                run.wait(timeout=None)
                outcome["status"] = run.status
            except RunError as exc:
                outcome["error"] = str(exc)

        waiter = threading.Thread(target=wait)
        waiter.start()
        time.sleep(0.3)
        os.kill(eng.server.pid, signal.SIGKILL)
        waiter.join(15)
        assert not waiter.is_alive(), "the wait outlived the server"
        error = outcome["error"]
        assert "the embedded nats-server has exited" in error and "start it again" in error
        assert "\n" not in error
        with pytest.raises(dn.DagnatsError, match="nats-server has exited"):
            run.wait(timeout=None)
    finally:
        eng.stop()


def test_waits_work_again_once_jetstream_stores_again(engine):
    """A fault that ended the waits (a full store) fails later waits only while it lasts:
    the first start JetStream stores again ends it, and that run is waited on as usual."""
    engine.add_handler("echo", lambda ctx: ctx.input)
    wf = {"name": "after-fault", "steps": [{"id": "e", "task": "echo"}]}
    with pytest.warns(dn.UnservedTaskWarning):  # it waits for ever: no worker serves it
        held = engine.start_run({"name": "held", "steps": [{"id": "h", "task": "nobody"}]})

    async def fault() -> None:
        engine.orchestrator.report_fault("JetStream stores nothing now (test)", store_full=True)

    engine._call(fault())
    with pytest.raises(RunError, match="JetStream stores nothing now"):
        held.wait(5)
    run = engine.run(wf, 3, timeout=20)  # before: "JetStream stores nothing now" at once
    assert run.status == "completed" and run.output == 3
    assert engine.orchestrator.store_full is None

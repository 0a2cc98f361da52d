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

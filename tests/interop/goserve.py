"""The real dagnats (Go), from ``../shared/interop/``, for the interop tests.

``DAGNATS_GO_BIN`` names another ``dagnats`` binary, ``DAGNATS_GO_WORKER`` another
``interopworker``, ``DAGNATS_GO_BRIDGE`` another ``bridgeworker``. Without them the tests
skip with one line saying how to get them;
``DAGNATS_REQUIRE_SHARED=1`` (set by ``.ci/run``) turns that skip into a failure.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import go_binary  # noqa: F401  (re-exported for the interop tests)


def go_cli(url: str, *args: str, check: bool = True) -> str:
    """Run the Go ``dagnats`` CLI against the NATS at ``url``; its stdout ("" when it failed
    and ``check`` is off). A failure with ``check`` fails the test with its output."""
    out = subprocess.run(
        [str(go_binary("dagnats", "DAGNATS_GO_BIN")), *args],
        env={**os.environ, "DAGNATS_NATS_URL": url, "NO_COLOR": "1"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0 or not check, (args, out.stdout, out.stderr)
    return out.stdout if out.returncode == 0 else ""


def terminate(proc: subprocess.Popen, grace: float) -> None:
    """SIGTERM (a Go process drains), then SIGKILL after ``grace`` seconds."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class GoServe:
    """``dagnats serve`` (embedded nats-server, Go engine, HTTP API) on loopback ports in
    its own data dir; stopped with SIGTERM."""

    def __init__(self, binary: Path, root: Path) -> None:
        self.root = root
        self.nats_port, self.http_port = free_port(), free_port()
        self.url = f"nats://127.0.0.1:{self.nats_port}"
        self.http = f"http://127.0.0.1:{self.http_port}"
        self.log = root / "dagnats-serve.log"
        env = {
            **os.environ,
            "DAGNATS_DATA_DIR": str(root / "data"),
            "DAGNATS_HTTP_ADDR": f"127.0.0.1:{self.http_port}",
            "DAGNATS_NATS_PORT": str(self.nats_port),
            "NO_COLOR": "1",
        }
        root.mkdir(parents=True, exist_ok=True)
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [str(binary), "serve"], cwd=root, env=env, stdout=log, stderr=log
            )
        self._wait_healthy(60)

    def _wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"dagnats serve exited: {self.log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(self.http + "/health", timeout=1) as reply:
                    if reply.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"dagnats serve not healthy in {timeout}s: see {self.log}")

    def stop(self) -> None:
        terminate(self.proc, grace=20)


@pytest.fixture
def go_serve(tmp_path) -> Iterator[GoServe]:
    server = GoServe(go_binary("dagnats", "DAGNATS_GO_BIN"), tmp_path / "go")
    try:
        yield server
    finally:
        server.stop()


class GoWorker:
    """``interopworker`` (dagnats' own Go ``worker`` package): task types ``ggreet``,
    ``gupper``, ``sgreet``."""

    def __init__(self, binary: Path, url: str, log: Path) -> None:
        self.log = log
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(
                [str(binary)], env={**os.environ, "NATS_URL": url}, stdout=out, stderr=out
            )

    def stop(self) -> None:
        terminate(self.proc, grace=10)


@pytest.fixture
def go_worker(go_serve, tmp_path) -> Iterator[GoWorker]:
    binary = go_binary("interopworker", "DAGNATS_GO_WORKER")
    worker = GoWorker(binary, go_serve.url, tmp_path / "interopworker.log")
    try:
        yield worker
    finally:
        worker.stop()


class GoBridgeWorker:
    """``bridgeworker`` (dagnats' own Go HTTP-bridge client, ``sdk/httpclient``) against the
    bridge at ``url``: connects as ``go-bridgeworker-1`` (max_tasks 4) for ``task``, polls,
    completes each task with ``{"echo": input}`` (``mode="complete"``) or fails it with
    ``error`` (``"fail"``), and exits after ``n``; ``"pollonce"`` polls once and exits."""

    WORKER_ID = "go-bridgeworker-1"

    def __init__(
        self,
        url: str,
        token: str,
        task: str,
        log: Path,
        mode: str = "complete",
        n: int = 1,
        error: str | None = None,
    ) -> None:
        binary = go_binary("bridgeworker", "DAGNATS_GO_BRIDGE")
        args = [str(binary), "-url", url, "-token", token, "-task", task, "-mode", mode]
        args += ["-n", str(n), "-wait", "60s", *(["-error", error] if error else [])]
        self.log = log
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)

    def wait(self, timeout: float = 60) -> str:
        """Its output, once it has exited 0."""
        code = self.proc.wait(timeout)
        text = self.log.read_text()
        assert code == 0, text
        return text

    def stop(self) -> None:
        terminate(self.proc, grace=5)

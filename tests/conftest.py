"""Shared fixtures. Every engine test runs against a real nats-server in a temp data dir."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest

import dagnats_nb as dn

T = TypeVar("T")


def until(
    condition: Callable[[], T], timeout: float = 10.0, every: float = 0.02, what: str = "condition"
) -> T:
    """Poll ``condition`` until it returns something truthy and return that value.

    Tests wait for what they expect to observe, never for a fixed time: a fixed sleep
    is either too short on a busy machine (flaky) or too long everywhere (slow)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(every)


@contextlib.contextmanager
def notebook_shell():
    """An IPython shell as a notebook's kernel has one: no history, the extension loaded
    (unloaded at the end)."""
    from IPython.core.interactiveshell import InteractiveShell
    from traitlets.config import Config

    cfg = Config()
    cfg.HistoryManager.enabled = False
    shell = InteractiveShell.instance(config=cfg)
    shell.run_line_magic("load_ext", "dagnats_nb")
    try:
        yield shell
    finally:
        shell.run_line_magic("unload_ext", "dagnats_nb")


@pytest.fixture(scope="module")
def ip():
    """A module's notebook shell (:func:`notebook_shell`)."""
    with notebook_shell() as shell:
        yield shell


@pytest.fixture
def small_disk(tmp_path) -> Path:
    """A 48 MiB tmpfs mounted for the test (a disk that fills below max_store_bytes); the
    test skips with one line where mounting is not permitted (it needs root, as CI has)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=48m,mode=0700", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({done.stderr.strip()}): run as root")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def conformance_dir() -> Path:
    env = os.environ.get("DAGNATS_CONFORMANCE_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "shared" / "conformance" / "dagnats"


SHARED_HINT = (
    "put the project's shared/ folder (conformance files, Go interop binaries) beside this "
    "checkout as ../shared, or set DAGNATS_CONFORMANCE_DIR"
)


def missing_shared(message: str):
    """Skip the test with ``message`` (one line saying how to get what ../shared holds);
    with ``DAGNATS_REQUIRE_SHARED=1`` (CI, ``.ci/run``) fail instead."""
    if os.environ.get("DAGNATS_REQUIRE_SHARED") == "1":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def require_shared(path: Path) -> Path:
    """``path`` (under ../shared), or skip the test saying how to get it (see
    :func:`missing_shared`)."""
    if path.exists():
        return path
    missing_shared(f"{path} not found: {SHARED_HINT}")


INTEROP = Path(__file__).resolve().parents[2] / "shared" / "interop"
GO_HINT = (
    "put the project's shared/ folder beside this checkout as ../shared (its interop/ holds "
    "the Go dagnats binaries), or name them with DAGNATS_GO_BIN / DAGNATS_GO_WORKER / "
    "DAGNATS_GO_BRIDGE"
)


def go_binary(name: str, env: str) -> Path:
    """The Go binary ``name`` from ../shared/interop (or the path in the environment
    variable ``env``), or skip/fail as :func:`missing_shared` says."""
    path = Path(os.environ.get(env) or INTEROP / name)
    if path.is_file() and os.access(path, os.X_OK):
        return path
    missing_shared(f"{path} not found: {GO_HINT}")


@pytest.fixture
def conformance() -> Path:
    return require_shared(conformance_dir())


@pytest.fixture
def engine(tmp_path):
    eng = dn.Engine.start(data_dir=tmp_path / "engine", ack_wait="2s")
    try:
        yield eng
    finally:
        eng.stop()


def checkpointed(eng: dn.Engine) -> dict:
    """Wait for a snapshot checkpoint that covers every event the orchestrator applied, and
    return it as stored (``runtime.snapshots``)."""
    from dagnats_nb.runtime import snapshots
    from dagnats_nb.transport.reading import last_data

    o = eng.orchestrator
    until(
        lambda: o.snapshots.checkpoint_seq >= o.last_seq and not o.snapshots._dirty,
        timeout=10,
        what="a checkpoint covering the history",
    )
    return json.loads(eng._call(last_data(eng._js, snapshots.STREAM, snapshots.CHECKPOINT)))

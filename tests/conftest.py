"""Shared fixtures. Every engine test runs against a real nats-server in a temp data dir."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import dagnats_nb as dn


def conformance_dir() -> Path:
    env = os.environ.get("DAGNATS_CONFORMANCE_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "shared" / "conformance" / "dagnats"


@pytest.fixture
def conformance() -> Path:
    path = conformance_dir()
    assert path.is_dir(), f"conformance files not found at {path}: set DAGNATS_CONFORMANCE_DIR"
    return path


@pytest.fixture
def engine(tmp_path):
    eng = dn.Engine.start(data_dir=tmp_path / "engine", ack_wait="2s")
    try:
        yield eng
    finally:
        eng.stop()

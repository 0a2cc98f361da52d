"""``workers`` KV entries read in both forms: dagnats-nb's and the Go dagnats worker's."""

from __future__ import annotations

import pytest

from dagnats_nb.observe.report import format_status
from dagnats_nb.wire.workers import read_entry

GO = {
    "worker_id": "worker-1b57195942c973b5",
    "task_types": ["ggreet", "gupper"],
    "language": "go",
    "transport": "nats",
    "max_tasks": 3,
    "pid": 25612,
    "hostname": "vm",
    "version": "dev",
    "last_seen": "2026-11-30T15:29:37.823545812Z",  # nanoseconds, as Go writes them
}
OURS = {
    "worker_id": "vm-1-abc",
    "host": "vm",
    "pid": 7,
    "tasks": {"t": {"concurrency": 4, "inflight": 1, "completed": 2, "failed": 0}},
    "started_at": "2026-11-30T15:29:00.000000Z",
    "heartbeat_at": "2026-11-30T15:29:30.500000Z",
}


def test_a_go_workers_entry():
    e = read_entry(GO)
    assert e.worker_id == GO["worker_id"] and e.language == "go" and e.host == "vm"
    assert e.tasks == {"ggreet": None, "gupper": None}  # concurrency: the Go side's own
    assert e.heartbeat_at == pytest.approx(1796052577.823545, abs=1e-5)


def test_our_entry():
    e = read_entry(OURS)
    assert (e.worker_id, e.tasks, e.pid, e.language) == ("vm-1-abc", {"t": 4}, 7, "python")
    assert e.heartbeat_at == pytest.approx(1796052570.5)


def test_an_entry_without_a_heartbeat_or_with_a_bad_one():
    assert read_entry({"worker_id": "x"}).heartbeat_at is None
    assert read_entry({"worker_id": "x", "last_seen": "yesterday"}).heartbeat_at is None


def test_status_text_lists_both_kinds_of_worker():
    status = {
        "url": "nats://127.0.0.1:1",
        "connected": True,
        "data_dir": "/d",
        "streams": [],
        "workers": [GO, OURS],
        "pending_tasks": {},
    }
    text = format_status(status)
    assert "worker-1b57195942c973b5 (go)  pid 25612  ggreet, gupper" in text
    assert "vm-1-abc  pid 7  t (x4)" in text

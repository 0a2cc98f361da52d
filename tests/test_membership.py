"""Engine heartbeats (KV ``dagnats_engines``) and the solo guard: one dagnats-nb orchestrator
on a NATS. Every engine test runs against a real nats-server."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import subprocess
import sys
import time

import nats
import pytest
from conftest import until

import dagnats_nb as dn
from dagnats_nb.dag.membership import DEAD_AFTER, Liveness, Reading
from dagnats_nb.runtime import membership
from dagnats_nb.server.process import EmbeddedServer
from dagnats_nb.transport.jetstream import jetstream

OPTS = dict(llm_enabled=False)
ONE = {"name": "one", "steps": [{"id": "a", "task": "inc"}]}


# -- liveness, pure -----------------------------------------------------------------------


def test_liveness_follows_revisions_on_the_observers_clock():
    live = Liveness()
    entry = {"host": "h", "pid": 1, "orchestrates": True}
    live.observe({"engine.a": Reading(5, entry)}, now=100.0)
    assert live.state("engine.a", 100.0) == "unknown"  # first sight: it may be dead already
    assert live.state("engine.a", 102.9) == "unknown"
    live.observe({"engine.a": Reading(5, entry)}, now=102.9)  # the same revision: no news
    assert live.state("engine.a", 103.0) == "dead"  # 3 s without a change
    live.observe({"engine.a": Reading(6, entry)}, now=103.2)
    assert live.state("engine.a", 103.2) == "live"  # it put again: alive after all
    assert live.state("engine.a", 106.1) == "live" and live.silence(
        "engine.a", 106.1
    ) == pytest.approx(2.9)
    assert live.state("engine.a", 106.2) == "dead"
    live.observe({"engine.a": Reading(7, entry)}, now=106.5)
    assert live.state("engine.a", 107.0) == "live"
    live.observe({}, now=107.5)  # deleted (a clean stop) or aged out: forgotten
    assert live.seen() == []


def test_liveness_counts_the_silence_the_server_saw_before_the_first_sight():
    live = Liveness()
    entries = {
        "engine.old": Reading(3, {}, silent=600.0),  # left by an engine killed long ago
        "engine.new": Reading(9, {}, silent=1.0),
        "engine.odd": Reading(4, {}, silent=-2.0),  # a stamp after the answer: no credit
    }
    live.observe(entries, now=50.0)
    assert live.state("engine.old", 50.0) == "dead"  # at once: no 3 s wait for it
    assert live.state("engine.new", 51.9) == "unknown"
    assert live.state("engine.new", 52.0) == "dead"  # 1 s before + 2 s seen
    assert live.silence("engine.odd", 50.0) == 0.0
    assert live.state("engine.odd", 50.0 + DEAD_AFTER) == "dead"
    live.observe({**entries, "engine.new": Reading(10, {}, silent=0.0)}, now=51.0)
    assert live.state("engine.new", 53.9) == "live"  # a change resets what came before


# -- the heartbeat ------------------------------------------------------------------------


def _entries(url: str) -> dict:
    """The engine entries as read by another client: ``{key: (revision, value)}``."""

    async def read() -> dict:
        nc = await nats.connect(url)
        try:
            got = await membership.read_entries(jetstream(nc))
            return {k: (r.revision, dict(r.value)) for k, r in got.items()}
        finally:
            await nc.close()

    return asyncio.run(read())


def _rows(url: str) -> list[dict]:
    async def read() -> list[dict]:
        nc = await nats.connect(url)
        try:
            return await membership.seen_once(jetstream(nc))
        finally:
            await nc.close()

    return asyncio.run(read())


def test_the_heartbeat_key_holds_its_fields_and_leaves_on_a_clean_stop(tmp_path):
    with EmbeddedServer(data_dir=tmp_path / "srv") as server:
        eng = dn.Engine.start(data_dir=tmp_path / "e", nats_url=server.client_url, **OPTS)
        try:
            key = f"engine.{eng.worker_id}"
            first = _entries(server.client_url)
            assert list(first) == [key]
            rev, value = first[key]
            assert value["host"] == socket.gethostname() and value["pid"] == os.getpid()
            assert value["version"] == dn.__version__ and value["mode"] == "solo"
            assert value["orchestrates"] is True and value["started"]
            until(lambda: _entries(server.client_url)[key][0] > rev, timeout=3)
            until(lambda: [e["state"] for e in eng.status()["engines"]] == ["live"], timeout=3)
            (row,) = eng.status()["engines"]
            assert row["engine_id"] == eng.worker_id and row["self"] and row["orchestrates"]
            assert row["pid"] == os.getpid() and row["age"] < DEAD_AFTER
        finally:
            eng.stop()
        assert _entries(server.client_url) == {}  # deleted, not left to age out
        info = asyncio.run(_bucket(server.client_url))
        assert info.config.max_age == 3600.0 and info.config.max_msgs_per_subject == 1
        assert info.config.metadata["dagnats-nb.owner"] == "dagnats-nb"


async def _bucket(url: str):
    nc = await nats.connect(url)
    try:
        return await jetstream(nc).stream_info(membership.STREAM)
    finally:
        await nc.close()


# -- the solo guard -----------------------------------------------------------------------


def test_a_second_engine_with_orchestrate_on_refuses_in_one_line(tmp_path):
    with dn.Engine.start(data_dir=tmp_path / "a", **OPTS) as first:
        url = first.connect_url
        t0 = time.monotonic()
        with pytest.raises(dn.ConfigError) as info:
            dn.Engine.start(data_dir=tmp_path / "b", nats_url=url, orchestrate="on", **OPTS)
        text = str(info.value)
        assert "\n" not in text
        assert f"host {socket.gethostname()}, pid {os.getpid()}" in text
        assert "orchestrate = off" in text and "stop the other engine" in text
        assert time.monotonic() - t0 < 10
        # the refused engine left no heartbeat: only the first one's is there
        assert list(_entries(url)) == [f"engine.{first.worker_id}"]


def test_orchestrate_auto_beside_another_engine_works_tasks_and_its_runs_complete(tmp_path, caplog):
    with dn.Engine.start(data_dir=tmp_path / "a", **OPTS) as first:
        with caplog.at_level(logging.WARNING, logger="dagnats_nb"):
            second = dn.Engine.start(data_dir=tmp_path / "b", nats_url=first.connect_url, **OPTS)
        try:
            assert second.orchestrator is None and first.orchestrator is not None
            assert any(
                f"pid {os.getpid()} orchestrates" in r.getMessage()
                and "orchestrate = auto" in r.getMessage()
                for r in caplog.records
            )
            second.add_handler("inc", lambda ctx: ctx.input + 1)  # the second works tasks
            second.register(ONE)
            run = second.run("one", 41, timeout=30)
            assert run.status == "completed" and run.output == 42
            assert first.run_state(run.id)["status"] == "completed"  # the first applied it
            until(
                lambda: (
                    {e["engine_id"]: e["state"] for e in second.status()["engines"]}
                    == {first.worker_id: "live", second.worker_id: "live"}
                ),
                timeout=5,
            )
            rows = {e["engine_id"]: e for e in second.status()["engines"]}
            assert rows[first.worker_id]["orchestrates"] is True
            assert rows[second.worker_id]["orchestrates"] is False
            assert rows[second.worker_id]["self"] and not rows[first.worker_id]["self"]
        finally:
            second.stop()


CHILD = """
import sys, time
import dagnats_nb as dn
eng = dn.Engine.start(data_dir=sys.argv[1], nats_url=sys.argv[2], orchestrate="on",
                      llm_enabled=False)
print(eng.worker_id, flush=True)
time.sleep(600)
"""


def test_a_killed_engine_is_dead_after_3s_and_another_may_orchestrate_then(tmp_path):
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    with EmbeddedServer(data_dir=tmp_path / "srv") as server:
        url = server.client_url
        child = subprocess.Popen(
            [sys.executable, str(script), str(tmp_path / "c"), url],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            child_id = child.stdout.readline().strip()
            assert child_id, "the child engine did not start"
            key = f"engine.{child_id}"
            with pytest.raises(dn.ConfigError, match=f"pid {child.pid} orchestrates"):
                dn.Engine.start(data_dir=tmp_path / "x", nats_url=url, orchestrate="on", **OPTS)
            before = _entries(url)[key][0]
            child.send_signal(signal.SIGKILL)  # no clean stop: its entry stays
            child.wait(10)
            killed = time.monotonic()
        finally:
            if child.poll() is None:
                child.kill()
        assert _entries(url)[key][0] >= before  # still there, not deleted
        assert [r["state"] for r in _rows(url)] == ["unknown"]  # too recent to call dead
        eng = dn.Engine.start(data_dir=tmp_path / "d", nats_url=url, orchestrate="on", **OPTS)
        try:
            waited = time.monotonic() - killed
            assert eng.orchestrator is not None
            # its last put was about a beat before the kill (more on a busy machine): the
            # start waited for the dead rule, which a start that does not wait takes ~1 s of
            assert waited >= DEAD_AFTER / 2, waited
            rows = {e["engine_id"]: e for e in eng.status()["engines"]}
            assert rows[child_id]["state"] == "dead" and rows[child_id]["age"] >= DEAD_AFTER
            assert rows[child_id]["orchestrates"] is True
            # the dead entry is read as dead at once by a later reader (server stamps)
            assert {r["engine_id"]: r["state"] for r in _rows(url)}[child_id] == "dead"
        finally:
            eng.stop()


def test_status_text_lists_the_engines(tmp_path):
    with dn.Engine.start(data_dir=tmp_path / "a", **OPTS) as eng:
        from dagnats_nb.observe.report import format_status

        until(lambda: eng.status()["engines"][0]["state"] == "live", timeout=3)
        text = format_status(eng.status())
        assert f"  {eng.worker_id}  {socket.gethostname()} pid {os.getpid()}  orchestrates" in text
        assert "live, heartbeat" in text and "(this one)" in text
        attached = dn.Engine.connect(data_dir=tmp_path / "a")
        try:
            (row,) = attached.status()["engines"]  # read once: no heartbeat of its own
            assert row["engine_id"] == eng.worker_id and not row["self"]
        finally:
            attached.stop()

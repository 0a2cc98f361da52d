"""A dagnats-nb engine attached to a running Go ``dagnats serve`` (``nats_url``): it adopts
the Go deployment's streams and buckets and changes none of them; the notebook's views read
them."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time

import nats
import pytest
from conftest import until
from goserve import go_serve, go_worker  # noqa: F401  (fixtures)

import dagnats_nb as dn


async def _all_configs(url: str) -> dict[str, dict]:
    """Every stream (KV buckets and object stores included) and its config, as the server
    returns them."""
    nc = await nats.connect(url)
    try:
        out: dict[str, dict] = {}
        offset = 0
        while True:
            body = json.dumps({"offset": offset}).encode()
            page = json.loads((await nc.request("$JS.API.STREAM.LIST", body, timeout=5)).data)
            for stream in page.get("streams") or []:
                out[stream["config"]["name"]] = stream["config"]
            offset += len(page.get("streams") or [])
            if not page.get("streams") or offset >= page.get("total", 0):
                return out
    finally:
        await nc.close()


def test_attaching_to_a_go_deployment_changes_none_of_its_streams(go_serve, tmp_path):  # noqa: F811
    before = asyncio.run(_all_configs(go_serve.url))
    assert {"WORKFLOW_HISTORY", "TASK_QUEUES", "DEAD_LETTERS", "KV_workflow_defs"} <= set(before)
    opts = dict(nats_url=go_serve.url, llm_enabled=False, runs_max_age="1h")
    with dn.Engine.start(data_dir=tmp_path / "nb", **opts) as eng:
        streams = eng.stream_stats().set_index("stream")
        assert {"WORKFLOW_HISTORY", "TASK_QUEUES", "DEAD_LETTERS"} <= set(streams.index)
        go_history_limit = before["WORKFLOW_HISTORY"]["max_bytes"]
        assert streams.loc["WORKFLOW_HISTORY", "max_bytes"] == go_history_limit
        assert len(eng.kv_stats()) > 0 and len(eng.health()) > 0
    after = asyncio.run(_all_configs(go_serve.url))
    changed = {name for name, cfg in before.items() if after.get(name) != cfg}
    assert not changed, {name: (before[name], after.get(name)) for name in changed}


def test_a_notebook_attached_to_a_go_deployment_sees_its_workers(go_serve, go_worker, tmp_path):  # noqa: F811
    """Engine.connect to a running Go dagnats: its streams, the Go worker's consumers and its
    registration in the ``workers`` KV (Go's own form): the heartbeat gap comes from Go's
    ``last_seen``, and the Go worker's task types count as served."""
    from dagnats_nb.observe.report import format_status
    from dagnats_nb.wire.workers import read_entry

    eng = dn.Engine.connect(data_dir=tmp_path / "nb", url=go_serve.url)
    try:
        status = until(
            lambda: (s := eng.status())["workers"] and s, what="the Go worker's registration"
        )
        [entry] = [read_entry(w) for w in status["workers"]]
        assert entry.language == "go" and set(entry.tasks) == {"ggreet", "gupper", "sgreet"}
        assert f"{entry.worker_id} (go)" in format_status(status)
        consumers = set(eng.consumer_lag()["consumer"])
        assert {"workers-ggreet", "workers-gupper", "workers-sgreet"} <= consumers
        # Freeze the worker: its entry stays (60 s TTL), its heartbeat ages, a task waits.
        os.kill(go_worker.proc.pid, signal.SIGSTOP)
        try:
            asyncio.run(_publish(go_serve.url, "task.ggreet.frozen-run", b'{"name": "x"}'))
            until(lambda: eng.status()["pending_tasks"].get("ggreet") == 1, what="a waiting task")
            time.sleep(3)  # the subject: a heartbeat that ages while the worker is frozen
            status = eng.status()
            assert status["tasks_without_worker"] == []  # the Go worker serves ggreet
            gap = eng.health().set_index("check").loc["worker heartbeat gap (s)", "value"]
            [entry] = [read_entry(w) for w in status["workers"]]
            assert gap >= 3 and gap == pytest.approx(time.time() - entry.heartbeat_at, abs=2)
        finally:
            os.kill(go_worker.proc.pid, signal.SIGCONT)
    finally:
        eng.stop()


async def _publish(url: str, subject: str, data: bytes) -> None:
    nc = await nats.connect(url)
    try:
        await nc.jetstream().publish(subject, data)
    finally:
        await nc.close()

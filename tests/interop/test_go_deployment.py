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
from goserve import go_binary, go_serve, go_worker  # noqa: F401  (fixtures)

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


GREET = {
    "name": "go-greet",
    "version": "1",
    "steps": [
        {"id": "greet", "task": "ggreet", "timeout": 30_000_000_000},
        {"id": "shout", "task": "gupper", "depends_on": ["greet"], "timeout": 30_000_000_000},
    ],
}


def test_a_notebook_sizes_a_go_deployment_from_its_own_history(go_serve, go_worker, tmp_path):  # noqa: F811
    """The checklist user's case: figures of a production dagnats read by a notebook. Runs
    orchestrated by the Go engine and worked by its Go worker; ``stream_stats``,
    ``consumer_lag``, ``health`` and ``sizing()`` (calibrated from Go's own history)."""
    import subprocess

    cli = [str(go_binary("dagnats", "DAGNATS_GO_BIN"))]
    env = {**os.environ, "DAGNATS_NATS_URL": go_serve.url, "NO_COLOR": "1"}
    path = tmp_path / "go-greet.json"
    path.write_text(json.dumps(GREET))
    subprocess.run([*cli, "workflow", "register", str(path)], env=env, check=True)
    eng = dn.Engine.connect(data_dir=tmp_path / "nb", url=go_serve.url)
    try:
        ids = []
        for i in range(4):
            out = subprocess.run(
                [*cli, "run", "start", "go-greet", json.dumps({"name": f"n{i}"}), "--json"],
                env=env,
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            ids.append(json.loads(out[: out.index("}") + 1])["run_id"])
        for run_id in ids:
            assert eng.get_run(run_id).wait(60).status == "completed"
        counts = [len(eng.events(run_id)) for run_id in ids]
        history = eng.stream_stats().set_index("stream").loc["WORKFLOW_HISTORY"]
        assert history["messages"] == sum(counts)  # only these runs are in it
        lag = eng.consumer_lag().set_index("consumer")
        assert lag.loc["workers-ggreet", "pending"] == 0
        assert lag.loc["workers-ggreet", "ack_pending"] == 0
        assert "critical" not in set(eng.health()["level"])
        report = eng.sizing("go-greet", runs_per_day=10_000)
        per_run = sum(counts) / len(counts)
        assert report.calibration.source == (
            f"measured (4 runs, {per_run:.1f} events per run of 2 steps); records measured"
        )
        assert report.calibration.bytes_per_event == pytest.approx(
            history["bytes"] / history["messages"]
        )
        assert report.estimate.disk_bytes > 0
    finally:
        eng.stop()

"""dagnats' own Go HTTP-bridge client (``bridgeworker``, on its ``sdk/httpclient``) against
our bridge, and the same scenario against ``dagnats serve`` as the reference: the worker
connects (registered in the ``workers`` KV as Go's bridge registers it, listed by the Go
CLI, deleted when it leaves), completes a run's task with ``{"echo": input}``, fails
another's until the retries are used up (as many attempts as Go makes), and is refused
with a wrong token. Workflows are registered, runs started and read through the Go CLI on
both engines, so both answer the same questions."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

from conftest import until
from goserve import GoBridgeWorker, GoServe, go_binary, go_cli

import dagnats_nb as dn

TOKEN = "go-bridge-token-for-tests"
RETRY = {"max_attempts": 2, "strategy": "fixed", "initial_delay": 10_000_000}  # Go's form: ns
WORKFLOWS = [
    {"name": "go-bridge-echo", "version": "1", "steps": [{"id": "work", "task": "bx"}]},
    {
        "name": "go-bridge-fail",
        "version": "1",
        "default_retry": RETRY,
        "steps": [{"id": "work", "task": "bxf"}],
    },
    {"name": "go-bridge-guarded", "version": "1", "steps": [{"id": "work", "task": "bxg"}]},
]
WORKER = GoBridgeWorker.WORKER_ID
# Go's bridge registration of bridgeworker (bridge/connect.go), last_seen aside
REGISTRATION = {
    "worker_id": WORKER,
    "task_types": ["bx"],
    "language": "http",
    "transport": "bridge",
    "max_tasks": 4,
}
ERROR = "card declined by the go worker"


def go_json(url: str, *args: str, check: bool = True):
    out = go_cli(url, *args, "--json", check=check)
    return json.loads(out) if out else None


def entry(url: str) -> dict | None:
    """bridgeworker's entry as ``dagnats workers list`` shows it, if listed."""
    return next((w for w in go_json(url, "workers", "list") if w["worker_id"] == WORKER), None)


def settled(url: str, run_id: str) -> dict:
    def status() -> dict | None:
        record = go_json(url, "run", "status", run_id, check=False)  # None until recorded
        return record if record and record["status"] in ("completed", "failed") else None

    return until(status, timeout=60, every=0.3, what=f"run {run_id} to end")


def scenario(nats_url: str, http_url: str, tmp: Path) -> None:
    """The whole scenario on the engine at ``nats_url`` whose bridge is at ``http_url``."""
    for wf in WORKFLOWS:
        path = tmp / f"{wf['name']}.json"
        path.write_text(json.dumps(wf))
        go_cli(nats_url, "workflow", "register", str(path))

    # connect, then complete: registered while connected, deleted when it has left
    worker = GoBridgeWorker(http_url, TOKEN, "bx", tmp / "complete.log")
    try:
        found = until(lambda: entry(nats_url), timeout=30, every=0.2, what="the registration")
        assert {k: v for k, v in found.items() if k != "last_seen"} == REGISTRATION
        run_id = go_json(nats_url, "run", "start", "go-bridge-echo", '{"a": [1, "x"]}')["run_id"]
        record = settled(nats_url, run_id)
        out = worker.wait()
    finally:
        worker.stop()
    assert record["status"] == "completed", record
    assert json.loads(base64.b64decode(record["steps"]["work"]["output"])) == {
        "echo": {"a": [1, "x"]}
    }
    assert "probe /v1/workers/connect (no auth): status 401" in out
    assert "connect: returned nil" in out and "resolved 1 tasks" in out
    until(lambda: entry(nats_url) is None, every=0.2, what="the entry deleted")

    # fail: retried by the workflow's policy, then failed for good
    worker = GoBridgeWorker(http_url, TOKEN, "bxf", tmp / "fail.log", "fail", 3, ERROR)
    try:
        run_id = go_json(nats_url, "run", "start", "go-bridge-fail", '"in"')["run_id"]
        record = settled(nats_url, run_id)
        out = worker.wait()
    finally:
        worker.stop()
    work = record["steps"]["work"]
    assert (record["status"], work["status"], work["error"]) == ("failed", "failed", ERROR)
    assert work["attempts"] == 3  # 1 + max_attempts
    assert re.findall(r"attempt=(\d+)", out) == ["1", "2", "3"]
    assert out.count("resolve fail: err=<nil>") == 3
    [dead] = [d for d in go_json(nats_url, "dlq", "list") if d["run_id"] == run_id]
    assert (dead["step_id"], dead["task"], dead["error"]) == ("work", "bxf", ERROR)
    assert dead["delivery_count"] == 3

    # a wrong token: refused (Go's client does not notice at connect, its poll does)
    run_id = go_json(nats_url, "run", "start", "go-bridge-guarded", "1")["run_id"]
    worker = GoBridgeWorker(http_url, "not-the-token", "bxg", tmp / "refused.log", "pollonce")
    try:
        out = worker.wait()
    finally:
        worker.stop()
    assert "probe /v1/workers/connect (no auth): status 401" in out
    assert "pollonce: tasks=0 err=poll: status 401" in out
    assert entry(nats_url) is None
    record = until(  # None until recorded (ours: a second after its start)
        lambda: go_json(nats_url, "run", "status", run_id, check=False),
        what=f"run {run_id}'s record",
    )
    assert record["steps"].get("work", {}).get("status") != "completed"


def test_the_go_bridge_client_on_our_engine(tmp_path):
    go_binary("bridgeworker", "DAGNATS_GO_BRIDGE")
    opts = dict(http_addr="127.0.0.1:0", bridge_token=TOKEN, llm_enabled=False)
    with dn.Engine.start(data_dir=tmp_path / "nb", **opts) as eng:
        scenario(eng.connect_url, eng.http_url, tmp_path)
        # what the engine itself says about them
        runs = eng.runs().set_index("workflow")
        assert runs.loc["go-bridge-echo", "status"] == "completed"
        failed = eng.get_run(runs.loc["go-bridge-fail", "run_id"])
        assert failed.status == "failed" and ERROR in failed.error
        steps = eng.steps(failed.id).set_index("step_id")
        assert steps.loc["work", "attempt"] == 3
        dead = eng.dead_letters()
        assert dead[dead["run_id"] == failed.id].iloc[0]["attempts"] == 3
        assert eng.status()["pending_tasks"].get("bxg") == 1  # the refused worker took none
        assert WORKER not in {w["worker_id"] for w in eng.status()["workers"]}


def test_the_go_bridge_client_on_dagnats_serve_the_reference(tmp_path, monkeypatch):
    go_binary("bridgeworker", "DAGNATS_GO_BRIDGE")
    monkeypatch.setenv("DAGNATS_BRIDGE_TOKEN", TOKEN)  # read by dagnats serve's bridge
    server = GoServe(go_binary("dagnats", "DAGNATS_GO_BIN"), tmp_path / "go")
    try:
        scenario(server.url, server.http, tmp_path)
    finally:
        server.stop()

"""Webhook triggers (HMAC-signed POST /hooks/{path}) and the HTTP worker bridge, through the
real HTTP endpoint of a real engine. The bridge "workers" here are plain httpx clients,
standing for workers written in another language."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import socket
import threading
import time

import httpx
import nats
import pytest
from conftest import until
from nats.js.errors import KeyNotFoundError

import dagnats_nb as dn
from dagnats_nb.adapters.http import bridge, hooks
from dagnats_nb.adapters.http.extension import http_side
from dagnats_nb.adapters.http.server import match
from dagnats_nb.dag import load_workflow
from dagnats_nb.wire import protocol
from dagnats_nb.wire.workers import WorkerEntry, read_entry

GLOBAL = "global-secret-for-tests"
OWN = "trigger-own-secret-123"
TOKEN = "bridge-token-for-tests"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def echo_wf(name: str, path: str, secret: str | None = None, **extra) -> dict:
    hook: dict = {"path": path}
    if secret:
        hook["secret"] = secret
    return {
        "name": name,
        "steps": [{"id": "echo", "task": "echo"}],
        "triggers": [{"id": f"{name}-hook", "webhook": hook, **extra}],
    }


def one_step(name: str, task: str, **extra) -> dict:
    return {"name": name, "steps": [{"id": "work", "task": task}], **extra}


@pytest.fixture(scope="module")
def eng(tmp_path_factory):
    e = dn.Engine.start(
        data_dir=tmp_path_factory.mktemp("hooks") / "e",
        http_addr="127.0.0.1:0",
        webhook_secret=GLOBAL,
        bridge_token=TOKEN,
        webhook_max_body="4KiB",
        ack_wait="2s",
        llm_enabled=False,
    )

    @e.task("echo")
    def echo(ctx):
        return ctx.input

    e.register(echo_wf("on_push", "github/push"))
    e.register(echo_wf("own_secret", "/own/", OWN))
    e.register(echo_wf("disabled", "off", enabled=False))
    try:
        yield e
    finally:
        e.stop()


@pytest.fixture(scope="module")
def http(eng):
    with httpx.Client(base_url=eng.http_url, timeout=70) as client:
        yield client


def post_hook(http, path: str, body: bytes, secret: str | None, header="X-Dagnats-Signature", **h):
    headers = {"Content-Type": "application/json", **h}
    if secret is not None:
        headers[header] = hooks.sign(secret, body)
    return http.post(f"/hooks/{path}", content=body, headers=headers)


def run_ids(eng) -> set[str]:
    return set(eng.runs()["run_id"])


def marker_run(eng, http) -> str:
    """A valid hook request sent after refused ones; returns once its run has ended. The
    history is one ordered stream, so a run that a refused request had started would have
    been applied before this one: checks that no run started can follow."""
    resp = post_hook(http, "github/push", b'"marker"', GLOBAL)
    assert resp.status_code == 202, resp.text
    run_id = resp.json()["run_id"]
    assert dn.Run(eng, run_id, "on_push").wait(10).status == "completed"
    return run_id


# -- pure parts -------------------------------------------------------------------------


def test_signature_is_hmac_sha256_hex_and_checked_exactly():
    body = b'{"a": 1}'
    sig = hooks.sign("k", body)
    assert sig.startswith("sha256=")
    assert sig[7:] == hmac.new(b"k", body, hashlib.sha256).hexdigest()
    assert hooks.verify("k", body, sig)
    assert hooks.verify("k", body, sig.upper().replace("SHA256=", "sha256="))
    assert not hooks.verify("k", body + b" ", sig)
    assert not hooks.verify("other", body, sig)
    assert not hooks.verify("k", body, sig.replace("sha256=", "sha1="))
    assert not hooks.verify("k", body, None)
    assert not hooks.verify("k", body, "")
    assert not hooks.verify("", body, hooks.sign("", body))
    assert hooks.signature({"x-hub-signature-256": "sha256=ab"}) == "sha256=ab"
    both = {"x-dagnats-signature": "sha256=cd", "x-hub-signature-256": "sha256=ab"}
    assert hooks.signature(both) == "sha256=cd"
    assert hooks.signature({}) is None


def test_webhook_index_by_path_skips_disabled_and_reports_a_path_used_twice():
    a = load_workflow(echo_wf("a", "/x/y/", "s"))
    b = load_workflow(echo_wf("b", "x/y"))
    c = load_workflow(echo_wf("c", "z", enabled=False))
    d = load_workflow({"name": "d", "steps": [{"id": "s", "task": "t"}]})
    index, problems = hooks.webhook_index([b, a, c, d])
    assert index == {"x/y": hooks.Hook("x/y", "a", "a-hook", "s")}
    assert problems == [
        "webhook path /hooks/x/y of workflow 'b' trigger 'b-hook' is already used by "
        "workflow 'a': give one of them another path"
    ]


def test_body_and_delivery_id_parsing():
    assert hooks.parse_body(b'{"k": [1, 2]}') == {"k": [1, 2]}
    with pytest.raises(hooks.HookError, match="webhook body is not JSON"):
        hooks.parse_body(b"k=v")
    with pytest.raises(hooks.HookError, match="webhook body is not JSON"):
        hooks.parse_body(b"\xff\xfe")
    guid = "72d3162e-cc78-11e3-81ab-4c9367dc0958"
    assert hooks.delivery_run_id({"x-github-delivery": guid}) == guid
    assert hooks.delivery_run_id({"x-dagnats-delivery": "d1", "x-github-delivery": "d2"}) == "d1"
    assert hooks.delivery_run_id({"x-dagnats-delivery": "a.b"}) is None
    assert hooks.delivery_run_id({"x-dagnats-delivery": "x" * 129}) is None
    assert hooks.delivery_run_id({}) is None


def test_route_patterns():
    assert match("/health", "/health") == {}
    assert match("/health", "/health/") is None
    assert match("/hooks/{path...}", "/hooks/a/b%20c/") == {"path": "a/b c"}
    assert match("/hooks/{path...}", "/hooks/") is None
    assert match("/v1/tasks/{task_id}/resolve", "/v1/tasks/R1.s.2/resolve") == {"task_id": "R1.s.2"}
    assert match("/v1/tasks/{task_id}/resolve", "/v1/tasks//resolve") is None
    assert match("/v1/tasks/{task_id}/resolve", "/v1/tasks/a/b/resolve") is None
    assert match("/v1/tasks/{task_id}/resolve", "/v1/tasks/a") is None


def test_bridge_request_parsing():
    assert bridge.parse_poll(b'{"task_types": ["a", "b", "a"]}') == bridge.PollRequest(
        ("a", "b"), 1, 5000
    )
    capped = bridge.parse_poll(b'{"task_types": ["a"], "max_tasks": 9999, "timeout_ms": 999999}')
    assert (capped.max_tasks, capped.timeout_ms) == (bridge.MAX_TASKS, bridge.MAX_TIMEOUT_MS)
    # 0 or less is the default, as Go's bridge reads them
    zero = bridge.parse_poll(b'{"task_types": ["a"], "max_tasks": 0, "timeout_ms": -1}')
    assert (zero.max_tasks, zero.timeout_ms) == (1, 5000)
    bad = {
        b"[]": "poll body must be a JSON object",
        b"{nope": "poll body is not JSON",
        b"{}": "field 'task_types' must be a non-empty list",
        b'{"task_types": ["a.b"]}': "field 'task_types'",
        b'{"task_types": ["a"], "max_tasks": 1.5}': "field 'max_tasks' must be an integer",
        b'{"task_types": ["a"], "timeout_ms": "5s"}': "field 'timeout_ms' must be an integer",
        b'{"task_types": ["a"], "worker_id": 3}': "field 'worker_id' must be a string",
    }
    for body, why in bad.items():
        with pytest.raises(bridge.BridgeError, match=why):
            bridge.parse_poll(body)

    assert bridge.parse_connect(
        b'{"worker_id": "w-1", "task_types": ["a", "b"], "max_tasks": 0}'
    ) == bridge.ConnectRequest("w-1", ("a", "b"), 1)
    bad = {
        b'{"task_types": ["a"]}': "connect: field 'worker_id' must be a non-empty string",
        b'{"worker_id": "a b", "task_types": ["a"]}': "field 'worker_id'",
        b'{"worker_id": ".w", "task_types": ["a"]}': "field 'worker_id'",
        b'{"worker_id": "w", "task_types": []}': "connect: field 'task_types' must be a non-empty",
        b'{"worker_id": "w", "task_types": ["a"], "max_tasks": "4"}': "field 'max_tasks' must be",
        b"[1]": "connect body must be a JSON object",
    }
    for body, why in bad.items():
        with pytest.raises(bridge.BridgeError, match=why):
            bridge.parse_connect(body)

    def fail(**fields) -> dict:
        return bridge.failure_payload(bridge.parse_resolve(json.dumps(fields).encode()))

    assert fail(action="fail", failure_type="retry_after", retry_after_ms=5) == {
        "error": "failed by a bridge worker",
        "failure_type": "retry_after",
        "retry_after_ms": 5,
    }
    # what Go's engine makes of retry_after_ms: absent or <= 0 is 100 ms, at most an hour
    for given, meant in [(None, 100), (0, 100), (-5, 100), (10**9, 3_600_000)]:
        payload = fail(action="fail", failure_type="retry_after", retry_after_ms=given)
        assert payload["retry_after_ms"] == meant, given
    # no type is retriable; a type Go's engine does not know is passed on (and retried)
    assert fail(action="fail", error="x") == {"error": "x", "failure_type": "retriable"}
    assert fail(action="fail", error="x", failure_type="")["failure_type"] == "retriable"
    assert fail(action="fail", error="x", failure_type="later")["failure_type"] == "later"

    pause = bridge.parse_resolve(b'{"action": "pause", "duration_ms": 10, "checkpoint": {"i": 2}}')
    assert (pause.duration_ms, pause.data) == (10, b'{"i":2}')
    assert bridge.parse_resolve(b'{"action": "pause", "duration_ms": 3600000}').data == b""
    assert bridge.parse_resolve(b'{"action": "checkpoint", "data": null}').data == b"null"
    assert bridge.parse_resolve(b'{"action": "stream", "data": "tok"}').data == b'"tok"'
    assert bridge.parse_resolve(b'{"action": "continue", "output": [1]}').output == [1]
    bad = {
        b'{"action": "send_signal"}': "action send_signal is not supported by dagnats-nb",
        b'{"action": "explode"}': "field 'action' must be one of complete, fail, pause, checkpoint",
        b"{}": "field 'action' must be one of",
        b'{"action": "fail", "failure_type": 3}': "field 'failure_type' must be a string",
        b'{"action": "fail", "retry_after_ms": "5s"}': "field 'retry_after_ms' must be an integer",
        b'{"action": "fail", "error": 5}': "field 'error' must be a string",
        b'{"action": "complete", "duration_ms": -1}': "field 'duration_ms' must be a number",
        b'{"action": "pause"}': "pause needs field 'duration_ms', an integer in",
        b'{"action": "pause", "duration_ms": 0}': "pause needs field 'duration_ms'",
        b'{"action": "pause", "duration_ms": 3600001}': "pause needs field 'duration_ms'",
        b'{"action": "pause", "duration_ms": 1.5}': "pause needs field 'duration_ms'",
        b'{"action": "pause", "duration_ms": 9, "name": 1}': "field 'name' must be a string",
    }
    for body, why in bad.items():
        with pytest.raises(bridge.BridgeError, match=why):
            bridge.parse_resolve(body)
    assert bridge.bearer_ok("Bearer tok", "tok") and bridge.bearer_ok("bearer  tok ", "tok")
    assert not bridge.bearer_ok("Bearer tok2", "tok") and not bridge.bearer_ok("Basic tok", "tok")
    assert not bridge.bearer_ok(None, "tok") and not bridge.bearer_ok("Bearer ", "")
    entry = bridge.registration(bridge.ConnectRequest("w-1", ("a",), 4))
    assert list(entry) == [
        "worker_id",
        "task_types",
        "language",
        "transport",
        "max_tasks",
        "last_seen",
    ]  # Go's WorkerRegistration, in its order
    assert read_entry(entry) == WorkerEntry(
        "w-1", {"a": None}, protocol.parse_time(entry["last_seen"]), None, "", "http"
    )


# -- webhooks ---------------------------------------------------------------------------


def test_valid_signature_starts_a_run_with_the_body_as_input(eng, http):
    body = json.dumps({"ref": "refs/heads/main", "commits": [1, 2]}).encode()
    resp = post_hook(http, "github/push", body, GLOBAL)
    assert resp.status_code == 202, resp.text
    reply = resp.json()
    assert reply["workflow"] == "on_push" and reply["trigger"] == "on_push-hook"
    run = dn.Run(eng, reply["run_id"], "on_push")
    run.wait(10)
    assert run.status == "completed"
    assert run.output == {"ref": "refs/heads/main", "commits": [1, 2]}
    # a leading or trailing slash on the request path is the same hook
    resp = post_hook(http, "github/push/", b"[1]", GLOBAL)
    assert resp.status_code == 202
    assert dn.Run(eng, resp.json()["run_id"], "on_push").wait(10).output == [1]


def test_missing_wrong_or_altered_signature_is_401_and_starts_no_run(eng, http):
    before = run_ids(eng)
    body = b'{"amount": 10}'
    signed = hooks.sign(GLOBAL, body)
    attempts = [
        post_hook(http, "github/push", body, None),  # no signature
        post_hook(http, "github/push", body, "not-the-secret"),  # wrong secret
        post_hook(http, "github/push", body, OWN),  # another trigger's secret
        # a captured valid signature replayed with another body
        http.post(
            "/hooks/github/push",
            content=b'{"amount": 9999}',
            headers={"X-Dagnats-Signature": signed},
        ),
        http.post("/hooks/github/push", content=body, headers={"X-Dagnats-Signature": signed[7:]}),
        http.post("/hooks/github/push", content=body, headers={"X-Dagnats-Signature": "sha256="}),
    ]
    for resp in attempts:
        assert resp.status_code == 401, resp.text
        assert "missing or invalid signature" in resp.json()["error"]
    marker = marker_run(eng, http)
    assert run_ids(eng) == before | {marker}


def test_github_header_and_delivery_id_start_one_run(eng, http):
    body = b'{"action": "opened"}'
    delivery = "72d3162e-cc78-11e3-81ab-4c9367dc0958"
    first = post_hook(
        http,
        "github/push",
        body,
        GLOBAL,
        header="X-Hub-Signature-256",
        **{"X-GitHub-Delivery": delivery},
    )
    assert first.status_code == 202, first.text
    assert first.json()["run_id"] == delivery
    assert dn.Run(eng, delivery, "on_push").wait(10).output == {"action": "opened"}
    again = post_hook(
        http,
        "github/push",
        body,
        GLOBAL,
        header="X-Hub-Signature-256",
        **{"X-GitHub-Delivery": delivery},
    )
    assert again.status_code == 200 and again.json()["duplicate"] is True
    assert sorted(eng.runs()["run_id"]).count(delivery) == 1
    # GitHub's header is checked as strictly as ours
    wrong = post_hook(http, "github/push", body, "nope", header="X-Hub-Signature-256")
    assert wrong.status_code == 401


def test_a_trigger_secret_replaces_the_global_one(eng, http):
    before = run_ids(eng)
    assert post_hook(http, "own", b"{}", GLOBAL).status_code == 401
    resp = post_hook(http, "own", b'{"x": 1}', OWN)
    assert resp.status_code == 202 and resp.json()["workflow"] == "own_secret"
    assert dn.Run(eng, resp.json()["run_id"], "own_secret").wait(10).output == {"x": 1}
    assert run_ids(eng) == before | {resp.json()["run_id"]}  # the refused one started none


def test_bad_requests_to_a_hook(eng, http):
    before = run_ids(eng)
    big = json.dumps({"pad": "x" * 5000}).encode()
    resp = post_hook(http, "github/push", big, GLOBAL)
    assert resp.status_code == 413 and "4096 bytes" in resp.json()["error"]

    def chunks():  # no Content-Length: the limit holds while reading
        yield big[:3000]
        yield big[3000:]

    chunked = http.post(
        "/hooks/github/push",
        content=chunks(),
        headers={"X-Dagnats-Signature": hooks.sign(GLOBAL, big)},
    )
    assert chunked.status_code == 413
    resp = post_hook(http, "github/push", b"ref=main", GLOBAL)
    assert resp.status_code == 400 and "webhook body is not JSON" in resp.json()["error"]
    assert post_hook(http, "nowhere", b"{}", GLOBAL).status_code == 404
    assert post_hook(http, "off", b"{}", GLOBAL).status_code == 404  # enabled: false
    assert http.get("/hooks/github/push").status_code == 405
    assert http.get("/health").status_code == 200
    marker = marker_run(eng, http)
    assert run_ids(eng) == before | {marker}


def test_a_header_that_is_not_utf8_is_refused_not_crashed(eng, http):
    body = b"{}"
    with socket.create_connection(("127.0.0.1", httpx.URL(eng.http_url).port), timeout=5) as s:
        s.sendall(
            b"POST /hooks/github/push HTTP/1.1\r\nHost: x\r\nX-Dagnats-Signature: sha256=\xff\xfe"
            b"\r\nContent-Length: 2\r\n\r\n" + body
        )
        reply = s.recv(65536)
    assert reply.startswith(b"HTTP/1.1 401 ")
    assert http.get("/health").status_code == 200


def test_a_hook_registered_elsewhere_is_found_in_kv(eng, http):
    other = dn.Engine.connect(data_dir=eng.settings.data_dir)
    try:
        other.register(echo_wf("from_elsewhere", "elsewhere"))
    finally:
        other.stop()

    def accepted():  # KV is re-read on a miss at most once a second: 404 until then
        resp = post_hook(http, "elsewhere", b'"hi"', GLOBAL)
        assert resp.status_code in (202, 404), resp.text
        return resp if resp.status_code == 202 else None

    resp = until(accepted, every=0.1, what="the hook registered elsewhere to be found")
    assert dn.Run(eng, resp.json()["run_id"], "from_elsewhere").wait(10).output == "hi"


def test_without_any_secret_hooks_are_off_and_without_a_token_the_bridge_is(tmp_path, caplog):
    caplog.set_level("WARNING", logger="dagnats_nb.adapters.http.hooks")
    with dn.Engine.start(data_dir=tmp_path / "e", http_addr="127.0.0.1:0", llm_enabled=False) as e:

        @e.task("echo")
        def echo(ctx):
            return ctx.input

        e.register(echo_wf("plain", "plain"))
        e.register(echo_wf("guarded", "guarded", OWN))
        with httpx.Client(base_url=e.http_url, timeout=10) as http:
            for secret in (None, "", GLOBAL):
                assert post_hook(http, "plain", b"{}", secret).status_code == 404
            off = [r.getMessage() for r in caplog.records if "is off" in r.getMessage()]
            assert off == [
                "webhook /hooks/plain (workflow 'plain' trigger 'plain-hook') is off: it has no "
                "secret; set DAGNATS_WEBHOOK_SECRET or the trigger's webhook.secret"
            ]  # said once
            resp = post_hook(http, "guarded", b"[2]", OWN)  # its own secret turns it on
            assert resp.status_code == 202
            assert dn.Run(e, resp.json()["run_id"], "guarded").wait(10).output == [2]
            assert list(e.runs()["workflow"]) == ["guarded"]
            poll = http.post("/v1/tasks/poll", json={"task_types": ["echo"]}, headers=AUTH)
            assert poll.status_code == 404
            assert http.post("/v1/tasks/x/resolve", json={}, headers=AUTH).status_code == 404
            hello = {"worker_id": "w", "task_types": ["echo"]}
            assert http.post("/v1/workers/connect", json=hello, headers=AUTH).status_code == 404
        assert http_side(e).bridge is None


# -- the worker bridge ------------------------------------------------------------------


def poll(http, *types: str, n: int = 1, timeout_ms: int = 5000, **extra) -> list[dict]:
    body = {"task_types": list(types), "max_tasks": n, "timeout_ms": timeout_ms, **extra}
    resp = http.post("/v1/tasks/poll", json=body, headers=AUTH)
    assert resp.status_code == 200, resp.text
    return resp.json()


def resolve(http, task_id: str, **body) -> httpx.Response:
    return http.post(f"/v1/tasks/{task_id}/resolve", json=body, headers=AUTH)


def worker_ids(eng) -> set[str]:
    return {w["worker_id"] for w in eng.status()["workers"]}


def kv_value(eng, bucket: str, key: str) -> bytes | None:
    """A KV value as any NATS client reads it (None: no such key, or deleted)."""

    async def read() -> bytes | None:
        nc = await nats.connect(eng.connect_url)
        try:
            kv = await nc.jetstream().key_value(bucket)
            try:
                return (await kv.get(key)).value or b""
            except KeyNotFoundError:
                return None
        finally:
            await nc.close()

    return asyncio.run(read())


@contextlib.contextmanager
def heartbeats_every(eng, seconds: float):
    """Connections made meanwhile beat every ``seconds`` (25 s, as Go, otherwise)."""
    side = http_side(eng).bridge
    before, side.heartbeat_every = side.heartbeat_every, seconds
    try:
        yield
    finally:
        side.heartbeat_every = before


BEAT = b"event: heartbeat\ndata: ok\n\n"


def test_bridge_refuses_a_missing_or_wrong_token(eng, http):
    eng.register(one_step("guarded_queue", "ext_guard"))
    run = eng.start_run("guarded_queue", {"n": 1})
    # the task waits in its queue: a poll that was not refused would take it
    until(lambda: eng.status()["pending_tasks"].get("ext_guard"), what="the task queued")
    body = {"task_types": ["ext_guard"], "timeout_ms": 200}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}):
        resp = http.post("/v1/tasks/poll", json=body, headers=headers)
        assert resp.status_code == 401 and resp.headers["www-authenticate"].startswith("Bearer")
        assert "bearer token" in resp.json()["error"]
        resp = http.post(
            f"/v1/tasks/{run.id}.work/resolve", json={"action": "complete"}, headers=headers
        )
        assert resp.status_code == 401
        hello = {"worker_id": "refused-worker", "task_types": ["ext_guard"]}
        resp = http.post("/v1/workers/connect", json=hello, headers=headers)
        assert resp.status_code == 401 and "bearer token" in resp.json()["error"]
    assert run.status == "running"
    assert "refused-worker" not in worker_ids(eng)
    [task] = poll(http, "ext_guard")  # the refused polls took nothing
    assert task["run_id"] == run.id
    assert resolve(http, task["task_id"], action="complete", output=1).status_code == 200
    assert run.wait(10).output == 1


def test_bridge_worker_completes_one_task_and_fails_another(eng, http):
    eng.register(one_step("ext_ok_wf", "ext_ok"))
    retry = {"max_attempts": 5, "strategy": "fixed", "initial_delay": "10ms"}
    eng.register(one_step("ext_bad_wf", "ext_bad", default_retry=retry))
    ok = eng.start_run("ext_ok_wf", {"name": "ada"})
    bad = eng.start_run("ext_bad_wf", [1, 2])
    tasks: list[dict] = []

    def both_polled() -> bool:
        tasks.extend(poll(http, "ext_ok", "ext_bad", n=2, worker_id="go-worker-1"))
        return len(tasks) >= 2

    until(both_polled, what="both tasks polled")
    by_run = {t["run_id"]: t for t in tasks}
    assert set(by_run) == {ok.id, bad.id}
    t_ok = by_run[ok.id]
    assert t_ok == {
        "task_id": f"{ok.id}.work",
        "run_id": ok.id,
        "step_id": "work",
        "iteration": 0,
        "attempt": 1,
        "input": {"name": "ada"},
        "task": "ext_ok",
        "workflow_name": "ext_ok_wf",
    }
    resp = resolve(http, t_ok["task_id"], action="complete", output={"hi": "ada"}, duration_ms=12)
    assert resp.status_code == 200 and resp.json()["status"] == "completed"
    assert ok.wait(10).status == "completed" and ok.output == {"hi": "ada"}
    events = eng.events(ok.id)
    done = events[events["type"] == "step.completed"].iloc[0]
    assert done["worker_id"] == "go-worker-1"
    # the same task cannot be resolved twice
    assert resolve(http, t_ok["task_id"], action="complete").status_code == 404

    t_bad = by_run[bad.id]
    assert t_bad["input"] == [1, 2]
    resp = resolve(
        http, t_bad["task_id"], action="fail", error="card declined", failure_type="non_retriable"
    )
    assert resp.status_code == 200 and resp.json()["status"] == "failed"
    assert bad.wait(10).status == "failed"
    assert "card declined" in bad.error
    dead = eng.dead_letters()
    row = dead[dead["run_id"] == bad.id]
    assert len(row) == 1 and row.iloc[0]["attempts"] == 1


def test_a_retriable_failure_is_retried_and_polled_again(eng, http):
    retry = {"max_attempts": 3, "strategy": "fixed", "initial_delay": "10ms"}
    eng.register(one_step("ext_retry_wf", "ext_retry", default_retry=retry))
    run = eng.start_run("ext_retry_wf", "x")
    [first] = poll(http, "ext_retry")
    assert resolve(http, first["task_id"], action="fail", error="flaky").status_code == 200
    [second] = poll(http, "ext_retry")
    assert (second["task_id"], second["attempt"]) == (first["task_id"], 2)
    assert resolve(http, second["task_id"], action="complete", output="y").status_code == 200
    assert run.wait(10).output == "y"


def test_heartbeat_keeps_a_task_past_the_ack_wait(eng, http):
    eng.register(one_step("ext_slow_wf", "ext_slow"))
    run = eng.start_run("ext_slow_wf", 7)
    [task] = poll(http, "ext_slow")
    stop = threading.Event()
    beats: list[int] = []

    def beat() -> None:
        with httpx.Client(base_url=eng.http_url, timeout=10) as c:
            while not stop.wait(0.5):
                beats.append(resolve(c, task["task_id"], action="heartbeat").status_code)

    beater = threading.Thread(target=beat)
    beater.start()
    try:
        t0 = time.monotonic()
        # Time passing is the subject here: polls for 3.5 s, past the 2 s ack wait.
        while time.monotonic() - t0 < 3.5:
            assert poll(http, "ext_slow", timeout_ms=500) == []  # not delivered again
    finally:
        stop.set()
        beater.join()
    assert beats and set(beats) == {200}
    assert resolve(http, task["task_id"], action="complete", output=8).status_code == 200
    assert run.wait(10).output == 8


def test_an_unresolved_task_is_delivered_again_after_the_ack_wait(eng, http):
    eng.register(one_step("ext_lost_wf", "ext_lost"))
    run = eng.start_run("ext_lost_wf", "in")
    [first] = poll(http, "ext_lost")
    t0 = time.monotonic()
    [again] = poll(http, "ext_lost", timeout_ms=6000)  # the first worker "died"
    assert again["task_id"] == first["task_id"] and again["attempt"] == 1
    assert time.monotonic() - t0 > 1.5  # only after the 2 s ack wait
    assert resolve(http, again["task_id"], action="complete", output="out").status_code == 200
    assert run.wait(10).output == "out"


def test_map_instances_through_the_bridge(eng, http):
    wf = {
        "name": "ext_map_wf",
        "steps": [  # an in-kernel step, then a map step done by the bridge worker
            {"id": "items", "task": "echo"},
            {"id": "each", "task": "ext_map", "type": "map", "depends_on": ["items"]},
        ],
    }
    eng.register(wf)
    run = eng.start_run("ext_map_wf", [1, 2, 3])
    tasks: list[dict] = []

    def all_polled() -> bool:
        tasks.extend(poll(http, "ext_map", n=3))
        return len(tasks) >= 3

    until(all_polled, what="the three map tasks polled")
    assert sorted(t["map_index"] for t in tasks) == [0, 1, 2]
    for t in tasks:
        assert t["task_id"] == f"{run.id}.each.map.{t['map_index']}"  # Go's instance id
        assert (
            resolve(http, t["task_id"], action="complete", output=t["input"] * 10).status_code
            == 200
        )
    assert run.wait(10).output == [10, 20, 30]


def test_bridge_bad_requests(eng, http):
    eng.register(one_step("ext_misc_wf", "ext_misc"))
    run = eng.start_run("ext_misc_wf", None)
    resp = resolve(http, "no-such-task", action="complete")
    assert resp.status_code == 404 and "no polled task no-such-task" in resp.json()["error"]
    # an unknown task is 404 whatever the body, as in Go
    resp = http.post("/v1/tasks/no-such-task/resolve", content=b"{oops", headers=AUTH)
    assert resp.status_code == 404
    resp = http.post("/v1/tasks/poll", content=b"{oops", headers=AUTH)
    assert resp.status_code == 400 and "poll body is not JSON" in resp.json()["error"]
    resp = http.post("/v1/tasks/poll", json={"max_tasks": 1}, headers=AUTH)
    assert resp.status_code == 400 and "task_types" in resp.json()["error"]
    [task] = poll(http, "ext_misc")
    for body, why in [
        ({"action": "send_signal"}, "action send_signal is not supported by dagnats-nb"),
        ({"action": "explode"}, "resolve: field 'action' must be one of complete, fail, pause"),
        ({"action": "fail", "failure_type": 7}, "field 'failure_type' must be a string"),
        ({"action": "pause", "duration_ms": 0}, "pause needs field 'duration_ms'"),
        ({"action": "pause"}, "pause needs field 'duration_ms'"),
        ({"action": "complete", "duration_ms": "fast"}, "field 'duration_ms' must be a number"),
    ]:
        resp = resolve(http, task["task_id"], **body)
        assert resp.status_code == 400 and why in resp.json()["error"], (body, resp.text)
        assert "\n" not in resp.json()["error"]
    assert run.status == "running"  # a refused resolution changes nothing
    assert resolve(http, task["task_id"], action="complete", output=None).status_code == 200
    assert run.wait(10).status == "completed"
    assert poll(http, "ext_misc", timeout_ms=100) == []


def test_a_stopping_bridge_gives_held_tasks_back_at_once(tmp_path):
    opts = dict(http_addr="127.0.0.1:0", bridge_token=TOKEN, ack_wait="30s", llm_enabled=False)
    with dn.Engine.start(data_dir=tmp_path / "e", **opts) as e:
        e.register(one_step("held_wf", "ext_held"))
        run = e.start_run("held_wf", "payload")
        with httpx.Client(base_url=e.http_url, timeout=10) as http:
            [task] = poll(http, "ext_held")
            bridge_ = http_side(e).bridge
            assert set(bridge_.held) == {task["task_id"]}
            # what Engine.stop does (a NATS server that lives on
            e._call(bridge_.stop())
            assert bridge_.held == {}  # then hands the task to another worker at once)
            # polled again within 3 s: given back, not redelivered after the 30 s ack wait
            [again] = poll(http, "ext_held", timeout_ms=3000)
            assert again["task_id"] == task["task_id"] and again["input"] == "payload"
            assert resolve(http, again["task_id"], action="complete", output=1).status_code == 200
        assert run.wait(10).output == 1


def test_a_connected_worker_is_registered_kept_alive_and_deregistered_when_it_hangs_up(eng, http):
    hello = {"worker_id": "py-http-1", "task_types": ["ext_a", "ext_b"], "max_tasks": 3}
    with (
        heartbeats_every(eng, 0.2),
        http.stream("POST", "/v1/workers/connect", json=hello, headers=AUTH) as resp,
    ):
        assert resp.status_code == 200
        assert resp.headers["content-type"] == "text/event-stream"
        assert resp.headers["cache-control"] == "no-cache"
        first = json.loads(kv_value(eng, "workers", "py-http-1"))
        assert first == {  # Go's bridge registration
            "worker_id": "py-http-1",
            "task_types": ["ext_a", "ext_b"],
            "language": "http",
            "transport": "bridge",
            "max_tasks": 3,
            "last_seen": first["last_seen"],
        }
        [entry] = [w for w in eng.status()["workers"] if w["worker_id"] == "py-http-1"]
        assert read_entry(entry).tasks == {"ext_a": None, "ext_b": None}
        stream, chunks = b"", resp.iter_bytes()
        while stream.count(BEAT) < 3:
            stream += next(chunks)
        assert stream.replace(BEAT, b"") == b""  # Go's heartbeat event, nothing else
        later = json.loads(kv_value(eng, "workers", "py-http-1"))
        assert later["last_seen"] > first["last_seen"]  # put again after each heartbeat
    # the worker hung up: its entry is deleted, not left to the bucket's TTL
    until(lambda: kv_value(eng, "workers", "py-http-1") is None, what="the entry deleted")
    assert "py-http-1" not in worker_ids(eng)


def test_connect_bad_requests(eng, http):
    bad = [
        ({"task_types": ["x"]}, "connect: field 'worker_id' must be a non-empty string"),
        ({"worker_id": "has space", "task_types": ["x"]}, "connect: field 'worker_id'"),
        ({"worker_id": "w-bad"}, "connect: field 'task_types' must be a non-empty list"),
        ({"worker_id": "w-bad", "task_types": ["x"], "max_tasks": "2"}, "field 'max_tasks'"),
    ]
    for body, why in bad:
        resp = http.post("/v1/workers/connect", json=body, headers=AUTH)
        assert resp.status_code == 400 and why in resp.json()["error"], (body, resp.text)
        assert "\n" not in resp.json()["error"]
    resp = http.post("/v1/workers/connect", content=b"{oops", headers=AUTH)
    assert resp.status_code == 400 and "connect body is not JSON" in resp.json()["error"]
    assert "w-bad" not in worker_ids(eng) and "has space" not in worker_ids(eng)
    assert http.get("/v1/workers/connect", headers=AUTH).status_code == 405


def test_stopping_the_http_side_deregisters_connected_workers(tmp_path):
    opts = dict(http_addr="127.0.0.1:0", bridge_token=TOKEN, llm_enabled=False)
    hello = {"worker_id": "leaves-with-engine", "task_types": ["ext_any"]}
    with (
        dn.Engine.start(data_dir=tmp_path / "e", **opts) as e,
        httpx.Client(base_url=e.http_url, timeout=10) as http,
        http.stream("POST", "/v1/workers/connect", json=hello, headers=AUTH) as resp,
    ):
        assert resp.status_code == 200
        assert "leaves-with-engine" in worker_ids(e)
        e._call(http_side(e).stop())  # what Engine.stop does first (NATS still up after it)
        assert "leaves-with-engine" not in worker_ids(e)  # deleted before stop returned
        assert http_side(e).bridge.connections == set()


def test_pause_stores_the_checkpoint_and_gives_the_task_back_after_the_delay(eng, http):
    eng.register(one_step("ext_pause_wf", "ext_pause"))
    run = eng.start_run("ext_pause_wf", {"pages": 3})
    [task] = poll(http, "ext_pause")
    t0 = time.monotonic()
    resp = resolve(
        http,
        task["task_id"],
        action="pause",
        name="quota",
        duration_ms=1500,
        checkpoint={"page": 2},
    )
    assert resp.status_code == 200 and resp.json()["status"] == "paused"
    # Go's key: {run_id}.{step_id}, the task id
    assert json.loads(kv_value(eng, "checkpoints", f"{run.id}.work")) == {"page": 2}
    assert resolve(http, task["task_id"], action="complete").status_code == 404  # given back
    assert poll(http, "ext_pause", timeout_ms=300) == []  # not before the delay
    assert eng.steps(run.id).set_index("step_id").loc["work", "status"] == "running"
    [again] = poll(http, "ext_pause", timeout_ms=5000)
    assert time.monotonic() - t0 > 1.3
    assert (again["task_id"], again["attempt"], again["input"]) == (
        task["task_id"],
        1,
        {"pages": 3},
    )
    # without a checkpoint an empty one is stored, as Go does
    assert resolve(http, again["task_id"], action="pause", duration_ms=50).status_code == 200
    assert kv_value(eng, "checkpoints", task["task_id"]) == b""
    [third] = poll(http, "ext_pause", timeout_ms=5000)
    assert resolve(http, third["task_id"], action="complete", output="done").status_code == 200
    assert run.wait(10).output == "done"
    # the engine was not told: one attempt, no failure in the history
    types = list(eng.events(run.id)["type"])
    assert "step.failed" not in types and types.count("step.completed") == 1
    assert eng.steps(run.id).set_index("step_id").loc["work", "attempt"] == 1


def test_checkpoint_stores_the_data_and_keeps_the_task(eng, http):
    eng.register(one_step("ext_ckpt_wf", "ext_ckpt"))
    run = eng.start_run("ext_ckpt_wf", 1)
    [task] = poll(http, "ext_ckpt")
    t0, n = time.monotonic(), 0
    # Time passing is the subject: checkpoints every 0.5 s keep the task past the 2 s ack wait.
    while time.monotonic() - t0 < 3:
        n += 1
        resp = resolve(http, task["task_id"], action="checkpoint", data={"done": n})
        assert resp.status_code == 200 and resp.json()["status"] == "in_progress"
        assert poll(http, "ext_ckpt", timeout_ms=500) == []  # not delivered again
    assert json.loads(kv_value(eng, "checkpoints", task["task_id"])) == {"done": n}
    assert resolve(http, task["task_id"], action="complete", output=n).status_code == 200
    assert run.wait(10).output == n


def test_fail_as_gos_engine_reads_it(eng, http):
    retry = {"max_attempts": 2, "strategy": "fixed", "initial_delay": "10ms"}
    eng.register(one_step("ext_fail_wf", "ext_fail", default_retry=retry))
    run = eng.start_run("ext_fail_wf", "in")
    sent = [
        {"error": "slow down", "failure_type": "retry_after"},  # no retry_after_ms: 100 ms
        {"error": "odd", "failure_type": "odd_type"},  # a type Go does not know: retriable
        {"error": "gave up"},  # no type: retriable, and the attempts are used up
    ]
    for attempt, body in enumerate(sent, 1):
        [task] = poll(http, "ext_fail")
        assert task["attempt"] == attempt
        resp = resolve(http, task["task_id"], action="fail", **body)
        assert resp.status_code == 200 and resp.json()["status"] == "failed"
    assert run.wait(10).status == "failed" and "gave up" in run.error
    events = eng.events(run.id)
    failed = list(events[events["type"] == "step.failed"]["payload"])
    assert failed == [
        {"error": "slow down", "failure_type": "retry_after", "retry_after_ms": 100},
        {"error": "odd", "failure_type": "odd_type"},
        {"error": "gave up", "failure_type": "retriable"},
    ]
    dead = eng.dead_letters()
    assert dead[dead["run_id"] == run.id].iloc[0]["attempts"] == 3  # 1 + max_attempts, as Go


def test_continue_starts_the_next_iteration_of_an_agent_loop(eng, http):
    loop = {"id": "think", "task": "ext_loop", "type": "agent_loop"}
    eng.register({"name": "ext_loop_wf", "steps": [{**loop, "config": {"max_iterations": 5}}]})
    run = eng.start_run("ext_loop_wf", {"n": 0})
    [first] = poll(http, "ext_loop")
    assert (first["iteration"], first["input"]) == (0, {"n": 0})
    resp = resolve(http, first["task_id"], action="continue", output={"n": 1})
    assert resp.status_code == 200 and resp.json()["status"] == "continued"
    [second] = poll(http, "ext_loop")
    assert (second["iteration"], second["input"]) == (1, {"n": 1})
    assert resolve(http, second["task_id"], action="complete", output={"n": 2}).status_code == 200
    assert run.wait(10).output == {"n": 2}


def test_stream_publishes_the_data_on_the_steps_subject(eng, http):
    eng.register(one_step("ext_stream_wf", "ext_stream"))
    run = eng.start_run("ext_stream_wf", None)
    [task] = poll(http, "ext_stream")
    got: list[dict] = []
    unsubscribe = eng.subscribe_tokens(run.id, "work", got.append)
    try:
        chunk = {"delta": "hel", "seq": 0, "attempt": 1}
        resp = resolve(http, task["task_id"], action="stream", data=chunk)
        assert resp.status_code == 200 and resp.json()["status"] == "in_progress"
        until(lambda: got == [chunk], what="the chunk on stream.{run}.work")
    finally:
        unsubscribe()
    assert resolve(http, task["task_id"], action="complete", output="hello").status_code == 200
    assert run.wait(10).output == "hello"

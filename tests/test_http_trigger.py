"""HTTP triggers and the respond step, through the real HTTP endpoint of a real engine (real
nats-server, requests with httpx): a request under /api/ starts a run and gets its respond
step's answer, with Go's statuses for everything else."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time

import httpx
import pytest
from conftest import until

import dagnats_nb as dn
from dagnats_nb.adapters.http import http_triggers as ht
from dagnats_nb.adapters.http.server import Raw, Request

SECRET = "http-trigger-secret-1234"
RUN_ID = "x-dagnats-run-id"


def trigger(tid: str, path: str, method: str = "POST", enabled: bool = True, **http) -> dict:
    http = {"path": path, "method": method, "timeout_ms": 10_000, "max_body_bytes": 1 << 20, **http}
    return {"id": tid, "enabled": enabled, "http": http}


def respond(depends_on: list[str], **config) -> dict:
    return {"id": "respond", "type": "respond", "depends_on": depends_on, "config": config}


def wf(name: str, steps: list[dict], *triggers: dict) -> dict:
    return {"name": name, "steps": steps, "triggers": list(triggers)}


WORKFLOWS = [
    wf(
        "created",
        [
            {"id": "echo", "task": "echo"},
            respond(["echo"], status=201, headers={"X-Foo": "bar"}, body_from="data.query"),
        ],
        trigger("created-trigger", "/api/orders"),
    ),
    wf(
        "signed",
        [{"id": "echo", "task": "echo"}, respond(["echo"], body_from="data.method")],
        trigger("signed-trigger", "/api/signed", "PUT", secret=SECRET),
    ),
    wf(
        "small",
        [{"id": "echo", "task": "echo"}, respond(["echo"])],
        trigger("small-trigger", "/api/small", max_body_bytes=16),
    ),
    wf(
        "failing",
        [{"id": "boom", "task": "boom"}, respond(["boom"])],
        trigger("failing-trigger", "/api/fail"),
    ),
    wf(
        "slow",
        [{"id": "slow", "task": "slow"}, respond(["slow"])],
        trigger("slow-trigger", "/api/slow", "GET", timeout_ms=400),
        trigger("slow-long-trigger", "/api/slow-long", "GET", timeout_ms=20_000),
    ),
    wf(
        "silent",  # no respond step: Go answers 504 once timeout_ms is over
        [{"id": "echo", "task": "echo"}],
        trigger("silent-trigger", "/api/silent", timeout_ms=500),
    ),
    wf(
        "off",
        [{"id": "echo", "task": "echo"}, respond(["echo"])],
        trigger("off-trigger", "/api/off", enabled=False),
    ),
    wf(
        "once",
        [{"id": "count", "task": "count"}, respond(["count"])],
        trigger("once-trigger", "/api/once", idempotency_header="Idempotency-Key"),
    ),
]


@pytest.fixture(scope="module")
def eng(tmp_path_factory, request):
    e = dn.Engine.start(
        data_dir=tmp_path_factory.mktemp("http-trigger") / "e",
        http_addr="127.0.0.1:0",
        ack_wait="2s",
        llm_enabled=False,
    )
    e.slow_runs = []
    e.counted = []

    @e.task("echo")
    def echo(ctx):
        return ctx.input

    @e.task("boom")
    def boom(ctx):
        raise dn.Permanent("the order cannot be placed")

    @e.task("slow")
    def slow(ctx):
        e.slow_runs.append(ctx.run_id)
        time.sleep(3)
        return {"late": True}

    @e.task("count")
    def count(ctx):
        e.counted.append(ctx.run_id)
        return {"n": len(e.counted)}

    for w in WORKFLOWS:
        e.register(w)
    try:
        yield e
    finally:
        e.stop()


@pytest.fixture(scope="module")
def http(eng):
    with httpx.Client(base_url=eng.http_url, timeout=30) as client:
        yield client


def test_conformance_http_respond_answers_with_the_echo(eng, http, conformance):
    eng.register(conformance / "http-respond.json")
    body = {"name": "web", "n": [1, 2]}
    reply = http.post("/api/echo?x=1&x=2", json=body, headers={"X-Trace": "t1"})
    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"] == "application/json"
    run_id = reply.headers[RUN_ID]
    echoed = reply.json()  # the echo step's output: Go's trigger envelope, the run's input
    assert echoed["trigger"] == "http"
    assert echoed["source"] == "http-echo-trigger"
    assert echoed["workflow_id"] == "http-echo"
    assert echoed["timestamp"].endswith("Z")
    data = echoed["data"]
    assert data["method"] == "POST" and data["path"] == "/api/echo"
    assert data["query"] == {"x": "1"}  # first values, as Go
    assert data["headers"]["X-Trace"] == "t1"
    assert data["headers"]["Content-Type"] == "application/json"
    assert "Host" not in data["headers"]
    assert json.loads(base64.b64decode(data["body"])) == body
    assert eng.wait_run(run_id, timeout=30) == "completed"


def test_respond_status_headers_and_body_from(http):
    reply = http.post("/api/orders?item=tea&qty=2", content=b"")
    assert reply.status_code == 201, reply.text
    assert reply.headers["x-foo"] == "bar"
    assert reply.headers["content-type"] == "application/json"
    assert reply.json() == {"item": "tea", "qty": "2"}
    assert reply.headers[RUN_ID]


def test_wrong_method_is_405_and_unknown_path_404(http):
    reply = http.get("/api/orders")
    assert reply.status_code == 405, reply.text
    assert reply.headers["allow"] == "POST"
    assert "GET not allowed" in reply.json()["error"]
    for method in ("GET", "POST", "DELETE", "OPTIONS"):
        reply = http.request(method, "/api/no-such-trigger")
        assert reply.status_code == 404, (method, reply.text)
        assert reply.json() == {"error": "no http trigger at /api/no-such-trigger"}
    assert RUN_ID not in reply.headers


def test_body_over_max_body_bytes_is_413(eng, http):
    counters = eng.orchestrator.counters  # ended runs leave memory: count the starts
    runs = counters["runs_started"]
    reply = http.post("/api/small", content=b"x" * 17)
    assert reply.status_code == 413, reply.text
    assert reply.json() == {"error": "request body larger than 16 bytes"}
    assert http.post("/api/small", content=b'"sixteen bytes!"').status_code == 200
    until(lambda: counters["runs_started"] >= runs + 1, what="the accepted run's start")
    assert counters["runs_started"] == runs + 1  # the refused one started nothing


def test_secret_needs_a_valid_signature(http):
    body = b'{"sign": "me"}'
    good = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    bad = "sha256=" + hmac.new(b"another-secret-000", body, hashlib.sha256).hexdigest()
    for headers in ({}, {"X-Signature-256": bad}, {"X-Signature-256": "sha1=" + good[7:]}):
        reply = http.put("/api/signed", content=body, headers=headers)
        assert reply.status_code == 401, (headers, reply.text)
        assert "X-Signature-256" in reply.json()["error"]
    reply = http.put("/api/signed", content=body + b" ", headers={"X-Signature-256": good})
    assert reply.status_code == 401
    reply = http.put("/api/signed", content=body, headers={"X-Signature-256": good})
    assert reply.status_code == 200, reply.text
    assert reply.json() == "PUT"


def test_failing_workflow_is_500_with_its_run_id(eng, http):
    reply = http.post("/api/fail", json={})
    assert reply.status_code == 500, reply.text
    run_id = reply.headers[RUN_ID]
    assert reply.json() == {"error": "workflow_failed", "run_id": run_id}
    assert eng.wait_run(run_id, timeout=10) == "failed"


def test_slow_workflow_is_504_within_timeout_ms_and_goes_on(eng, http):
    started = time.monotonic()
    reply = http.get("/api/slow")
    took = time.monotonic() - started
    assert reply.status_code == 504, reply.text
    run_id = reply.headers[RUN_ID]
    assert reply.json() == {"error": "workflow_timeout", "run_id": run_id}
    assert 0.4 <= took < 2.9, took  # the slow step takes 3 s
    assert eng.wait_run(run_id, timeout=30) == "completed"  # the run is not cancelled


def test_workflow_without_respond_step_is_504_as_go(eng, http):
    started = time.monotonic()
    reply = http.post("/api/silent", json={"a": 1})
    assert reply.status_code == 504, reply.text
    assert time.monotonic() - started >= 0.5
    run_id = reply.headers[RUN_ID]
    assert reply.json() == {"error": "workflow_timeout", "run_id": run_id}
    assert eng.wait_run(run_id, timeout=10) == "completed"


def test_cancelled_run_is_503(eng, http):
    replies = []
    thread = threading.Thread(target=lambda: replies.append(http.get("/api/slow-long")))
    before = len(eng.slow_runs)
    thread.start()
    run_id = until(lambda: eng.slow_runs[before:], what="the slow step to start")[0]
    eng.cancel_run(run_id, "caller gave up")
    thread.join(20)
    (reply,) = replies
    assert reply.status_code == 503, reply.text
    assert reply.json() == {"error": "workflow_cancelled", "run_id": run_id}
    assert reply.headers[RUN_ID] == run_id


def test_disabled_trigger_is_404_until_enabled(eng, http):
    assert http.post("/api/off", json={}).status_code == 404
    eng.enable_trigger("off-trigger")
    reply = until(
        lambda: (r := http.post("/api/off", json={"on": 1})).status_code == 200 and r,
        what="the enabled trigger to be served",
    )
    assert json.loads(base64.b64decode(reply.json()["data"]["body"])) == {"on": 1}
    eng.disable_trigger("off-trigger")
    until(lambda: http.post("/api/off", json={}).status_code == 404, what="it to be off again")


def test_idempotency_header_replays_the_first_run(eng, http):
    first = http.post("/api/once", json={}, headers={"Idempotency-Key": "order-77"})
    again = http.post("/api/once", json={}, headers={"Idempotency-Key": "order-77"})
    other = http.post("/api/once", json={}, headers={"Idempotency-Key": "order-78"})
    plain = http.post("/api/once", json={})
    assert first.status_code == again.status_code == 200, (first.text, again.text)
    assert again.headers[RUN_ID] == first.headers[RUN_ID]
    assert again.content == first.content
    runs = {first.headers[RUN_ID], other.headers[RUN_ID], plain.headers[RUN_ID]}
    assert len(runs) == 3
    assert sorted(eng.counted) == sorted(runs)  # the replay started no run


def test_trigger_table_refuses_what_go_refuses():
    def rec(tid: str, enabled: bool = True, **http) -> dict:
        return {"id": tid, "workflow_id": "w", "enabled": enabled, "http": http}

    recs = [
        rec("a", path="/api/a"),
        rec("b", path="api/b", method="GET"),
        rec("c", path="/api/c", method="GET", secret="short"),
        rec("d", path="/api/d", method="GET", timeout_ms=-1),
        rec("e", path="/api/e", method="GET"),
        rec("f", path="/api/e", method="GET"),
        rec("g", False, path="/api/g", method="GET"),
    ]
    table, problems = ht.trigger_table(recs)
    assert list(table) == ["/api/e"]
    e = table["/api/e"]["GET"]
    assert (e.id, e.timeout, e.max_body) == ("e", 30.0, 1 << 20)
    assert problems == [
        "http trigger 'a' is not served: method None not allowed; valid: GET POST PUT PATCH DELETE",
        "http trigger 'b' is not served: path 'api/b' must start with /",
        "http trigger 'c' is not served: secret must be a string of at least 16 characters",
        "http trigger 'd' is not served: timeout_ms must be a positive integer, got -1",
        "http trigger 'f' is not served: GET /api/e belongs to trigger 'e'",
    ]


def test_response_reply_decodes_go_message_and_refuses_a_bad_one():
    message = {
        "status": 202,
        "headers": {"X-Foo": "bar", "Content-Length": "9", "Bad Name": "x", "X-Nl": "a\r\nb"},
        "content_type": "text/csv",
        "body": base64.b64encode(b"a,b\n1,2\n").decode(),
    }
    reply = ht.response_reply(json.dumps(message).encode(), "run1")
    assert reply == Raw(
        202, b"a,b\n1,2\n", "text/csv", {"X-Foo": "bar", "X-Dagnats-Run-Id": "run1"}
    )
    assert ht.response_reply(b"{not json", "run1")[:2] == (
        502,
        {"error": "malformed_response", "run_id": "run1"},
    )
    assert ht.response_reply(b'{"status": 9000}', "run1")[0] == 502
    bare = ht.response_reply(b'{"body": "AAE="}', "r")  # no status, no content type
    assert (bare.status, bare.body, bare.content_type) == (200, b"\0\1", "application/octet-stream")


def test_envelope_is_gos():
    req = Request(
        "POST",
        "/api/a%20b",
        {"host": "x", "content-type": "text/plain", "x-my-header": "v"},
        b"hi",
        query={"q": "1"},
    )
    trig = ht.parse_trigger(
        {"id": "t", "workflow_id": "w", "http": {"path": "/api/a b", "method": "POST"}}
    )
    env = ht.envelope(trig, req)
    assert env["data"] == {
        "method": "POST",
        "path": "/api/a b",
        "query": {"q": "1"},
        "headers": {"Content-Type": "text/plain", "X-My-Header": "v"},
        "body": "aGk=",
    }
    bare = ht.envelope(trig, Request("GET", "/api/x", {}, b""))
    assert bare["data"] == {"method": "GET", "path": "/api/x"}  # empty parts left out, as Go


def test_concurrent_requests_with_one_idempotency_key_share_one_run(eng, http):
    before = len(eng.counted)
    replies: list[httpx.Response] = []

    def ask() -> None:
        replies.append(http.post("/api/once", json={}, headers={"Idempotency-Key": "burst-1"}))

    threads = [threading.Thread(target=ask) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert [r.status_code for r in replies] == [200] * 4, [r.text for r in replies]
    assert len({r.headers[RUN_ID] for r in replies}) == 1
    assert len({r.content for r in replies}) == 1
    assert len(eng.counted) == before + 1

"""Steps that wait without a worker (sleep, wait_for_event, approval) through the public
API, on a real embedded nats-server: the events they write, their outputs, timeouts,
signals, decisions, bad configs, and the KV entries Go's tools read."""

from __future__ import annotations

import asyncio
import json
import time

import nats
import pytest
from conftest import until
from nats.js.errors import KeyNotFoundError

from dagnats_nb.errors import DagnatsError, WorkflowError
from dagnats_nb.wire import protocol


def _wf(name, *steps):
    return {"name": name, "steps": [{"id": "draft", "task": "draft"}, *steps]}


def _kv_value(engine, bucket, key):
    """A KV value read by a separate client, as another tool would (None if absent)."""

    async def read():
        nc = await nats.connect(engine.connect_url)
        try:
            kv = await nc.jetstream().key_value(bucket)
            try:
                entry = await kv.get(key)
            except KeyNotFoundError:
                return None
            return entry.value
        finally:
            await nc.close()

    return asyncio.run(read())


def _types(engine, run_id):
    return list(engine.events(run_id)["type"])


@pytest.fixture
def drafting(engine):
    @engine.task("draft")
    def draft(ctx):
        return {"text": f"draft for {ctx.input['order']}", "order": ctx.input["order"]}

    @engine.task("send")
    def send(ctx):
        return {"sent": ctx.input}

    return engine


def test_sleep_step_wakes_after_its_duration_with_go_events(drafting):
    engine = drafting
    engine.register(
        _wf(
            "nap",
            {"id": "nap", "type": "sleep", "depends_on": ["draft"], "config": {"duration": "1s"}},
            {"id": "send", "task": "send", "depends_on": ["draft", "nap"]},
        )
    )
    t0 = time.monotonic()
    run = engine.run("nap", input={"order": 7}, timeout=20)
    took = time.monotonic() - t0
    assert run.status == "completed", run.error
    assert run.output == {"sent": {"draft": {"text": "draft for 7", "order": 7}, "nap": None}}
    assert 1.0 <= took < 5
    types = _types(engine, run.id)
    assert types.index("step.sleep.started") < types.index("step.sleep.completed")
    events = engine.events(run.id).set_index("type")
    wake = events.loc["step.sleep.started", "payload"]["wake_at"]
    woke = events.loc["step.sleep.completed", "time"]
    assert protocol.parse_time(wake) <= woke.timestamp() < protocol.parse_time(wake) + 1


def test_sleep_until_a_time_in_the_run_input(drafting):
    engine = drafting
    engine.register(
        {
            "name": "until",
            "steps": [{"id": "z", "type": "sleep", "config": {"until_input_path": "at"}}],
        }
    )
    at = time.time() + 1.2
    run = engine.run("until", input={"at": protocol.format_time(at)}, timeout=20)
    assert run.status == "completed"
    woke = engine.events(run.id).set_index("type").loc["step.sleep.completed", "time"]
    assert at <= woke.timestamp() < at + 1
    bad = engine.run("until", input={"at": "tomorrow"}, timeout=20)
    assert bad.status == "failed"
    assert "'tomorrow' is not an RFC 3339 instant" in bad.error


def test_wait_for_event_matches_on_the_resolved_condition(drafting):
    engine = drafting
    engine.register(
        _wf(
            "paid",
            {
                "id": "wait",
                "type": "wait_for_event",
                "depends_on": ["draft"],
                "config": {
                    "event": "payment",
                    "match": {"left": "order", "op": "eq", "right": "step.draft.output.order"},
                    "timeout": "30s",
                },
            },
            {"id": "send", "task": "send", "depends_on": ["wait"]},
        )
    )
    a = engine.start_run("paid", input={"order": 1})
    b = engine.start_run("paid", input={"order": 2})
    until(lambda: engine.steps(b.id).set_index("step_id").loc["wait", "status"] == "running")
    until(lambda: engine.steps(a.id).set_index("step_id").loc["wait", "status"] == "running")
    engine.publish_event("payment", {"order": 3, "amount": 1})  # nobody waits for 3
    engine.publish_event("payment", {"order": "2", "amount": 20})  # Go compares as text
    assert b.wait(timeout=20).status == "completed"
    assert b.output == {"sent": {"order": "2", "amount": 20}}
    assert engine.steps(a.id).set_index("step_id").loc["wait", "status"] == "running"
    engine.publish_event("payment", {"order": 1, "amount": 10})
    assert a.wait(timeout=20).status == "completed"
    assert a.output == {"sent": {"order": 1, "amount": 10}}
    assert "step.wait.matched" in _types(engine, a.id)


def test_wait_for_event_times_out_with_go_output(drafting):
    engine = drafting
    engine.register(
        {
            "name": "nobody",
            "steps": [
                {
                    "id": "wait",
                    "type": "wait_for_event",
                    "config": {
                        "event": "never",
                        "match": {"left": "id", "op": "eq", "right": "input.id"},
                        "timeout": "1s",
                    },
                }
            ],
        }
    )
    run = engine.run("nobody", input={"id": 1}, timeout=20)
    assert run.status == "completed"
    assert run.output == {"timeout": True}
    assert "step.wait.timeout" in _types(engine, run.id)


def test_signal_completes_the_run_waiting_for_it_even_when_sent_first(drafting):
    engine = drafting
    engine.register(
        _wf(
            "signalled",
            {
                "id": "go-ahead",
                "type": "wait_for_event",
                "depends_on": ["draft"],
                "config": {
                    "event": "go",
                    "match": {"left": "ok", "op": "eq", "right": "input.order"},
                    "timeout": "30s",
                },
            },
        )
    )
    early = "early-signal-run"
    engine.signal(early, "go", {"note": "sent before the run existed"})
    run = engine.start_run("signalled", input={"order": 5}, run_id=early)
    assert run.wait(timeout=20).status == "completed"
    assert run.output == {"note": "sent before the run existed"}
    until(lambda: _kv_value(engine, "signals", f"{early}.go") is None)  # taken: deleted
    late = engine.start_run("signalled", input={"order": 6})
    until(lambda: engine.steps(late.id).set_index("step_id").loc["go-ahead", "status"] == "running")
    engine.signal(late.id, "go", "yes")
    assert late.wait(timeout=20).status == "completed"
    assert late.output == "yes"
    with pytest.raises(DagnatsError, match="signal name 'a.b'"):
        engine.signal(late.id, "a.b", 1)


APPROVAL = {
    "id": "review",
    "type": "approval",
    "depends_on": ["draft"],
    "config": {"subject": "approvals.drafts", "timeout": "1m", "description": "ship it?"},
}


def test_approval_granted_completes_the_step_with_the_decision(drafting):
    engine = drafting
    engine.register(
        _wf("gated", APPROVAL, {"id": "send", "task": "send", "depends_on": ["review"]})
    )
    run = engine.start_run("gated", input={"order": 9})
    until(lambda: "approval.requested" in _types(engine, run.id))
    requested = engine.events(run.id).set_index("type").loc["approval.requested", "payload"]
    assert requested["subject"] == "approvals.drafts" and len(requested["token"]) >= 24
    assert requested["description"] == "ship it?"
    decision = engine.approve(run.id, "review", "looks good", by="ada")
    assert decision["approved"] is True and decision["by"] == "ada"
    assert run.wait(timeout=20).status == "completed"
    assert run.output["sent"]["comment"] == "looks good"
    granted = engine.events(run.id).set_index("type").loc["approval.granted", "payload"]
    assert granted["by"] == "ada" and granted["comment"] == "looks good"
    with pytest.raises(DagnatsError, match="has no open approval"):
        engine.approve(run.id, "review")


def test_approval_rejected_fails_the_run_and_names_who(drafting):
    engine = drafting
    engine.register(_wf("gated2", APPROVAL))
    run = engine.start_run("gated2", input={"order": 1})
    until(lambda: "approval.requested" in _types(engine, run.id))
    engine.reject(run.id, "review", "too long", by="bob")
    assert run.wait(timeout=20).status == "failed"
    assert "approval rejected by bob: too long" in run.error


def test_approval_with_approvers_refuses_anyone_else(drafting):
    engine = drafting
    gate = {**APPROVAL, "config": {**APPROVAL["config"], "approvers": ["carol"]}}
    engine.register(_wf("gated3", gate))
    run = engine.start_run("gated3", input={"order": 1})
    until(lambda: "approval.requested" in _types(engine, run.id))
    with pytest.raises(DagnatsError, match="'mallory' may not decide; approvers: carol"):
        engine.approve(run.id, "review", by="mallory")
    engine.approve(run.id, "review", by="carol")
    assert run.wait(timeout=20).status == "completed"


def test_approval_expires_and_fails_the_step(drafting):
    engine = drafting
    gate = {**APPROVAL, "config": {**APPROVAL["config"], "timeout": "1s"}}
    engine.register(_wf("gated4", gate))
    run = engine.run("gated4", input={"order": 1}, timeout=20)
    assert run.status == "failed"
    assert "approval timed out" in run.error
    assert "approval.expired" in _types(engine, run.id)


def test_cancelling_a_waiting_run_withdraws_its_approval_token(drafting):
    engine = drafting
    engine.register(_wf("gated5", APPROVAL))
    run = engine.start_run("gated5", input={"order": 1})
    until(lambda: "approval.requested" in _types(engine, run.id))
    engine.cancel_run(run.id)
    assert run.wait(timeout=20).status == "cancelled"

    def token_gone():
        try:
            engine.approve(run.id, "review")
        except DagnatsError as exc:
            return "no open approval" in str(exc)
        return False

    until(token_gone)


@pytest.mark.parametrize(
    ("step", "message"),
    [
        ({"type": "sleep", "config": {}}, "exactly one of duration, cron, until_input_path"),
        ({"type": "sleep", "config": {"duration": "9000h"}}, "exceeds the maximum sleep"),
        (
            {"type": "wait_for_event", "config": {"event": "x", "timeout": "1s"}},
            "config.match.left': must not be empty",
        ),
        (
            {
                "type": "wait_for_event",
                "config": {
                    "event": "x",
                    "timeout": "1s",
                    "match": {"left": "a", "op": "eq", "right": "step.nope.output.a"},
                },
            },
            "names step 'nope', which does not exist",
        ),
        ({"type": "approval", "config": {"timeout": "1h"}}, "config.subject"),
        ({"type": "approval", "config": {"subject": "s", "timeout": "200h"}}, "168h"),
    ],
)
def test_bad_waiting_step_configs_are_refused_at_register(engine, step, message):
    with pytest.raises(WorkflowError, match=message.replace("(", r"\(").replace(")", r"\)")):
        engine.register({"name": "bad", "steps": [{"id": "s", **step}]})


def test_go_tools_read_the_approval_token_record(drafting):
    engine = drafting
    engine.register(_wf("gated6", APPROVAL))
    run = engine.start_run("gated6", input={"order": 1})
    until(lambda: "approval.requested" in _types(engine, run.id))
    record = json.loads(_kv_value(engine, "approval_tokens", f"{run.id}.review"))
    assert set(record) >= {"token", "run_id", "step_id", "created_at", "expires_at"}
    assert record["run_id"] == run.id and record["step_id"] == "review"


def test_the_approval_link_decides_over_http_as_go_answers(tmp_path):
    import httpx

    import dagnats_nb as dn

    with dn.Engine.start(data_dir=tmp_path / "e", http_addr="127.0.0.1:0") as eng:

        @eng.task("draft")
        def draft(ctx):
            return {"text": "x"}

        eng.register(_wf("linked", APPROVAL))
        run = eng.start_run("linked", input={"order": 1})
        until(lambda: "approval.requested" in _types(eng, run.id))
        token = eng.events(run.id).set_index("type").loc["approval.requested", "payload"]["token"]
        assert len(token) == 64  # Go's: 32 random bytes, hex
        url = f"{eng.http_url}/runs/{run.id}/approval/review"
        assert httpx.post(url, params={"action": "maybe", "token": token}).status_code == 400
        assert httpx.post(url, params={"action": "approve"}).status_code == 400
        wrong = httpx.post(url, params={"action": "approve", "token": "0" * 64})
        assert wrong.status_code == 401 and "does not match" in wrong.json()["error"]
        ok = httpx.post(
            url, params={"action": "approve", "token": token}, json={"approved_by": "web"}
        )
        assert ok.status_code == 200
        assert ok.json() == {"run_id": run.id, "status": "approved", "step": "review"}
        assert run.wait(timeout=20).status == "completed"
        assert run.output == {"approved_by": "web"}  # the body is the decision, as in Go
        again = httpx.post(url, params={"action": "approve", "token": token})
        assert again.status_code == 401 and "no open approval" in again.json()["error"]


def test_a_respond_step_answers_on_go_subject_and_completes_with_its_body(drafting):
    import base64

    engine = drafting
    engine.register(
        _wf(
            "answer",
            {
                "id": "reply",
                "type": "respond",
                "depends_on": ["draft"],
                "config": {"status": 201, "headers": {"X-Kind": "draft"}, "body_from": "text"},
            },
            {"id": "send", "task": "send", "depends_on": ["reply"]},
        )
    )
    got: list = []

    async def listen_then_run():
        nc = await nats.connect(engine.connect_url)
        sub = await nc.subscribe(protocol.response_subject("answered-run"))
        await asyncio.to_thread(engine.start_run, "answer", {"order": 3}, run_id="answered-run")
        msg = await sub.next_msg(timeout=20)
        got.append(json.loads(msg.data))
        await nc.close()

    asyncio.run(listen_then_run())
    reply = got[0]
    assert reply["status"] == 201 and reply["headers"] == {"X-Kind": "draft"}
    assert reply["content_type"] == "application/json"
    assert json.loads(base64.b64decode(reply["body"])) == "draft for 3"
    run = engine.get_run("answered-run").wait(timeout=20)
    assert run.status == "completed" and run.output == {"sent": "draft for 3"}
    types = _types(engine, run.id)
    assert types.count("step.completed") == 3  # draft, reply (the engine's), send


def test_approve_waits_for_a_run_that_has_not_reached_its_approval_yet(drafting):
    engine = drafting
    engine.register(
        _wf(
            "later",
            {"id": "nap", "type": "sleep", "depends_on": ["draft"], "config": {"duration": "1s"}},
            {**APPROVAL, "depends_on": ["nap"]},
        )
    )
    run = engine.start_run("later", input={"order": 1})
    with pytest.raises(DagnatsError, match="not reached yet"):
        engine.approve(run.id, "review")  # no wait: the run is asleep before the approval
    t0 = time.monotonic()
    decision = engine.approve(run.id, "review", "when it comes", wait=20)
    assert 0.5 < time.monotonic() - t0 < 15
    assert decision["comment"] == "when it comes"
    assert run.wait(timeout=20).status == "completed"

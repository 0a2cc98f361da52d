"""The built-in ``llm`` task type on a real engine (real nats-server) against a real local
Chat Completions server, and on the simulator."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from llm_server import ChatServer, Reply

import dagnats_nb as dn

FAST_RETRY = {"max_attempts": 2, "strategy": "fixed", "initial_delay": "10ms"}


@pytest.fixture(scope="module")
def server():
    srv = ChatServer()
    yield srv
    srv.close()


@pytest.fixture(scope="module")
def eng(tmp_path_factory, server):
    e = dn.Engine.start(
        data_dir=tmp_path_factory.mktemp("llm") / "engine",
        ack_wait="2s",
        llm_provider="openai",
        llm_base_url=server.url,
        llm_api_key="sk-test",
        llm_model="test-model",
        llm_timeout="1s",
        llm_concurrency=8,
        llm_sim_latency_ms=5,
        llm_sim_tokens_per_s=0,
    )
    yield e
    e.stop()


def one_step(name: str, config: dict, retry: dict | None = FAST_RETRY) -> dict:
    step = {"id": "ask", "task": "llm", "config": config}
    if retry:
        step["retry"] = retry
    return {"name": name, "steps": [step]}


def failures(eng, run_id: str) -> list[dict]:
    ev = eng.events(run_id)
    return list(ev[ev["type"] == "step.failed"]["payload"])


def test_llm_worker_has_the_configured_concurrency(eng):
    assert eng.workers["llm"].handler.concurrency == 8
    status = eng.status()
    assert status["workers"][0]["tasks"]["llm"]["concurrency"] == 8


def test_a_step_calls_the_endpoint_and_returns_the_completion(eng, server):
    server.reset()
    server.script.append(Reply(text="Short summary."))
    cfg = {
        "model": "m1",
        "system": "You summarise {input.kind}s.",
        "prompt": "Summarise: {input.text}",
        "temperature": 0,
        "max_tokens": 30,
    }
    run = eng.run(one_step("ask-one", cfg), input={"kind": "memo", "text": "all is well"})
    assert run.status == "completed", run.error
    out = run.output
    assert out["text"] == "Short summary." and out["model"] == "m1"
    assert out["usage"] == {"prompt_tokens": 11, "completion_tokens": 2}
    assert out["finish_reason"] == "stop" and out["latency_ms"] > 0
    body = server.requests[0].body
    assert body["messages"] == [
        {"role": "system", "content": "You summarise memos."},
        {"role": "user", "content": "Summarise: all is well"},
    ]
    assert (body["temperature"], body["max_tokens"]) == (0, 30)
    assert server.requests[0].headers["Authorization"] == "Bearer sk-test"


def test_retry_after_of_a_429_is_honoured(eng, server):
    server.reset()
    server.script.extend([Reply(status=429, error="busy", headers={"Retry-After": "1"}), Reply()])
    run = eng.run(one_step("ask-429", {"prompt": "{input}"}), input="hi")
    assert run.status == "completed", run.error
    first, second = server.requests
    gap = second.at - first.at
    assert 1.0 <= gap < 1.8, gap  # the retry policy alone would wait 10 ms
    (payload,) = failures(eng, run.id)
    assert payload["failure_type"] == "retry_after" and payload["retry_after_ms"] == 1000
    assert "HTTP 429: busy" in payload["error"]


@pytest.mark.parametrize(
    "reply",
    [Reply(status=500, error="boom"), Reply(status=408, error="slow"), Reply(delay=1.3)],
    ids=["500", "408", "timeout"],
)
def test_server_errors_and_timeouts_are_retried(eng, server, reply):
    server.reset()
    server.script.extend([reply, Reply(text="fine")])
    run = eng.run(one_step(f"ask-retry-{reply.status}", {"prompt": "{input}"}), input="x")
    assert run.status == "completed", run.error
    assert run.output["text"] == "fine"
    (payload,) = failures(eng, run.id)
    assert payload["failure_type"] == "retriable"
    assert ("timed out" if reply.delay else f"HTTP {reply.status}") in payload["error"]


def test_a_401_fails_permanently_and_is_dead_lettered_with_the_message(eng, server):
    server.reset()
    server.script.append(Reply(status=401, error="Incorrect API key provided: sk-te***"))
    run = eng.run(one_step("ask-401", {"prompt": "{input}"}), input="x")
    assert run.status == "failed"
    assert "HTTP 401: Incorrect API key provided: sk-te***" in run.error
    assert len(server.requests) == 1  # no retry despite max_attempts 2
    assert failures(eng, run.id)[0]["failure_type"] == "non_retriable"

    [letter] = eng.dlq(run=run.id).to_dict("records")
    assert "Incorrect API key provided" in letter["error"]
    assert letter["step_id"] == "ask" and letter["attempts"] == 1


def test_a_reply_that_is_not_json_is_retried_with_the_raw_text(eng, server):
    server.reset()
    server.script.extend([Reply(text="Sure! The label is good."), Reply(text='{"label": "good"}')])
    cfg = {"prompt": "classify {input}", "response_format": "json"}
    run = eng.run(one_step("ask-json", cfg), input="x")
    assert run.status == "completed", run.error
    assert run.output["json"] == {"label": "good"} and "text" not in run.output
    (payload,) = failures(eng, run.id)
    assert payload["failure_type"] == "retriable"
    assert "is not JSON" in payload["error"] and "Sure! The label is good." in payload["error"]
    assert server.requests[0].body["response_format"] == {"type": "json_object"}


def test_a_missing_template_field_fails_permanently_naming_it(eng, server):
    server.reset()
    run = eng.run(one_step("ask-tpl", {"prompt": "Summarise {input.body}"}), input={"text": "x"})
    assert run.status == "failed"
    assert "field 'input.body' is missing: 'input' has no 'body' (it has text)" in run.error
    assert "step 'ask' prompt template" in run.error
    assert len(failures(eng, run.id)) == 1 and not server.requests


def test_streaming_tokens_arrive_live_and_in_the_output(eng, server):
    server.reset()
    server.script.append(Reply(text="alpha beta gamma delta", delay=0.3, chunk_delay=0.05))
    run = eng.start_run(one_step("ask-stream", {"prompt": "{input}", "stream": True}), "x")
    arrived: list[tuple[float, str]] = []
    for token in run.stream("ask", timeout=10):
        arrived.append((time.monotonic(), token))
    run.wait(10)
    assert [t for _, t in arrived] == ["alpha", " beta", " gamma", " delta"]
    assert arrived[-1][0] - arrived[0][0] >= 0.075  # one by one (0.15 s apart), not at the end
    assert run.output["text"] == "alpha beta gamma delta"
    assert server.requests[0].body["stream"] is True


def test_async_stream_and_the_live_view_callback(eng, server):
    server.reset()
    server.script.append(Reply(text="one two three", delay=0.3, chunk_delay=0.02))
    run = eng.start_run(one_step("ask-stream2", {"prompt": "{input}", "stream": True}), "x")
    seen: list[dict] = []
    lock = threading.Lock()

    def on_chunk(chunk: dict) -> None:
        with lock:
            seen.append(chunk)

    unsubscribe = eng.subscribe_tokens(run.id, "ask", on_chunk)

    async def collect():
        return [t async for t in run.stream("ask", timeout=10)]

    assert asyncio.run(collect()) == ["one", " two", " three"]
    run.wait(10)
    unsubscribe()
    with lock:
        assert [c.get("delta") for c in seen[:3]] == ["one", " two", " three"]
        assert seen[-1]["done"] is True and seen[-1]["finish_reason"] == "stop"


def test_stream_of_a_finished_step_ends_at_once(eng, server):
    server.reset()
    run = eng.run(one_step("ask-done", {"prompt": "{input}", "stream": True}), input="x")
    # No timeout: only seeing that the step is over can end this stream (else it hangs and
    # the test's timeout fails it).
    assert list(run.stream("ask")) == []


def test_simulated_map_with_errors_and_the_usage_table(tmp_path):
    with dn.Engine.start(
        data_dir=tmp_path / "sim",
        ack_wait="2s",
        llm_provider="simulated",
        llm_sim_latency_ms=20,
        llm_sim_latency_sigma=0.3,
        llm_sim_429_rate=0.15,
        llm_sim_500_rate=0.1,
        llm_sim_retry_after="50ms",
        llm_sim_seed=11,
    ) as e:
        wf = {
            "name": "sim-map",
            "default_retry": {"max_attempts": 10, "strategy": "fixed", "initial_delay": "10ms"},
            "steps": [
                {"id": "docs", "task": "docs"},
                {
                    "id": "summarise",
                    "task": "llm",
                    "type": "map",
                    "depends_on": ["docs"],
                    "config": {"prompt": "Summarise: {input.text}", "max_tokens": 12},
                },
                {
                    "id": "classify",
                    "task": "llm",
                    "depends_on": ["summarise"],
                    "config": {
                        "model": "judge",
                        "prompt": "Rate {summarise.0.text}: one of: good, bad",
                        "response_format": "json",
                    },
                },
            ],
        }

        @e.task("docs")
        def docs(ctx):
            return [{"text": f"document {i} on topic {i % 7}"} for i in range(40)]

        run = e.run(wf, timeout=60)
        assert run.status == "completed", run.error
        assert run.output["model"] == "simulated:judge"
        assert run.output["json"]["label"] in ("good", "bad")
        usage = e.llm_usage(run.id).set_index("step_id")
        s = usage.loc["summarise"]
        assert s["model"] == "simulated:gpt-4o-mini"
        assert s["calls"] == 40 + s["errors"] and s["errors"] >= 3
        assert s["retries"] == s["errors"]  # every failed call was retried once more
        assert s["completion_tokens"] > 0 and s["latency_p95_ms"] >= s["latency_p50_ms"] > 5
        assert usage.loc["classify"]["calls"] >= 1
        calls = e.llm_calls(run.id)
        assert set(calls["status"]) <= {"ok", "rate_limited", "unavailable"}
        assert (calls[calls["status"] == "rate_limited"]["http_status"] == 429).all()


def test_per_step_provider_override(eng, server):
    server.reset()
    cfg = {"prompt": "{input}", "provider": "simulated", "model": "tiny"}
    run = eng.run(one_step("ask-sim", cfg), input="hello there world")
    assert run.status == "completed", run.error
    assert run.output["model"] == "simulated:tiny" and not server.requests


def test_stream_of_one_map_instance(eng, server):
    server.reset()
    server.script.extend(
        Reply(text=f"reply number {i} here", delay=0.4, chunk_delay=0.01) for i in range(3)
    )
    wf = {
        "name": "ask-map-stream",
        "steps": [
            {"id": "items", "task": "llm-items"},
            {
                "id": "ask",
                "task": "llm",
                "type": "map",
                "depends_on": ["items"],
                "config": {"prompt": "{input}", "stream": True},
            },
        ],
    }

    @eng.task("llm-items")
    def items(ctx):
        return ["a", "b", "c"]

    run = eng.start_run(wf)
    tokens = list(run.stream("ask", map_index=1, timeout=10))
    run.wait(10)
    assert run.status == "completed", run.error
    assert "".join(tokens) == run.output[1]["text"]
    assert len(tokens) == 4 and len({o["text"] for o in run.output}) == 3


def test_register_refuses_invalid_llm_steps_one_line_each(eng):
    wf = {
        "name": "ask-bad",
        "steps": [
            {"id": "a", "task": "t"},
            {"id": "b", "task": "llm", "depends_on": ["a"], "config": {"prompt": "{c.text}"}},
            {"id": "c", "task": "llm", "config": {"prompt": "x", "temprature": 0}},
            {"id": "d", "task": "llm", "config": {"prompt": 'reply {"x": 1}'}},
        ],
    }
    with pytest.raises(dn.WorkflowError) as info:
        eng.register(wf)
    assert info.value.problems == [
        "workflow 'ask-bad' step 'b': field 'config.prompt': template field 'c.text': 'c' is "
        "neither 'input' nor a dependency of the step (it can use a, input)",
        "workflow 'ask-bad' step 'c': field 'config': 'temprature': Extra inputs are not "
        "permitted (llm options: prompt, model, system, temperature, max_tokens, "
        "response_format, stream, provider)",
        "workflow 'ask-bad' step 'd': field 'config.prompt': '{\"x\": 1}' at character 6 is "
        "not a field such as {input.text}: write '{{' and '}}' for literal braces",
    ]
    with pytest.raises(dn.WorkflowError, match="step 'c': field 'config'"):
        eng.start_run(wf)


def test_a_custom_llm_handler_is_not_checked(tmp_path):
    with dn.Engine.start(data_dir=tmp_path / "own", llm_provider="simulated") as e:

        @e.task("llm")
        def mine(ctx):
            return {"echo": ctx.input}

        run = e.run({"name": "own", "steps": [{"id": "s", "task": "llm"}]}, input=1)
        assert run.status == "completed" and run.output == {"echo": 1}


def map_of(name: str, n: int, config: dict) -> dict:
    return {
        "name": name,
        "steps": [
            {"id": "items", "task": "llm-range"},
            {"id": "ask", "task": "llm", "type": "map", "depends_on": ["items"], "config": config},
        ],
    }


def test_concurrency_bounds_the_calls_in_flight(eng, server):
    @eng.task("llm-range")
    def items(ctx):
        return list(range(ctx.input))

    server.reset()
    server.script.extend(Reply(delay=0.15) for _ in range(24))
    t0 = time.monotonic()
    run = eng.run(map_of("ask-many", 24, {"prompt": "{input}"}), input=24)
    assert run.status == "completed", run.error
    assert server.max_inflight == 8  # llm_concurrency: the consumer's MaxAckPending
    assert time.monotonic() - t0 >= 3 * 0.15


def test_a_call_longer_than_ack_wait_is_heartbeaten_not_redelivered(tmp_path, server):
    server.reset()
    server.script.append(Reply(text="slow but fine", delay=2.2))
    with dn.Engine.start(
        data_dir=tmp_path / "slow",
        ack_wait="1s",
        llm_provider="openai",
        llm_base_url=server.url,
        llm_timeout="10s",
    ) as e:
        run = e.run(one_step("ask-slow", {"prompt": "{input}"}), input="x", timeout=30)
        assert run.status == "completed", run.error
        assert run.output["text"] == "slow but fine"
    assert len(server.requests) == 1


def test_requests_per_minute_are_shared_by_all_steps(tmp_path):
    with dn.Engine.start(
        data_dir=tmp_path / "rpm",
        llm_provider="simulated",
        llm_sim_latency_ms=1,
        llm_sim_latency_sigma=0,
        llm_rpm=1200,  # 20 per second, at most one second's worth at once
    ) as e:

        @e.task("llm-range")
        def items(ctx):
            return list(range(ctx.input))

        t0 = time.monotonic()
        runs = [e.start_run(map_of("ask-rpm", 20, {"prompt": "n {input}"}), 20) for _ in range(2)]
        assert all(r.wait(30).status == "completed" for r in runs)
        took = time.monotonic() - t0
        assert took >= 0.9, took  # 40 calls at 20/s after a burst of 20
        waits = e.llm_calls()["rate_wait_ms"]
        assert (waits > 0).sum() >= 15 and waits.max() >= 500


def test_a_step_timeout_cancels_the_call_and_records_it(eng, server):
    server.reset()
    server.script.extend([Reply(delay=0.7), Reply(text="in time")])
    wf = one_step("ask-step-timeout", {"prompt": "{input}"})
    wf["steps"][0]["timeout"] = "300ms"
    run = eng.run(wf, input="x")
    assert run.status == "completed", run.error
    assert "timed out after 0.3s" in failures(eng, run.id)[0]["error"]
    calls = eng.llm_calls(run.id)
    assert list(calls.sort_values("attempt")["status"]) == ["cancelled", "ok"]

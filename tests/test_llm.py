"""The llm package without an engine: templates, simulator, rate limits, and the
OpenAI-compatible provider against a real local HTTP server."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from llm_server import ChatServer, Reply

from dagnats_nb.config import load_settings
from dagnats_nb.dag import load_workflow
from dagnats_nb.llm import (
    ChatRequest,
    OpenAIProvider,
    ProviderError,
    SimulatedProvider,
    SimulatorSettings,
    TemplateError,
    default_provider,
    parse_options,
    render,
    usage_frame,
)
from dagnats_nb.llm.handler import BadReply, parse_json_reply, template_scope
from dagnats_nb.llm.providers import retry_after_seconds, sse_data
from dagnats_nb.llm.ratelimit import RateLimiter
from dagnats_nb.runtime.handlers import Permanent, RetryAfter

# -- templates -------------------------------------------------------------------------


def test_template_fills_fields_lists_and_parents():
    scope = {"input": {"text": "hi", "tags": ["a", "b"], "n": 3}, "summarise": {"text": "s"}}
    out = render("{input.text} {input.tags.1} {input.n} {summarise.text} {{x}}", scope)
    assert out == "hi b 3 s {x}"
    assert render("{input.tags}", scope) == '["a","b"]'


@pytest.mark.parametrize(
    ("template", "named"),
    [
        ("{input.txt}", "field 'input.txt' is missing: 'input' has no 'txt' (it has text)"),
        ("{summary.text}", "field 'summary.text' is missing: 'summary' is not one of input"),
        ("{input.text.x}", "field 'input.text.x' is missing: 'input.text' is a str"),
    ],
)
def test_template_names_the_missing_field(template, named):
    with pytest.raises(TemplateError) as info:
        render(template, {"input": {"text": "hi"}})
    assert named in str(info.value)
    assert isinstance(info.value, Permanent)


def test_template_refuses_stray_braces():
    with pytest.raises(TemplateError, match="is not a field such as {input.text}: write '{{'"):
        render('reply {"label": 1}', {"input": 1})
    with pytest.raises(TemplateError, match="stray '}' at character 4: write '}}'"):
        render("oops} {input}", {"input": 1})
    with pytest.raises(TemplateError, match="at character 0 is not a field"):
        render("{ }", {"input": 1})


def test_scope_of_a_fan_in_step_names_each_parent():
    defn = load_workflow(
        {
            "name": "w",
            "steps": [
                {"id": "a", "task": "t"},
                {"id": "b", "task": "t"},
                {"id": "c", "task": "llm", "depends_on": ["a", "b"], "config": {"prompt": "x"}},
            ],
        }
    )
    scope = template_scope(defn.step("c"), {"a": {"v": 1}, "b": {"v": 2}})
    assert render("{a.v}+{b.v}={input.a.v}", scope) == "1+2=1"


def test_options_are_checked_with_the_step_named():
    defn = load_workflow(
        {"name": "w", "steps": [{"id": "s", "task": "llm", "config": {"prompt": "p", "tmp": 1}}]}
    )
    with pytest.raises(Permanent, match=r"step 's' \(task llm\): config 'tmp': Extra inputs"):
        parse_options(defn.step("s"))


def test_json_reply_parsing():
    assert parse_json_reply('```json\n{"a": 1}\n```', "m") == {"a": 1}
    with pytest.raises(BadReply, match="reply of m is not JSON .*: sure! here it is"):
        parse_json_reply("sure! here it is", "m")


def test_default_provider_follows_the_settings():
    assert default_provider(load_settings(env={}), env={}) == "simulated"
    assert default_provider(load_settings(env={}), env={"OPENAI_API_KEY": "sk"}) == "openai"
    with_url = load_settings(env={}, llm_base_url="http://localhost:11434/v1")
    assert default_provider(with_url, env={}) == "openai"
    forced = load_settings(env={}, llm_provider="simulated", llm_api_key="k")
    assert default_provider(forced, env={"OPENAI_API_KEY": "sk"}) == "simulated"


# -- simulator -------------------------------------------------------------------------


def _req(i: int, attempt: int = 1, **kw) -> ChatRequest:
    return ChatRequest(
        "m", [{"role": "user", "content": f"document {i} about cats"}], **kw, attempt=attempt
    )


def test_simulator_is_deterministic_for_a_seed():
    a = SimulatedProvider(SimulatorSettings(seed=1))
    b = SimulatedProvider(SimulatorSettings(seed=1))
    c = SimulatedProvider(SimulatorSettings(seed=2))
    plans_a = [a.plan(_req(i)) for i in range(50)]
    assert plans_a == [b.plan(_req(i)) for i in range(50)]
    assert plans_a != [c.plan(_req(i)) for i in range(50)]
    assert a.plan(_req(1)) != a.plan(_req(1, attempt=2))  # a retry draws anew


def test_simulator_error_rates_are_observed_within_tolerance():
    sim = SimulatedProvider(
        SimulatorSettings(seed=3, rate_429=0.10, rate_500=0.05, rate_timeout=0.05)
    )
    n = 4000
    outcomes = [sim.plan(_req(i)).outcome for i in range(n)]
    for kind, rate in (("rate_limited", 0.10), ("unavailable", 0.05), ("timeout", 0.05)):
        assert abs(outcomes.count(kind) / n - rate) < 0.02, kind


def test_simulator_latency_is_log_normal_around_the_median():
    sim = SimulatedProvider(SimulatorSettings(seed=4, latency_ms=800, sigma=0.5))
    lat = sorted(sim.plan(_req(i)).latency_s for i in range(2000))
    assert 0.72 < lat[1000] < 0.88
    assert lat[1900] > 1.5 * lat[1000]
    fixed = SimulatedProvider(SimulatorSettings(latency_ms=200, sigma=0))
    assert {fixed.plan(_req(i)).latency_s for i in range(20)} == {0.2}


def test_simulator_replies_name_themselves_and_stream_at_the_token_rate():
    sim = SimulatedProvider(SimulatorSettings(seed=5, latency_ms=50, sigma=0, tokens_per_s=200))
    got: list[str] = []

    async def on_token(t: str) -> None:
        got.append(t)

    async def go():
        t0 = time.perf_counter()
        done = await sim.complete(_req(1, stream=True), on_token)
        return done, time.perf_counter() - t0

    done, took = asyncio.run(go())
    assert done.model == "simulated:m" and "".join(got) == done.text
    assert took >= 0.05 + (len(got) - 1) / 200 * 0.9
    js = asyncio.run(sim.complete(_req(2, json=True, stream=False), None))
    assert parse_json_reply(js.text, js.model)["label"] in ("positive", "negative", "neutral")


def test_simulator_failures_are_provider_errors():
    sim = SimulatedProvider(SimulatorSettings(latency_ms=1, sigma=0, rate_429=1, retry_after=2))
    with pytest.raises(ProviderError) as info:
        asyncio.run(sim.complete(_req(1), None))
    signal = info.value.signal()
    assert isinstance(signal, RetryAfter) and signal.seconds == 2


# -- rate limits -----------------------------------------------------------------------


def test_rate_limiter_paces_requests_and_tokens():
    async def go(limiter: RateLimiter, n: int, tokens: int) -> tuple[float, float]:
        """Wall seconds for ``n`` calls, and the longest wait the limiter scheduled."""
        t0 = time.perf_counter()
        waits = await asyncio.gather(*(limiter.acquire(tokens) for _ in range(n)))
        return time.perf_counter() - t0, max(waits)

    # 1200/min = 20/s with a one-second burst: the 40th call is scheduled one second out
    # (a little less: the bucket refills while the calls arrive), and really waits for it
    took, last = asyncio.run(go(RateLimiter(requests_per_min=1200), 40, 0))
    assert 0.9 < last <= 1.0 and took > 0.9
    # 60,000 tokens/min = 1,000/s: 20 calls of 100 tokens, the last one second out
    took, last = asyncio.run(go(RateLimiter(tokens_per_min=60_000), 20, 100))
    assert 0.9 < last <= 1.0 and took > 0.9
    unlimited = RateLimiter()
    assert asyncio.run(go(unlimited, 100, 100))[1] == 0 and unlimited.waited_s == 0


# -- the OpenAI-compatible provider against a real server ------------------------------


@pytest.fixture(scope="module")
def server():
    srv = ChatServer()
    yield srv
    srv.close()


def _call(server: ChatServer, req: ChatRequest, *, timeout: float = 5.0, key: str = "sk-t"):
    tokens: list[str] = []

    async def on_token(t: str) -> None:
        tokens.append(t)

    async def go():
        prov = OpenAIProvider(server.url, key, timeout, 4)
        try:
            return await prov.complete(req, on_token)
        finally:
            await prov.close()

    return asyncio.run(go()), tokens


def test_request_body_and_headers(server):
    server.reset()
    req = ChatRequest(
        "llama3",
        [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
        temperature=0.2,
        max_tokens=50,
        json=True,
    )
    server.script.append(Reply(text='{"ok": true}'))
    done, _ = _call(server, req)
    seen = server.requests[0]
    assert seen.path == "/v1/chat/completions"
    assert seen.headers["Authorization"] == "Bearer sk-t"
    assert seen.headers["Content-Type"] == "application/json"
    assert seen.body == {
        "model": "llama3",
        "messages": req.messages,
        "temperature": 0.2,
        "max_tokens": 50,
        "response_format": {"type": "json_object"},
    }
    assert (done.text, done.model, done.prompt_tokens, done.finish_reason) == (
        '{"ok": true}',
        "llama3",
        11,
        "stop",
    )


def test_streaming_reassembles_the_reply(server):
    server.reset()
    server.script.append(Reply(text="one two three four", chunk_delay=0.01))
    done, tokens = _call(server, _req(1, stream=True))
    assert tokens == ["one", " two", " three", " four"]
    assert done.text == "one two three four"
    assert (done.completion_tokens, done.finish_reason) == (4, "stop")
    assert server.requests[0].body["stream"] is True


@pytest.mark.parametrize(
    ("reply", "kind", "signal"),
    [
        (
            Reply(status=429, error="slow down", headers={"Retry-After": "3"}),
            "rate_limited",
            RetryAfter,
        ),
        (Reply(status=429, error="slow down"), "rate_limited", ProviderError),
        (Reply(status=500, error="boom"), "unavailable", ProviderError),
        (Reply(status=503, error="overloaded"), "unavailable", ProviderError),
        (Reply(status=408, error="request timeout"), "unavailable", ProviderError),
        (Reply(status=401, error="Incorrect API key provided"), "rejected", Permanent),
        (Reply(status=404, error="model 'nope' not found"), "rejected", Permanent),
        (Reply(status=400, error="context length exceeded"), "rejected", Permanent),
        (Reply(delay=0.6), "timeout", ProviderError),
        (Reply(raw=b"<html>proxy error</html>"), "unavailable", ProviderError),
    ],
)
def test_each_failure_class_is_mapped(server, reply, kind, signal):
    server.reset()
    server.script.append(reply)
    with pytest.raises(ProviderError) as info:
        _call(server, _req(1), timeout=0.3)
    assert info.value.kind == kind
    assert type(info.value.signal()) is signal
    if reply.error:
        assert reply.error in str(info.value.signal())
    if reply.headers:
        assert info.value.signal().seconds == 3


def test_a_failure_in_a_stream_is_mapped(server):
    server.reset()
    server.script.append(Reply(status=401, error="bad key"))
    with pytest.raises(ProviderError, match="HTTP 401: bad key"):
        _call(server, _req(1, stream=True))


def test_connection_refused_is_retriable():
    async def go():
        prov = OpenAIProvider("http://127.0.0.1:9/v1", None, 2.0, 1)
        try:
            await prov.complete(_req(1), None)
        finally:
            await prov.close()

    with pytest.raises(ProviderError) as info:
        asyncio.run(go())
    assert info.value.kind == "unavailable" and "cannot reach" in str(info.value)


def test_retry_after_forms():
    assert retry_after_seconds(httpx.Headers({"retry-after-ms": "250"})) == 0.25
    assert retry_after_seconds(httpx.Headers({"Retry-After": "7"})) == 7
    date = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 30))
    assert 25 < retry_after_seconds(httpx.Headers({"Retry-After": date})) <= 30
    assert retry_after_seconds(httpx.Headers({})) is None


def test_sse_parser_joins_multi_line_data_and_skips_comments():
    async def lines():
        for line in [": hi", "data: a", "data: b", "", "event: x", "data:c", ""]:
            yield line

    async def go():
        return [d async for d in sse_data(lines())]

    assert asyncio.run(go()) == ["a\nb", "c"]


def test_usage_frame_groups_calls():
    recs = [
        {
            "run_id": "r",
            "step_id": "s",
            "model": "m",
            "status": "ok",
            "attempt": 1,
            "latency_ms": 10.0,
            "prompt_tokens": 5,
            "completion_tokens": 7,
        },
        {
            "run_id": "r",
            "step_id": "s",
            "model": "m",
            "status": "unavailable",
            "attempt": 1,
            "latency_ms": 30.0,
        },
        {
            "run_id": "r",
            "step_id": "s",
            "model": "m",
            "status": "ok",
            "attempt": 2,
            "latency_ms": 20.0,
            "prompt_tokens": 5,
            "completion_tokens": 3,
        },
    ]
    row = usage_frame(recs).iloc[0].to_dict()
    assert row["calls"] == 3 and row["errors"] == 1 and row["retries"] == 1
    assert (row["prompt_tokens"], row["completion_tokens"]) == (10, 10)
    assert row["latency_p50_ms"] == 20.0 and 28 <= row["latency_p95_ms"] <= 30
    assert list(usage_frame([]).columns)[:3] == ["run_id", "step_id", "model"]


def test_simulated_timeout_hangs_for_the_timeout():
    sim = SimulatedProvider(SimulatorSettings(latency_ms=1, rate_timeout=1, timeout=0.2))
    t0 = time.perf_counter()
    with pytest.raises(ProviderError) as info:
        asyncio.run(sim.complete(_req(1), None))
    assert info.value.kind == "timeout" and time.perf_counter() - t0 >= 0.2
    assert "timed out after 0.2s" in str(info.value)


def test_workflow_validate_checks_llm_steps(tmp_path):
    import subprocess
    import sys

    bad = tmp_path / "llm.yaml"
    bad.write_text(
        "name: pipe\n"
        "steps:\n"
        "  - {id: a, task: t}\n"
        "  - {id: b, task: llm, depends_on: [a], config: {prompt: '{a.text} {x.y}'}}\n"
        "  - {id: c, task: llm, depends_on: [a], config: {prompt: hi, max_tokens: 0}}\n"
    )
    cmd = [sys.executable, "-m", "dagnats_nb", "workflow", "validate", str(bad)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines == [
        f"{bad}: workflow 'pipe' step 'b': field 'config.prompt': template field 'x.y': 'x' "
        "is neither 'input' nor a dependency of the step (it can use a, input)",
        f"{bad}: workflow 'pipe' step 'c': field 'config': 'max_tokens': Input should be "
        "greater than 0 (llm options: prompt, model, system, temperature, max_tokens, "
        "response_format, stream, provider)",
    ]

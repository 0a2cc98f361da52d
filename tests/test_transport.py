"""transport/: the one way into NATS, against a real nats-server.

Raw JetStream API requests (one function, one error, any JetStream domain); the nats-py
internals transport relies on (a failure names the installed nats-py version); pulling
tasks without waiting for a full batch; publishes retried until stored, resolved once.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import inspect
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import nats
import nats.errors
import pytest
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.errors import FetchTimeoutError

from dagnats_nb.observe import stats
from dagnats_nb.server.process import EmbeddedServer
from dagnats_nb.transport.api import (
    JetStreamAPIError,
    api_prefix,
    delete_stream,
    js_api,
    stream_exists,
)
from dagnats_nb.transport.jetstream import ClusterJetStream, jetstream
from dagnats_nb.transport.pull import fetch_available, take_buffered

DOMAIN = "tdom"


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[EmbeddedServer]:
    """One nats-server with JetStream in domain ``tdom`` for the module's tests."""
    data = Path(tmp_path_factory.mktemp("transport")) / "nats"
    with EmbeddedServer(data_dir=data, jetstream_domain=DOMAIN) as running:
        yield running


def run(coro_fn, url: str):
    """Run ``coro_fn(nc)`` on a fresh connection to ``url``."""

    async def main():
        nc = await nats.connect(url)
        try:
            return await coro_fn(nc)
        finally:
            await nc.close()

    return asyncio.run(main())


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


# -- raw JetStream API ----------------------------------------------------------------------


def test_js_api_reaches_the_domain_and_raises_one_error_type(server):
    name = unique("API")
    prefix = api_prefix(DOMAIN)
    assert prefix == f"$JS.{DOMAIN}.API" and api_prefix(None) == "$JS.API"

    async def scenario(nc):
        assert not await stream_exists(nc, name, prefix=prefix)
        cfg = {"name": name, "subjects": [f"{name}.>"], "storage": "memory"}
        created = await js_api(nc, f"STREAM.CREATE.{name}", cfg, prefix=prefix)
        assert created["config"]["name"] == name
        assert await stream_exists(nc, name, prefix=prefix)
        assert await stream_exists(nc, name)  # a local client reaches it without the domain
        with pytest.raises(JetStreamAPIError) as refused:  # an error answer
            await js_api(nc, f"STREAM.CREATE.{name}", {**cfg, "subjects": ["other.>"]})
        assert refused.value.reply is not None and refused.value.err_code
        assert f"STREAM.CREATE.{name}:" in str(refused.value)
        with pytest.raises(JetStreamAPIError, match=r"no JetStream API answers on \$JS\.nope"):
            await js_api(nc, "INFO", prefix=api_prefix("nope"))  # no answer at all
        await delete_stream(nc, name, prefix=prefix)
        await delete_stream(nc, name, prefix=prefix)  # gone already: not an error
        assert not await stream_exists(nc, name, prefix=prefix)

    run(scenario, server.client_url)


def test_stats_read_through_a_jetstream_domain(server):
    name = unique("STATS")
    prefix = api_prefix(DOMAIN)

    async def scenario(nc):
        js = nc.jetstream(domain=DOMAIN)
        await js.add_stream(name=name, subjects=[f"{name}.>"])
        await js.publish(f"{name}.a", b"x")
        rows = {r["stream"]: r for r in await stats.stream_rows(nc, api=prefix)}
        assert rows[name]["messages"] == 1
        assert await stats.consumer_rows(nc, [name], api=prefix) == []
        assert (await stats.api(nc, "INFO", api=prefix))["streams"] >= 1
        assert any(r["item"] == "streams" for r in await stats.account_rows(nc, api=prefix))
        await stats.kv_rows(nc, api=prefix)
        with pytest.raises(stats.JetStreamAPIError, match="no JetStream API answers"):
            await stats.stream_rows(nc, api=api_prefix("elsewhere"))
        await delete_stream(nc, name, prefix=prefix)

    run(scenario, server.client_url)


# -- nats-py internals: what transport relies on is still there ------------------------------

NATS_PY = importlib.metadata.version("nats-py")
# nats-py private names: only transport/ may use them (the package's layering rule).
PRIVATE = re.compile(
    r"\._(sub|nc|nms|deliver|pending_queue|pending_size|nuid|inbox_prefix|async_reply_prefix|"
    r"publish_async_\w+|init_async_reply|handle_async_reply|prefix|js|hdr_parser)\b"
)
OURS = {"self", "eng", "engine"}  # our own objects' attributes of those names (Engine._js)
PACKAGE = Path(__file__).resolve().parents[1] / "dagnats_nb"


def internals_changed(problems: list[str]) -> str:
    return (
        f"nats-py {NATS_PY} changed internals dagnats_nb/transport/pull.py relies on: "
        + "; ".join(problems)
        + ". Adapt transport/pull.py (its docstring says what each internal is for) or pin "
        "nats-py in pyproject.toml to the tested range."
    )


def test_the_nats_py_internals_transport_uses_are_as_expected(server):
    """PullSubscription's inbox subscription, its pending queue and byte count, the
    connection, the next-message subject and the inbox (transport/pull.py)."""
    name = unique("INTERNALS")

    async def scenario(nc):
        js = nc.jetstream()
        psub = await _pull_consumer(js, name)
        problems: list[str] = []
        sub = getattr(psub, "_sub", None)
        if not isinstance(sub, Subscription):
            problems.append(f"PullSubscription._sub is {type(sub).__name__}, not Subscription")
        if not isinstance(getattr(sub, "_pending_queue", None), asyncio.Queue):
            problems.append("Subscription._pending_queue is no longer an asyncio.Queue")
        if not isinstance(getattr(sub, "_pending_size", None), int):
            problems.append("Subscription._pending_size is no longer an int")
        if getattr(psub, "_nc", None) is not nc:
            problems.append("PullSubscription._nc is no longer the connection")
        nms = f"$JS.API.CONSUMER.MSG.NEXT.{name}.w"
        if getattr(psub, "_nms", None) != nms:
            problems.append(f"PullSubscription._nms is {getattr(psub, '_nms', None)!r}, not {nms}")
        if sub is not None and getattr(psub, "_deliver", None) != sub.subject:
            problems.append("PullSubscription._deliver is no longer its inbox's subject")
        if not problems:  # the queue is the one next_msg and pending_msgs read
            await js.publish(f"{name}.a", b"1")
            await nc.publish(psub._nms, b'{"batch": 1}', psub._deliver)
            await asyncio.wait_for(_until_pending(psub, 1), 5)
            size = sub._pending_size
            buffered = take_buffered(psub)
            if [m.data for m in buffered] != [b"1"] or sub._pending_size != size - 1:
                problems.append("a pulled message is not in Subscription._pending_queue")
        assert not problems, internals_changed(problems)
        await js.delete_stream(name)

    run(scenario, server.client_url)


def test_transport_overrides_match_nats_py_signatures():
    """ClusterJetStream overrides JetStreamContext's publish methods (public API): nats-py
    itself calls them (KV writes), so their parameters must stay nats-py's."""
    for method in ("publish", "publish_async"):
        ours = list(inspect.signature(getattr(ClusterJetStream, method)).parameters)
        theirs = list(inspect.signature(getattr(JetStreamContext, method)).parameters)
        assert ours == theirs, (
            f"nats-py {NATS_PY}: JetStreamContext.{method}{theirs} differs from "
            f"ClusterJetStream.{method}{ours}: update transport/jetstream.py"
        )
    ours = list(inspect.signature(ClusterJetStream.__init__).parameters)
    theirs = list(inspect.signature(JetStreamContext.__init__).parameters)
    assert ours == theirs, (
        f"nats-py {NATS_PY}: JetStreamContext.__init__{theirs} differs from "
        f"ClusterJetStream.__init__{ours}: update transport/jetstream.py"
    )


def private_uses(line: str) -> list[str]:
    """The nats-py private attributes ``line`` reads (not those of our own objects)."""
    out = []
    for m in PRIVATE.finditer(line):
        receiver = re.search(r"(\w+)$", line[: m.start()])
        if receiver is None or receiver[1] not in OURS:
            out.append(m.group(0))
    return out


def test_nats_py_internals_are_used_only_in_transport():
    found = [
        f"{path.relative_to(PACKAGE.parent)}:{n}: {line.strip()}"
        for path in sorted(PACKAGE.rglob("*.py"))
        if "transport" not in path.relative_to(PACKAGE).parts
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if private_uses(line)
    ]
    assert private_uses("sub = psub._sub._pending_queue") == ["._sub", "._pending_queue"]
    assert private_uses("self._sub = None; eng._js.publish()") == []
    assert not found, "nats-py internals outside dagnats_nb/transport/:\n" + "\n".join(found)


async def _pull_consumer(js, name: str):
    """A memory stream ``name`` (``name.>``) with a durable ``w``, and a pull subscription."""
    await js.add_stream(name=name, subjects=[f"{name}.>"], storage="memory")
    await js.add_consumer(name, durable_name="w", ack_policy="explicit")
    return await js.pull_subscribe_bind("w", stream=name)


async def _until_pending(psub, n: int) -> None:
    while psub.pending_msgs < n:
        await asyncio.sleep(0.01)


# -- pulling tasks ---------------------------------------------------------------------------


def test_fetch_available_hands_out_buffered_tasks_without_asking(server):
    name = unique("BUFFERED")

    async def scenario(nc):
        js = nc.jetstream()
        psub = await _pull_consumer(js, name)
        for i in range(3):
            await js.publish(f"{name}.t", str(i).encode())
        await nc.publish(psub._nms, b'{"batch": 3}', psub._deliver)  # an earlier request's
        await asyncio.wait_for(_until_pending(psub, 3), 5)
        await js.publish(f"{name}.t", b"3")  # on the server, not buffered
        started = time.monotonic()
        got = await fetch_available(psub, 2, timeout=5)
        assert [m.data for m in got] == [b"0", b"1"]
        got += await fetch_available(psub, 5, timeout=5)
        assert [m.data for m in got] == [b"0", b"1", b"2"]  # the buffered one, no request
        # far below the 5 s fetch timeout: nothing waited on a request to the server
        assert time.monotonic() - started < 2.5
        info = await js.consumer_info(name, "w")
        assert info.num_pending == 1 and info.num_ack_pending == 3
        await js.delete_stream(name)

    run(scenario, server.client_url)


def test_fetch_available_returns_what_there_is_without_waiting_for_a_full_batch(server):
    name = unique("PARTIAL")

    async def scenario(nc):
        js = nc.jetstream()
        psub = await _pull_consumer(js, name)
        for i in range(3):
            await js.publish(f"{name}.t", str(i).encode())
        started = time.monotonic()
        got = await fetch_available(psub, 64, timeout=5)
        assert [m.data for m in got] == [b"0", b"1", b"2"]
        assert time.monotonic() - started < 2.5  # far below the 5 s fetch timeout
        # Nothing there: it waits for the first task, then returns it alone at once.
        waiting = asyncio.ensure_future(fetch_available(psub, 64, timeout=5))
        await asyncio.sleep(0.3)
        assert not waiting.done()
        published = time.monotonic()
        await js.publish(f"{name}.t", b"3")
        assert [m.data for m in await waiting] == [b"3"]
        assert time.monotonic() - published < 2.5  # not the 5 s timeout
        await js.delete_stream(name)

    run(scenario, server.client_url)


def test_two_workers_on_one_consumer_never_stall(server):
    """Two pull loops on one consumer (two worker processes), 40 closed-loop producers: each
    task is taken within a fraction of a second. nats-py's fetch(n) gets "408 Requests
    Pending" here and then holds the tasks it has until n arrived or its timeout passed."""
    name = unique("TWO")
    producers, each = 40, 10

    async def scenario(nc):
        js = nc.jetstream()
        await js.add_stream(name=name, subjects=[f"{name}.>"], storage="memory")
        await js.add_consumer(name, durable_name="w", ack_policy="explicit", max_ack_pending=64)
        psubs = [await js.pull_subscribe_bind("w", stream=name) for _ in range(2)]
        taken: dict[bytes, asyncio.Future] = {}
        latency: list[float] = []

        async def worker(psub) -> None:
            while True:
                try:
                    msgs = await fetch_available(psub, 64, timeout=2)
                except (TimeoutError, nats.errors.TimeoutError, FetchTimeoutError):
                    continue
                for msg in msgs:
                    await msg.ack()
                    taken[msg.data].set_result(time.monotonic())

        async def producer(p: int) -> None:
            for i in range(each):
                key = f"{p}.{i}".encode()
                taken[key] = asyncio.get_running_loop().create_future()
                sent = time.monotonic()
                await js.publish(f"{name}.t", key)
                latency.append(await taken[key] - sent)

        workers = [asyncio.ensure_future(worker(p)) for p in psubs]
        try:
            await asyncio.wait_for(asyncio.gather(*(producer(p) for p in range(producers))), 60)
        finally:
            for w in workers:
                w.cancel()
        slowest = max(latency)
        assert len(latency) == producers * each and slowest < 1.0, f"a task waited {slowest:.2f} s"
        await js.delete_stream(name)

    run(scenario, server.client_url)


# -- publishes retried -----------------------------------------------------------------------


def test_a_retried_publish_resolves_once(server):
    """No stream yet: the publish is sent again (same id) until one stores it; its future
    resolves once, with that ack, and nothing is left in flight."""
    name = unique("RETRY")

    async def scenario(nc):
        js = jetstream(nc)
        js.ack_timeout = 0.3
        futures = [
            await js.publish_async(f"{name}.a", b"x", headers={"Nats-Msg-Id": "m1"}),
            await js.publish_async(f"{name}.b", b"y", headers={"Nats-Msg-Id": "m2"}),
        ]
        assert js.publish_async_pending() == 2
        await asyncio.sleep(1.2)
        assert js.resent >= 2 and not any(f.done() for f in futures)
        await nc.jetstream().add_stream(name=name, subjects=[f"{name}.>"], storage="memory")
        acks = await asyncio.wait_for(asyncio.gather(*futures), 5)
        assert sorted(a.seq for a in acks) == [1, 2] and not any(a.duplicate for a in acks)
        await asyncio.wait_for(js.publish_async_completed(), 1)
        assert js.publish_async_pending() == 0
        resent = js.resent
        await asyncio.sleep(0.8)  # acks of earlier sends may still come: nothing changes
        assert js.resent == resent
        assert (await nc.jetstream().stream_info(name)).state.messages == 2
        plain = await js.publish_async(f"{name}.c", b"z")  # no id: nats-py's own path
        assert (await asyncio.wait_for(plain, 5)).seq == 3
        await asyncio.wait_for(js.publish_async_completed(), 1)
        await nc.jetstream().delete_stream(name)

    run(scenario, server.client_url)


def test_kv_keys_lists_every_key_from_the_streams_subjects(tmp_path):
    """``kv_keys`` reads the bucket's subjects (not nats-py's watch, which may end before the
    first message and list none); a deleted key keeps its marker, and the readers built on
    it leave it out."""
    from dagnats_nb.transport.stores import DefinitionStore, json_values, kv_keys

    async def scenario(url: str) -> None:
        nc = await nats.connect(url)
        js = jetstream(nc)
        kv = await js.create_key_value(bucket="many")
        for i in range(300):
            await kv.put(f"k{i:03d}", b'{"n": %d}' % i)
        await kv.put("k000", b'{"n": -1}')  # a second revision: one key still
        await kv.delete("k001")
        keys = await kv_keys(js, "many")
        assert sorted(keys) == [f"k{i:03d}" for i in range(300)]  # k001: its marker
        values = await json_values(js, "many")
        assert len(values) == 299 and values["k000"] == {"n": -1} and "k001" not in values
        with pytest.raises(nats.js.errors.NotFoundError):
            await kv_keys(js, "nothing-here")
        defs = await js.create_key_value(bucket="workflow_defs")
        await defs.put("kept", b"{}")
        await defs.put("gone", b"{}")
        await defs.delete("gone")
        assert await DefinitionStore(js).names() == ["kept"]
        await nc.close()

    with EmbeddedServer(data_dir=tmp_path / "nats") as running:
        asyncio.run(scenario(running.client_url))

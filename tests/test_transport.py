"""transport/: the one way into NATS, against a real nats-server.

Raw JetStream API requests (one function, one error, any JetStream domain).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest

from dagnats_nb.observe import stats
from dagnats_nb.server.process import EmbeddedServer
from dagnats_nb.transport.api import (
    JetStreamAPIError,
    api_prefix,
    delete_stream,
    js_api,
    stream_exists,
)

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

    run(scenario, server.url)


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

    run(scenario, server.url)

"""A dagnats-nb engine attached to a running Go ``dagnats serve`` (``nats_url``): it adopts
the Go deployment's streams and buckets and changes none of them; the notebook's views read
them."""

from __future__ import annotations

import asyncio
import json

import nats
from goserve import go_serve  # noqa: F401  (the fixture)

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

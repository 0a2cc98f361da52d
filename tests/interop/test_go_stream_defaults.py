"""The streams and buckets our embedded engine creates are configured as the real Go
``dagnats serve`` creates its own, field by field, at the same store budget; the differences
left are deliberate and listed here with their reason."""

from __future__ import annotations

import asyncio
import json

import nats
import pytest
from goserve import go_serve  # noqa: F401  (fixture)

import dagnats_nb as dn
from dagnats_nb.transport.provision import OWNER_KEY
from dagnats_nb.wire import resources

BUDGET = 3 << 30  # not the default 10 GiB: the byte limits must be the same shares of it

# (stream, field): (Go's value, ours), and why (wire/resources.py says the same): what a run
# still needs is never dropped to make room, a full stream or store refuses the write.
DELIBERATE = {
    # a full task queue refuses new tasks ("storage is full") instead of dropping the oldest
    # pending ones: nothing of ours would send a dropped task again, its run would wait
    ("TASK_QUEUES", "discard"): ("old", "new"),
    # no byte limit on the history unless history_max_bytes sets one: we recover by replaying
    # it, and Go's 30 % drops the workflow.started of the oldest runs, waiting or running
    ("WORKFLOW_HISTORY", "max_bytes"): (int(BUDGET * resources.GO_HISTORY_SHARE), -1),
    # one run's events are read by batched direct gets, not a consumer made for each read
    # (a follower may lag, so only on one replica; reads of Go's stream use the consumer)
    ("WORKFLOW_HISTORY", "allow_direct"): (None, True),
}
# Go's streams nothing of ours uses, so we do not create them (our timers are rebuilt from
# the history). EVENTS, approval_tokens, signals, triggers are Go's and ours alike.
GO_ONLY = {"SLEEP_TIMERS", "TRIGGER_HISTORY"}


@pytest.fixture
def go_budget(monkeypatch) -> int:
    """``dagnats serve`` reads its store budget from DAGNATS_MAX_STORE_BYTES (requested
    before ``go_serve``, so the Go server starts with it)."""
    monkeypatch.setenv("DAGNATS_MAX_STORE_BYTES", str(BUDGET))
    return BUDGET


async def _configs(url: str) -> dict[str, dict]:
    """Every stream (KV buckets and object stores included) and its config, as sent."""
    nc = await nats.connect(url)
    try:
        out: dict[str, dict] = {}
        while True:
            body = json.dumps({"offset": len(out)}).encode()
            page = json.loads((await nc.request("$JS.API.STREAM.LIST", body, timeout=5)).data)
            streams = page.get("streams") or []
            out.update({s["config"]["name"]: s["config"] for s in streams})
            if not streams or len(out) >= page.get("total", 0):
                return out
    finally:
        await nc.close()


def _comparable(cfg: dict) -> dict:
    """A config with what is not configuration left out: the server's own metadata
    (``_nats.*``, versions and API levels) and our ownership mark; a false flag and an
    absent one are the same."""
    out = {k: (None if v is False else v) for k, v in cfg.items()}
    meta = {k: v for k, v in (cfg.get("metadata") or {}).items() if not k.startswith("_nats.")}
    meta.pop(OWNER_KEY, None)
    out["metadata"] = meta or None
    return out


def test_our_streams_and_buckets_have_the_go_engines_config(go_budget, go_serve, tmp_path):  # noqa: F811
    go = asyncio.run(_configs(go_serve.url))
    assert go["TASK_QUEUES"]["max_bytes"] == int(BUDGET * resources.TASK_QUEUE_SHARE)  # Go's
    opts = dict(max_store_bytes=BUDGET, llm_enabled=False)
    with dn.Engine.start(data_dir=tmp_path / "nb", **opts) as eng:
        ours = asyncio.run(_configs(eng.connect_url))
    # our payload store, step cache (cached steps), run snapshots and engine heartbeats: Go
    # has none of them
    mine = {"OBJ_payloads", "KV_task_cache", "DAGNATS_SNAPSHOTS", "KV_dagnats_engines"}
    assert set(ours) - set(go) == mine
    assert set(go) - set(ours) >= GO_ONLY
    differences = {}
    for name in sorted(set(ours) & set(go)):
        g, o = _comparable(go[name]), _comparable(ours[name])
        for key in sorted(set(g) | set(o)):
            if g.get(key) != o.get(key):
                differences[(name, key)] = (g.get(key), o.get(key))
    assert differences == DELIBERATE

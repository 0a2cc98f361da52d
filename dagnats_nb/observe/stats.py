"""Stream, consumer, KV and account statistics, read from the JetStream API.

Reads only. The raw JetStream API (``$JS.API.*``, through ``transport.api``) is used rather
than nats-py's typed wrappers because it carries every field (first/last timestamps, waiting
pulls, last activity) as the server sends it. Each collector returns plain rows (dicts) for a
DataFrame. ``api`` is the API prefix: ``$JS.<domain>.API`` for a JetStream domain
(``transport.api.api_prefix(settings.jetstream_domain)``).
"""

from __future__ import annotations

from typing import Any

from nats.aio.client import Client as NATS

from dagnats_nb.transport.api import DEFAULT_API, JetStreamAPIError, js_api
from dagnats_nb.wire import resources

__all__ = [
    "JetStreamAPIError",
    "account_rows",
    "api",
    "consumer_rows",
    "internal_consumer",
    "kv_rows",
    "stream_names",
    "stream_rows",
]

NS = 1e9


async def api(
    nc: NATS, subject: str, body: dict[str, Any] | None = None, *, api: str = DEFAULT_API
) -> dict[str, Any]:
    """One JetStream API request (``subject`` after the prefix, e.g. ``STREAM.INFO.X``);
    its JSON reply, or JetStreamAPIError."""
    return await js_api(nc, subject, body, prefix=api)


async def stream_names(nc: NATS, *, api: str = DEFAULT_API) -> list[str]:
    names: list[str] = []
    offset = 0
    while True:
        page = await js_api(nc, "STREAM.NAMES", {"offset": offset}, prefix=api)
        names += page.get("streams") or []
        offset += page.get("limit", 0)
        if offset >= page.get("total", 0) or not page.get("streams"):
            return sorted(names)


def _seconds(ns: int | None) -> float | None:
    return ns / NS if ns else None


async def stream_rows(
    nc: NATS, max_store_bytes: int | None = None, *, api: str = DEFAULT_API
) -> list[dict[str, Any]]:
    """Per stream: size, sequences and times, limits, retention, share of the store."""
    declared = {s.name for s in resources.STREAMS}
    rows = []
    for name in await stream_names(nc, api=api):
        info = await js_api(nc, f"STREAM.INFO.{name}", prefix=api)
        cfg, st = info["config"], info["state"]
        kind = (
            "engine"
            if name in declared
            else "kv"
            if name.startswith("KV_")
            else "object store"
            if name.startswith("OBJ_")
            else "other"
        )
        rows.append(
            {
                "stream": name,
                "kind": kind,
                "messages": st.get("messages", 0),
                "bytes": st.get("bytes", 0),
                "first_seq": st.get("first_seq", 0),
                "last_seq": st.get("last_seq", 0),
                "first_time": _time(st.get("first_ts")),
                "last_time": _time(st.get("last_ts")),
                "subjects": st.get("num_subjects", 0),
                "consumers": st.get("consumer_count", 0),
                "max_age_s": _seconds(cfg.get("max_age")),
                "max_bytes": _limit(cfg.get("max_bytes")),
                "max_msgs": _limit(cfg.get("max_msgs")),
                "retention": cfg.get("retention"),
                "storage": cfg.get("storage"),
                "dedup_window_s": _seconds(cfg.get("duplicate_window")),
                "store_share": (
                    st.get("bytes", 0) / max_store_bytes
                    if max_store_bytes and cfg.get("storage") == "file"
                    else None
                ),
            }
        )
    return rows


async def consumer_rows(
    nc: NATS, streams: list[str] | None = None, *, api: str = DEFAULT_API
) -> list[dict[str, Any]]:
    """Per consumer of ``streams`` (default: every stream): pending, ack pending,
    redelivered, waiting pulls... Durable consumers first (the task queues' ``workers-*``),
    then the ephemeral ones (a KV watcher's, an ordered reader's), each by stream and name."""
    rows = []
    for stream in streams if streams is not None else await stream_names(nc, api=api):
        offset = 0
        while True:
            page = await js_api(nc, f"CONSUMER.LIST.{stream}", {"offset": offset}, prefix=api)
            for c in page.get("consumers") or []:
                cfg = c.get("config", {})
                filters = cfg.get("filter_subjects") or [cfg.get("filter_subject") or ""]
                rows.append(
                    {
                        "stream": stream,
                        "consumer": c.get("name"),
                        "durable": bool(cfg.get("durable_name")),
                        "filter": ",".join(f for f in filters if f) or None,
                        "pending": c.get("num_pending", 0),
                        "ack_pending": c.get("num_ack_pending", 0),
                        "redelivered": c.get("num_redelivered", 0),
                        "waiting_pulls": c.get("num_waiting", 0),
                        "max_ack_pending": cfg.get("max_ack_pending"),
                        "ack_wait_s": _seconds(cfg.get("ack_wait")),
                        "last_delivered_seq": c.get("delivered", {}).get("stream_seq", 0),
                        "last_acked_seq": c.get("ack_floor", {}).get("stream_seq", 0),
                        "last_active": _time(
                            c.get("delivered", {}).get("last_active")
                            or c.get("ack_floor", {}).get("last_active")
                        ),
                    }
                )
            offset += page.get("limit", 0)
            if offset >= page.get("total", 0) or not page.get("consumers"):
                break
    rows.sort(key=lambda r: (not r["durable"], r["stream"], r["consumer"] or ""))
    return rows


INTERNAL_CONSUMERS = "ephemeral consumers (KV watchers, ordered readers)"


def internal_consumer(row: dict[str, Any]) -> bool:
    """An ephemeral consumer: a KV watcher's (``KV_workers``...) or an ordered reader's
    (the orchestrator's on WORKFLOW_HISTORY), which nats clients name at random and
    recreate at will; no worker pulls tasks from one."""
    return not row["durable"]


async def kv_rows(nc: NATS, *, api: str = DEFAULT_API) -> list[dict[str, Any]]:
    """Per KV bucket: keys (live values), bytes, history kept per key, TTL."""
    rows = []
    for name in await stream_names(nc, api=api):
        if not name.startswith("KV_"):
            continue
        info = await js_api(nc, f"STREAM.INFO.{name}", prefix=api)
        cfg, st = info["config"], info["state"]
        rows.append(
            {
                "bucket": name[3:],
                "keys": st.get("num_subjects", 0),
                "values": st.get("messages", 0),
                "bytes": st.get("bytes", 0),
                "history": cfg.get("max_msgs_per_subject"),
                "ttl_s": _seconds(cfg.get("max_age")),
                "storage": cfg.get("storage"),
            }
        )
    return rows


async def account_rows(
    nc: NATS, max_store_bytes: int | None = None, *, api: str = DEFAULT_API
) -> list[dict[str, Any]]:
    """JetStream account usage against its limits (and against ``max_store_bytes``)."""
    info = await js_api(nc, "INFO", prefix=api)
    limits = info.get("limits", {})
    rows = [
        _usage("file storage (bytes)", info.get("storage", 0), limits.get("max_storage")),
        _usage("memory storage (bytes)", info.get("memory", 0), limits.get("max_memory")),
        _usage("streams", info.get("streams", 0), limits.get("max_streams")),
        _usage("consumers", info.get("consumers", 0), limits.get("max_consumers")),
        _usage("reserved file storage (bytes)", info.get("reserved_storage", 0), None),
        _usage("API requests (errors)", info.get("api", {}).get("errors", 0), None),
        _usage("API requests (total)", info.get("api", {}).get("total", 0), None),
    ]
    if max_store_bytes:
        rows.insert(
            1, _usage("file storage vs max_store_bytes", info.get("storage", 0), max_store_bytes)
        )
    return rows


def _usage(item: str, used: float, limit: float | None) -> dict[str, Any]:
    limit = _limit(limit)
    return {"item": item, "used": used, "limit": limit, "share": used / limit if limit else None}


def _limit(value: Any) -> Any:
    return None if value is None or value in (-1, 0) else value


def _time(value: str | None):
    if not value or value.startswith("0001-01-01"):
        return None
    import pandas as pd

    return pd.Timestamp(value)

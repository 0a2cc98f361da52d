"""One record per LLM call on TELEMETRY (``telemetry.metrics.worker.llm``), and the usage
table read back from it.

A record is JSON: ``ts``, ``run_id``, ``step_id``, ``map_index``, ``attempt``, ``workflow``,
``provider``, ``model``, ``status`` (ok, rate_limited, unavailable, timeout, rejected,
bad_json, bad_template), ``http_status``, ``latency_ms``, ``prompt_tokens``,
``completion_tokens``, ``rate_wait_ms``, ``stream``, ``error``, ``worker_id``. A call whose
``attempt`` is above 1 is a retry.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import pandas as pd
from nats.js import JetStreamContext

from .. import protocol as p

log = logging.getLogger("dagnats_nb.llm")

SUBJECT = p.telemetry_metric_subject("worker", "llm")
USAGE_COLUMNS = [
    "run_id",
    "step_id",
    "model",
    "calls",
    "prompt_tokens",
    "completion_tokens",
    "latency_p50_ms",
    "latency_p95_ms",
    "errors",
    "retries",
]


class CallRecorder:
    """Publishes call records without waiting for their acks (a lost record is logged)."""

    def __init__(self, js: JetStreamContext) -> None:
        self.js = js
        self.published = 0

    async def record(self, record: dict[str, Any]) -> None:
        record.setdefault("ts", p.now_rfc3339())
        try:
            fut = await self.js.publish_async(SUBJECT, p.dumps(record))
        except Exception as exc:
            log.warning("cannot record an llm call on %s: %s", SUBJECT, exc)
            return
        self.published += 1
        fut.add_done_callback(_log_failure)


def _log_failure(fut: asyncio.Future) -> None:
    if not fut.cancelled() and fut.exception() is not None:
        log.warning("an llm call record was not stored: %s", fut.exception())


async def read_calls(js: JetStreamContext, run_id: str | None = None) -> list[dict[str, Any]]:
    """Every call record on TELEMETRY (of one run when ``run_id`` is given)."""
    info = await js.stream_info(p.TELEMETRY_STREAM, subjects_filter=SUBJECT)
    if not (info.state.subjects or {}).get(SUBJECT):
        return []
    sub = await js.subscribe(SUBJECT, stream=p.TELEMETRY_STREAM, ordered_consumer=True)
    out: list[dict[str, Any]] = []
    try:
        while True:
            msg = await sub.next_msg(timeout=5)
            try:
                rec = json.loads(msg.data)
            except ValueError:
                rec = None
            if isinstance(rec, dict) and (run_id is None or rec.get("run_id") == run_id):
                out.append(rec)
            if msg.metadata.num_pending == 0:
                break
    finally:
        await sub.unsubscribe()
    return out


def calls_frame(records: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per call."""
    return pd.DataFrame.from_records(records)


def usage_frame(records: list[dict[str, Any]]) -> pd.DataFrame:
    """Per run, step and model: calls, tokens, latency p50/p95 (ms), errors, retries."""
    if not records:
        return pd.DataFrame(columns=USAGE_COLUMNS)
    df = pd.DataFrame.from_records(records)
    for col, default in (("prompt_tokens", 0), ("completion_tokens", 0), ("attempt", 1)):
        if col not in df:
            df[col] = default
    df["error"] = df["status"] != "ok"
    df["retry"] = df["attempt"].fillna(1) > 1
    grouped = df.groupby(["run_id", "step_id", "model"], sort=False)
    out = grouped.agg(
        calls=("status", "size"),
        prompt_tokens=("prompt_tokens", "sum"),
        completion_tokens=("completion_tokens", "sum"),
        latency_p50_ms=("latency_ms", lambda s: round(float(s.quantile(0.5)), 1)),
        latency_p95_ms=("latency_ms", lambda s: round(float(s.quantile(0.95)), 1)),
        errors=("error", "sum"),
        retries=("retry", "sum"),
    ).reset_index()
    for col in ("prompt_tokens", "completion_tokens", "errors", "retries"):
        out[col] = out[col].astype(int)
    return out[USAGE_COLUMNS]

"""One record per LLM call on TELEMETRY (``telemetry.metrics.worker.llm``), and the usage
table read back from it.

A record is JSON: ``ts``, ``run_id``, ``step_id``, ``map_index``, ``attempt``, ``workflow``,
``provider``, ``model``, ``status`` (ok, rate_limited, unavailable, timeout, rejected,
bad_json, cancelled, error; ``cached``: no call, the step was served from the step cache,
with ``saved_prompt_tokens`` and ``saved_completion_tokens`` from its cached output's
usage), ``http_status``, ``latency_ms``, ``prompt_tokens``, ``completion_tokens``,
``rate_wait_ms``, ``stream``, ``error``, ``worker_id``. A call whose ``attempt`` is above 1
is a retry. Records go out in batches, one message
``{"calls": [record, ...]}`` at most every 50 ms or 200 calls (a message per call would add
a JetStream publish and its ack to every call on the engine thread); a reader also accepts
single records. Each message is also a metric record in Go's form (``name``, ``serviceName``,
``data.value``: its number of calls, ``timestamp``), so ``dagnats metrics show`` counts them.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import pandas as pd
from nats.js import JetStreamContext

from dagnats_nb.wire import protocol

log = logging.getLogger("dagnats_nb.llm")

SUBJECT = protocol.telemetry_metric_subject("worker", "llm")
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
    "saved_calls",
    "saved_tokens",
]


FLUSH_AFTER = 0.05
MAX_BATCH = 200


class CallRecorder:
    """Collects call records and publishes them in batches without waiting for the acks
    (a lost batch is logged). Lives on the engine loop."""

    def __init__(self, js: JetStreamContext) -> None:
        self.js = js
        self.recorded = 0
        self._batch: list[dict[str, Any]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._acks: set[asyncio.Future] = set()
        self._tasks: set[asyncio.Task] = set()

    def record(self, record: dict[str, Any]) -> None:
        record.setdefault("ts", protocol.now_rfc3339())
        self._batch.append(record)
        self.recorded += 1
        if len(self._batch) >= MAX_BATCH:
            self._flush_soon()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(FLUSH_AFTER, self._flush_soon)

    def _flush_soon(self) -> None:
        task = asyncio.get_running_loop().create_task(self.flush())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def flush(self, wait: bool = False) -> None:
        """Publish what is collected; with ``wait``, until every batch is stored."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch, self._batch = self._batch, []
        if batch:
            try:
                fut = await self.js.publish_async(SUBJECT, protocol.dumps(batch_message(batch)))
            except Exception as exc:
                log.warning("cannot record %d llm calls on %s: %s", len(batch), SUBJECT, exc)
            else:
                self._acks.add(fut)
                fut.add_done_callback(self._acked)
        if wait:
            if self._tasks:
                await asyncio.gather(*list(self._tasks), return_exceptions=True)
            if self._acks:
                await asyncio.gather(*list(self._acks), return_exceptions=True)

    def _acked(self, fut: asyncio.Future) -> None:
        self._acks.discard(fut)
        _log_failure(fut)


def batch_message(calls: list[dict[str, Any]]) -> dict[str, Any]:
    """One message of call records, also a metric record as Go's telemetry exporter writes
    one (``name``, ``serviceName``, ``data.value``: the calls in the batch, ``timestamp``),
    so ``dagnats metrics show --name=llm --service=worker`` reads it."""
    return {
        "name": "llm",
        "serviceName": "worker",
        "data": {"value": len(calls)},
        "timestamp": calls[-1].get("ts") or protocol.now_rfc3339(),
        "calls": calls,
    }


def _log_failure(fut: asyncio.Future) -> None:
    if not fut.cancelled() and fut.exception() is not None:
        log.warning("an llm call record was not stored: %s", fut.exception())


async def read_calls(js: JetStreamContext, run_id: str | None = None) -> list[dict[str, Any]]:
    """Every call record on TELEMETRY (of one run when ``run_id`` is given)."""
    info = await js.stream_info(protocol.TELEMETRY_STREAM, subjects_filter=SUBJECT)
    if not (info.state.subjects or {}).get(SUBJECT):
        return []
    sub = await js.subscribe(SUBJECT, stream=protocol.TELEMETRY_STREAM, ordered_consumer=True)
    out: list[dict[str, Any]] = []
    try:
        while True:
            msg = await sub.next_msg(timeout=5)
            try:
                data = json.loads(msg.data)
            except ValueError:
                data = None
            recs = data.get("calls", [data]) if isinstance(data, dict) else []
            for rec in recs:
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
    """Per run, step and model: calls, tokens, latency p50/p95 (ms), errors, retries, and
    what the step cache saved: ``saved_calls`` (steps served from it, no call) and
    ``saved_tokens`` (prompt and completion tokens their cached outputs had cost)."""
    if not records:
        return pd.DataFrame(columns=USAGE_COLUMNS)
    df = pd.DataFrame.from_records(records)
    for col, default in (
        ("prompt_tokens", 0),
        ("completion_tokens", 0),
        ("attempt", 1),
        ("saved_prompt_tokens", 0),
        ("saved_completion_tokens", 0),
    ):
        if col not in df:
            df[col] = default
    cached = df["status"] == "cached"
    df["call"] = ~cached
    df["error"] = ~df["status"].isin(["ok", "cached"])
    df["retry"] = (df["attempt"].fillna(1) > 1) & ~cached
    df["latency"] = df["latency_ms"].where(~cached)
    df["saved"] = df["saved_prompt_tokens"].fillna(0) + df["saved_completion_tokens"].fillna(0)
    grouped = df.groupby(["run_id", "step_id", "model"], sort=False)
    out = grouped.agg(
        calls=("call", "sum"),
        prompt_tokens=("prompt_tokens", "sum"),
        completion_tokens=("completion_tokens", "sum"),
        latency_p50_ms=("latency", lambda s: round(float(s.quantile(0.5)), 1)),
        latency_p95_ms=("latency", lambda s: round(float(s.quantile(0.95)), 1)),
        errors=("error", "sum"),
        retries=("retry", "sum"),
        saved_calls=("status", lambda s: int((s == "cached").sum())),
        saved_tokens=("saved", "sum"),
    ).reset_index()
    for col in (
        "calls",
        "prompt_tokens",
        "completion_tokens",
        "errors",
        "retries",
        "saved_calls",
        "saved_tokens",
    ):
        out[col] = out[col].astype(int)
    return out[USAGE_COLUMNS]

"""The NATS monitoring endpoints (``/varz``, ``/jsz``, ``/connz``, ``/subsz``) as DataFrames.

An endpoint's list of items (``connz``'s connections, ``jsz``'s account details) becomes one
row per item; everything else becomes a long ``key``/``value`` table of flattened keys
(``jetstream.config.max_storage``).
"""

from __future__ import annotations

from typing import Any

import httpx
import pandas as pd

from ..errors import DagnatsError

ENDPOINTS = ("varz", "jsz", "connz", "subsz")
ROWS = {"connz": "connections", "jsz": "account_details"}


class MonitoringOff(DagnatsError):
    """The NATS monitoring port is not enabled."""


async def fetch(base_url: str | None, endpoint: str, params: dict[str, Any]) -> dict[str, Any]:
    if endpoint not in ENDPOINTS:
        raise DagnatsError(
            f"unknown monitoring endpoint {endpoint!r}: use one of {', '.join(ENDPOINTS)}"
        )
    if not base_url:
        raise MonitoringOff(
            "NATS monitoring is off: start the engine with monitor_port=0 (a free port) or a "
            "port such as 8222 (`dagnats serve --set monitor_port=0`)"
        )
    async with httpx.AsyncClient(timeout=5) as client:
        resp = await client.get(f"{base_url}/{endpoint}", params=params)
        resp.raise_for_status()
        return resp.json()


def flatten(endpoint: str, data: dict[str, Any]) -> pd.DataFrame:
    """One row per listed item, or a long key/value table."""
    items_key = ROWS.get(endpoint)
    if items_key and data.get(items_key):
        return pd.json_normalize(data[items_key], sep=".")
    flat = pd.json_normalize(data, sep=".").iloc[0].to_dict()
    rows = [{"key": k, "value": v} for k, v in flat.items() if k != items_key]
    return pd.DataFrame(rows, columns=["key", "value"])

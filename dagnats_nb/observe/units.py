"""Numbers as a person reads them: bytes in binary units, durations in the unit that fits,
shares as percentages (pure: text in, text out; tables keep their numbers, only what is
shown goes through here).

``human_bytes(8_170_825_164)`` is ``"7.6 GiB"``, ``human_duration(604_800)`` is ``"7 d"``,
``human_share(0.0312)`` is ``"3.1 %"``. A missing value (None, NaN, NaT) is ``""``.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

__all__ = [
    "human_bytes",
    "human_cost",
    "human_count",
    "human_duration",
    "human_number",
    "human_ratio",
    "human_share",
    "human_time",
    "missing",
]

BYTE_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")
# (seconds in the unit, its name): a value is shown in the largest unit it has twice
DURATION_UNITS = ((86400.0, "d"), (3600.0, "h"), (60.0, "min"), (1.0, "s"))


def missing(value: Any) -> bool:
    """None, NaN, NaT or pandas' NA: nothing to show."""
    if value is None:
        return True
    try:
        return bool(value != value)  # NaN and NaT are not equal to themselves
    except (TypeError, ValueError):  # pandas.NA's comparison raises on bool()
        return True


def _short(value: float) -> str:
    """One decimal below 10, whole above (``2.5``, ``25``); ``2`` rather than ``2.0``."""
    if abs(value) < 10 and abs(value - round(value)) >= 0.05:
        return f"{value:.1f}"
    return f"{value:,.0f}"


def human_bytes(value: Any) -> str:
    """``812 B``, ``5.6 KiB``, ``7.6 GiB``: binary units, three significant figures."""
    if missing(value):
        return ""
    n = float(value)
    for unit in BYTE_UNITS:
        if abs(n) < 1024 or unit == BYTE_UNITS[-1]:
            if unit == "B":
                return f"{n:,.0f} B"
            return f"{n:.1f} {unit}" if abs(n) < 100 else f"{n:,.0f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def human_duration(seconds: Any) -> str:
    """``250 ms``, ``2.0 s``, ``90 s``, ``3 min``, ``25 h``, ``7 d``."""
    if missing(seconds):
        return ""
    s = float(seconds)
    if s == 0:
        return "0 s"
    if abs(s) < 1:
        return f"{s * 1000:.0f} ms"
    if abs(s) < 10:
        return f"{s:.1f} s"
    for size, unit in DURATION_UNITS:
        if abs(s) >= 2 * size:
            return f"{_short(s / size)} {unit}"
    return f"{s:.0f} s"


def human_cost(value: Any) -> str:
    """A price, three significant figures and at least two decimals: ``0.000420``,
    ``0.0315``, ``1.25``, ``1,234.50`` (a cost of LLM calls is often a fraction of a cent)."""
    if missing(value):
        return ""
    v = float(value)
    if v == 0:
        return "0"
    decimals = min(12, max(2, 2 - math.floor(math.log10(abs(v)))))
    return f"{v:,.{decimals}f}"


def human_share(value: Any) -> str:
    """A fraction as a percentage: ``3.1 %``; a share too small for one decimal is
    ``< 0.1 %`` (not a misleading ``0.0 %``)."""
    if missing(value):
        return ""
    v = float(value)
    if 0 < v < 0.0005:
        return "< 0.1 %"
    return f"{v * 100:.1f} %"


def human_count(value: Any) -> str:
    """A whole number with thousands separators: ``12,345`` (``12,345.5`` stays a
    number: ``12,346``)."""
    if missing(value):
        return ""
    return f"{float(value):,.0f}"


def human_number(value: Any) -> str:
    """A measure: whole numbers as counts, others with two decimals (``0.25``, ``17.5``)."""
    if missing(value):
        return ""
    v = float(value)
    if v == round(v):
        return human_count(v)
    return f"{v:,.2f}" if abs(v) < 100 else f"{v:,.0f}"


def human_ratio(value: Any) -> str:
    """A ratio of two figures: ``0.63 x``."""
    if missing(value) or math.isinf(float(value)):
        return ""
    return f"{float(value):.2f} x"


def human_time(value: Any) -> str:
    """A moment to the second, in UTC: ``2026-11-30 22:24:30Z`` (not pandas'
    ``2026-11-30 22:24:30.008619125+00:00``)."""
    if missing(value):
        return ""
    if isinstance(value, datetime):
        if value.tzinfo is not None:
            value = value.astimezone(UTC)
        return value.strftime("%Y-%m-%d %H:%M:%SZ")
    return str(value)

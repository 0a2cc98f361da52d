"""Durations in workflow files: read as Go duration strings ("1h30m", "500ms") or integer
nanoseconds, written as integer nanoseconds (Go's `time.Duration` JSON form, the only one
the Go engine reads).

Python's `timedelta` has microsecond resolution, so the timedelta value of a duration is
rounded to the nearest microsecond (half up): "1500ns" compares equal to 2 µs, "10ns" to 0.
What `parse_duration` returns for a string or a number is a `GoDuration`, a timedelta that
also keeps the exact nanoseconds (a fraction of a nanosecond is dropped, as Go does), so
`to_nanoseconds` writes back exactly the number that was read.

`format_duration` writes a single number and unit ("90m", "1500ms", "0s") for people (and
the published workflow schema's pattern `^[0-9]+(ns|us|µs|ms|s|m|h)+$`); files are not
written with it.
"""

from __future__ import annotations

import json
import math
import re
from datetime import timedelta
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from typing import Any

from ..errors import WorkflowError

_UNIT_NS = {
    "ns": 1,
    "us": 1_000,
    "µs": 1_000,  # U+00B5 micro sign
    "μs": 1_000,  # U+03BC Greek mu, which Go also accepts
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60_000_000_000,
    "h": 3_600_000_000_000,
}
_COMPONENT = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_MAX_NS = 2**63 - 1  # Go's time.Duration is an int64 of nanoseconds
_MAX_TD = timedelta(microseconds=_MAX_NS // 1000)
_HINT = 'use a Go duration such as "30s" or integer nanoseconds'
_FORMAT_UNITS = (("h", 3_600_000_000), ("m", 60_000_000), ("s", 1_000_000), ("ms", 1_000))


class GoDuration(timedelta):
    """A timedelta read from a Go duration, with its exact nanoseconds in `ns` (the
    timedelta value is `ns` rounded to the microsecond, equality is the timedelta's; it is
    false only when `ns` is 0)."""

    __slots__ = ("ns",)
    ns: int

    def __new__(cls, ns: int) -> GoDuration:
        if not 0 <= ns <= _MAX_NS:
            raise ValueError(f"{ns} ns is outside 0..{_MAX_NS}")
        self = super().__new__(cls, microseconds=(ns + 500) // 1000)
        self.ns = ns
        return self

    def __reduce__(self) -> tuple[Any, ...]:
        return (GoDuration, (self.ns,))

    def __bool__(self) -> bool:
        return self.ns != 0  # 1 ns is a duration, though its timedelta value is 0


def to_nanoseconds(td: timedelta) -> int:
    """`td` as Go's `time.Duration` JSON value: integer nanoseconds (exact for a
    GoDuration, microseconds × 1000 for any other timedelta)."""
    if isinstance(td, GoDuration):
        return td.ns
    if not isinstance(td, timedelta):
        raise TypeError(f"to_nanoseconds needs a timedelta, got {type(td).__name__}")
    return ((td.days * 86_400 + td.seconds) * 1_000_000 + td.microseconds) * 1000


def parse_duration(value: Any, *, where: str = "") -> timedelta:
    """Return `value` (Go duration string, integer nanoseconds or timedelta) as a timedelta
    (a GoDuration unless `value` already is a timedelta).

    Raises WorkflowError, prefixed with `where`, for negative, empty, malformed or boolean
    values.
    """
    try:
        return _parse(value)
    except ValueError as exc:
        message = f"{where}: {exc}" if where else str(exc)
        error = WorkflowError(message)
        error.problems = [message]
        raise error from None


def format_duration(td: timedelta) -> str:
    """Write a non-negative timedelta as a Go duration string of one number and one unit."""
    if not isinstance(td, timedelta):
        raise TypeError(f"format_duration needs a timedelta, got {type(td).__name__}")
    micros = (td.days * 86_400 + td.seconds) * 1_000_000 + td.microseconds
    if micros < 0:
        raise ValueError(f"cannot write negative duration {td} as a Go duration")
    if micros == 0:
        return "0s"
    for unit, size in _FORMAT_UNITS:
        if micros % size == 0:
            return f"{micros // size}{unit}"
    return f"{micros}us"


def _parse(value: Any) -> timedelta:
    if isinstance(value, bool):
        raise ValueError(f"{_show(value)} is not a duration; {_HINT}")
    if isinstance(value, timedelta):
        if value < timedelta(0):
            raise ValueError(f"{value} is negative; durations must be >= 0")
        if value > _MAX_TD:
            raise ValueError(f"{value} is too large; the longest duration is about 292 years")
        return value
    if isinstance(value, int):
        return _from_ns(Fraction(value), value)
    if isinstance(value, float):
        if not math.isfinite(value) or not value.is_integer():
            raise ValueError(f"{_show(value)} is not a whole number of nanoseconds; {_HINT}")
        return _from_ns(Fraction(int(value)), value)
    if isinstance(value, str):
        return _from_ns(_parse_go(value), value)
    raise ValueError(f"{_show(value)} is not a duration; {_HINT}")


def _parse_go(text: str) -> Fraction:
    s = text.strip()
    negative = s.startswith("-")
    if s and s[0] in "+-":
        s = s[1:]
    if s == "0":
        return Fraction(0)
    if not s:
        raise ValueError(f"{_show(text)} is not a duration; {_HINT}")
    total = Fraction(0)
    pos = 0
    while pos < len(s):
        match = _COMPONENT.match(s, pos)
        if match is None:
            raise ValueError(f"{_show(text)} is not a duration; {_HINT}")
        try:
            number = Fraction(Decimal(match.group(1)))
        except InvalidOperation:
            raise ValueError(f"{_show(text)} is not a duration; {_HINT}") from None
        total += number * _UNIT_NS[match.group(2)]
        pos = match.end()
    if negative and total:
        raise ValueError(f"{_show(text)} is negative; durations must be >= 0")
    return total


def _from_ns(ns: Fraction, original: Any) -> timedelta:
    if ns < 0:
        raise ValueError(f"{_show(original)} is negative; durations must be >= 0")
    if ns > _MAX_NS:
        raise ValueError(f"{_show(original)} is too large; the longest duration is about 292 years")
    return GoDuration(math.floor(ns))


def _show(value: Any) -> str:
    try:
        return json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        return repr(value)

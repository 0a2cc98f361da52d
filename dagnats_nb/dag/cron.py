"""5-field cron expressions as the Go engine reads them (``internal/cronexpr``), and when
they fire in a time zone. Pure: no clock (times are passed in) and no I/O but the time-zone
database ``zoneinfo`` reads.

Grammar, exactly Go's: five fields separated by blanks, ``minute hour day-of-month month
day-of-week`` (0-59, 0-23, 1-31, 1-12, 0-6 with Sunday 0); each field a comma list of
``*``, ``*/N``, ``N-M`` or ``N``. No names (MON, JAN), no ``N-M/S``, no ``7`` for Sunday, no
seconds field: Go refuses them, so a workflow we accept runs on Go too. When both day fields
are restricted a day matches if *either* does (POSIX, as Go).

Daylight saving time: a local minute that does not exist (the clock jumps forward) does not
fire, as in Go. A local minute that happens twice (the clock falls back) fires once, at its
first occurrence, when the hour field is restricted ("30 1 * * *" runs once that night);
with ``*`` (or ``*/N``) as hour field both passes fire, so "every 15 minutes" keeps its
rhythm through the repeated hour (Vixie cron's rule; Go fires both passes always).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

MAX_LENGTH = 256  # Go's ParseCron bound
_FIELDS = (
    ("minute", 0, 59),
    ("hour", 0, 23),
    ("day-of-month", 1, 31),
    ("month", 1, 12),
    ("day-of-week", 0, 6),
)
_INT = re.compile(r"[+-]?[0-9]+")  # what Go's strconv.Atoi reads
_MINUTE = timedelta(minutes=1)
_HORIZON = timedelta(days=12 * 366)  # 29 February comes back within 8 years
_LOOKAHEAD = 3 * 3600  # seconds: more than any clock change (2 h at most)


def _atoi(text: str) -> int | None:
    return int(text) if _INT.fullmatch(text) else None


def _field(text: str, lo: int, hi: int) -> frozenset[int]:
    """One field's values (Go's parseField); ValueError saying what is wrong."""
    out: set[int] = set()
    for part in text.split(","):
        if not part:
            raise ValueError(f"empty item in {text!r}")
        if part == "*":
            out.update(range(lo, hi + 1))
        elif part.startswith("*/"):
            step = _atoi(part[2:])
            if step is None or step <= 0:
                raise ValueError(f"invalid step {part!r} (write */N with N > 0)")
            out.update(range(lo, hi + 1, step))
        elif "-" in part:
            first, _, last = part.partition("-")
            start, end = _atoi(first), _atoi(last)
            if start is None or end is None:
                raise ValueError(f"invalid range {part!r} (write N-M)")
            if start < lo or end > hi or start > end:
                raise ValueError(f"range {part!r} out of bounds [{lo}, {hi}]")
            out.update(range(start, end + 1))
        else:
            value = _atoi(part)
            if value is None:
                raise ValueError(f"invalid value {part!r} (numbers only, no names)")
            if not lo <= value <= hi:
                raise ValueError(f"value {value} out of range [{lo}, {hi}]")
            out.add(value)
    return frozenset(out)


def parse_cron(expr: str) -> Cron:
    """Parse a 5-field cron expression; ValueError naming the bad field."""
    if not isinstance(expr, str):
        raise ValueError(f"cron expression must be a string, not {type(expr).__name__}")
    if len(expr) > MAX_LENGTH:
        raise ValueError(f"cron expression is longer than {MAX_LENGTH} characters")
    parts = expr.split()
    if len(parts) != 5:
        raise ValueError(
            f"cron {expr!r}: dagnats cron expressions use 5 fields (minute hour day-of-month "
            f"month day-of-week); got {len(parts)}. Drop any leading seconds field"
        )
    values = []
    for text, (name, lo, hi) in zip(parts, _FIELDS, strict=True):
        try:
            values.append(_field(text, lo, hi))
        except ValueError as exc:
            raise ValueError(f"cron {expr!r}: {name} field: {exc}") from None
    return Cron(
        expr,
        *values,
        hours_wild=parts[1].startswith("*"),
        days_restricted=parts[2] != "*",
        weekdays_restricted=parts[4] != "*",
    )


@lru_cache(maxsize=256)
def zone(tz: str | None) -> tzinfo:
    """The time zone named ``tz`` (IANA name; empty or None is UTC, as Go's); ValueError
    naming it when there is no such zone."""
    if not tz or tz == "UTC":
        return UTC
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        raise ValueError(
            f"unknown timezone {tz!r}: use an IANA name such as 'Europe/Paris' or 'UTC'"
        ) from None


@dataclass(frozen=True, slots=True)
class Cron:
    """A parsed cron expression (see the module docstring for its meaning)."""

    expr: str
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # Sunday 0
    hours_wild: bool = True
    days_restricted: bool = False
    weekdays_restricted: bool = False

    def matches(self, local: datetime) -> bool:
        """Whether the wall-clock minute ``local`` is in the schedule (no DST rule)."""
        return (
            local.minute in self.minutes
            and local.hour in self.hours
            and local.month in self.months
            and self._day(local)
        )

    def _day(self, d: datetime) -> bool:
        dom = d.day in self.days
        dow = (d.weekday() + 1) % 7 in self.weekdays
        if self.days_restricted and self.weekdays_restricted:
            return dom or dow
        return dom and dow

    def _next_local(self, d: datetime, end: datetime) -> datetime | None:
        """The first wall-clock minute >= ``d`` (naive) in the schedule, or None past
        ``end``: jumps month, day, hour and minute at a time."""
        while d <= end:
            if d.month not in self.months:
                year, month = (d.year + 1, 1) if d.month == 12 else (d.year, d.month + 1)
                d = datetime(year, month, 1)
            elif not self._day(d):
                d = datetime(d.year, d.month, d.day) + timedelta(days=1)
            elif d.hour not in self.hours:
                later = [h for h in self.hours if h > d.hour]
                day = datetime(d.year, d.month, d.day)
                d = day.replace(hour=min(later)) if later else day + timedelta(days=1)
            elif d.minute not in self.minutes:
                later = [m for m in self.minutes if m > d.minute]
                hour = d.replace(minute=0)
                d = hour.replace(minute=min(later)) if later else hour + timedelta(hours=1)
            else:
                return d
        return None

    def _instants(self, local: datetime, tz: tzinfo) -> list[float]:
        """When the wall-clock minute ``local`` happens: none in a gap, two in a fold (the
        first only when the hour field is restricted), else one."""
        seen = set()
        for fold in (0, 1):
            t = local.replace(tzinfo=tz, fold=fold).timestamp()
            if datetime.fromtimestamp(t, tz).replace(tzinfo=None) == local:
                seen.add(t)
        out = sorted(seen)
        return out if self.hours_wild else out[:1]

    def next_after(self, t: float, tz: str = "UTC") -> float:
        """POSIX seconds of the first occurrence strictly after ``t`` in zone ``tz``
        (``math.inf`` when there is none within twelve years, e.g. "0 0 30 2 *")."""
        z = zone(tz)
        here = datetime.fromtimestamp(t, z)
        # A clock falling back within the next hours repeats wall-clock minutes already
        # passed: look back by that much, and on as far past the first find.
        drop = here.utcoffset() - datetime.fromtimestamp(t + _LOOKAHEAD, z).utcoffset()
        back = max(drop, timedelta(0))
        local = here.replace(tzinfo=None, second=0, microsecond=0) - back
        end = local + _HORIZON
        best, best_local = math.inf, None
        while True:
            local = self._next_local(local, end)
            if local is None or (best_local is not None and local > best_local + back):
                return best
            later = [x for x in self._instants(local, z) if x > t]
            if later and min(later) < best:
                best, best_local = min(later), local
            local += _MINUTE

    def between(self, a: float, b: float, tz: str = "UTC", limit: int | None = None) -> list[float]:
        """The occurrences in ``(a, b]``, oldest first (the first ``limit`` only, if given)."""
        out: list[float] = []
        t = self.next_after(a, tz)
        while t <= b and (limit is None or len(out) < limit):
            out.append(t)
            t = self.next_after(t, tz)
        return out

    def __str__(self) -> str:
        return self.expr


def trigger_spec_problems(kind: str, spec: dict) -> list[tuple[str, str]]:
    """(key, why) for what is wrong with a cron or subject trigger's settings: a cron
    expression or time zone we cannot read, an empty subject."""
    out: list[tuple[str, str]] = []
    if kind == "cron" and "expression" in spec:
        try:
            parse_cron(spec["expression"])
        except ValueError as exc:
            out.append(("expression", str(exc)))
        try:
            zone(spec.get("timezone"))
        except ValueError as exc:
            out.append(("timezone", str(exc)))
        if not isinstance(spec.get("backfill", False), bool):
            out.append(("backfill", "must be true or false"))
    elif kind == "subject" and "subject" in spec:
        subject = spec["subject"]
        if not isinstance(subject, str) or not subject or any(c.isspace() for c in subject):
            out.append(("subject", "must be a NATS subject such as 'orders.created'"))
    return out

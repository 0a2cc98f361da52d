"""dag.cron: Go's 5-field grammar, and when an expression fires in a time zone (DST too)."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from dagnats_nb.dag.cron import parse_cron, zone

NY = "America/New_York"


def at(text: str, tz: str = "UTC") -> float:
    """POSIX seconds of a wall-clock time in ``tz`` (first occurrence when repeated)."""
    return datetime.fromisoformat(text).replace(tzinfo=zone(tz)).timestamp()


def local(t: float, tz: str = "UTC") -> str:
    return datetime.fromtimestamp(t, zone(tz)).isoformat()


@pytest.mark.parametrize(
    ("expr", "field", "values"),
    [
        ("*/15 * * * *", "minutes", {0, 15, 30, 45}),
        ("0 */7 * * *", "hours", {0, 7, 14, 21}),
        ("0 0 1-3,5,+9 * *", "days", {1, 2, 3, 5, 9}),
        ("0 0 * 12 0", "months", {12}),
        ("0 0 * * 0-6", "weekdays", set(range(7))),
        ("05 0 * * *", "minutes", {5}),
        ("*/100 * * * *", "minutes", {0}),
    ],
)
def test_fields_read_as_go_reads_them(expr, field, values):
    assert set(getattr(parse_cron(expr), field)) == values


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        ("* * * *", "use 5 fields (minute hour day-of-month month day-of-week); got 4"),
        ("0 * * * * *", "got 6. Drop any leading seconds field"),
        ("60 * * * *", "minute field: value 60 out of range [0, 59]"),
        ("* 24 * * *", "hour field: value 24 out of range [0, 23]"),
        ("* * 0 * *", "day-of-month field: value 0 out of range [1, 31]"),
        ("* * * 13 *", "month field: value 13 out of range [1, 12]"),
        ("* * * * 7", "day-of-week field: value 7 out of range [0, 6]"),
        ("* * * JAN *", "month field: invalid value 'JAN' (numbers only, no names)"),
        ("* * * * MON", "day-of-week field: invalid value 'MON'"),
        ("1-10/2 * * * *", "minute field: invalid range '1-10/2'"),
        ("5/10 * * * *", "minute field: invalid value '5/10'"),
        ("*/0 * * * *", "minute field: invalid step '*/0'"),
        ("*/x * * * *", "minute field: invalid step '*/x'"),
        ("5-1 * * * *", "minute field: range '5-1' out of bounds [0, 59]"),
        ("-1 * * * *", "minute field: invalid range '-1'"),
        ("1,,2 * * * *", "minute field: empty item in '1,,2'"),
        ("? * * * *", "minute field: invalid value '?'"),
        ("x" * 257, "longer than 256 characters"),
    ],
)
def test_what_go_refuses_is_refused_naming_the_field(expr, message):
    with pytest.raises(ValueError) as err:
        parse_cron(expr)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_timezones():
    assert zone("") is UTC and zone(None) is UTC and zone("UTC") is UTC
    assert zone("Europe/Paris") == ZoneInfo("Europe/Paris")
    with pytest.raises(ValueError, match=r"unknown timezone 'Mars/Olympus': use an IANA name"):
        parse_cron("* * * * *").next_after(0, "Mars/Olympus")
    with pytest.raises(ValueError, match="unknown timezone"):
        zone("../../etc/passwd")


def test_next_after_is_strictly_after_at_minute_precision():
    every = parse_cron("* * * * *")
    t = at("2026-01-05T10:00:00")
    assert every.next_after(t) == t + 60
    assert every.next_after(t - 0.001) == t
    assert every.next_after(t + 59.9) == t + 60
    nine = parse_cron("0 9 * * *")
    assert local(nine.next_after(at("2026-01-05T09:00:00"))) == "2026-01-06T09:00:00+00:00"
    paris = nine.next_after(at("2026-01-05T12:00:00"), "Europe/Paris")
    assert local(paris, "Europe/Paris") == "2026-01-06T09:00:00+01:00"
    assert paris == at("2026-01-06T08:00:00")


def test_both_day_fields_restricted_means_either_as_posix():
    either = parse_cron("0 9 1 * 1")  # the 1st of the month, or any Monday
    start = at("2026-06-01T00:00:00")  # a Monday, the 1st
    days = [local(t)[:10] for t in either.between(start, start + 30 * 86400)]
    assert days == ["2026-06-01", "2026-06-08", "2026-06-15", "2026-06-22", "2026-06-29"]
    days = [local(t)[:10] for t in either.between(at("2026-07-01"), at("2026-07-14"))]
    assert days == ["2026-07-01", "2026-07-06", "2026-07-13"]  # Wed 1st, then Mondays
    only_day = parse_cron("0 9 1-7 * *")
    assert len(only_day.between(at("2026-07-01"), at("2026-08-01"))) == 7
    only_monday = parse_cron("0 9 * * 1")
    assert len(only_monday.between(at("2026-07-01"), at("2026-08-01"))) == 4


def test_rare_and_impossible_dates():
    leap = parse_cron("0 0 29 2 *")
    assert local(leap.next_after(at("2026-03-01"))) == "2028-02-29T00:00:00+00:00"
    assert local(leap.next_after(at("2096-03-01"))) == "2104-02-29T00:00:00+00:00"  # 2100 is not
    assert parse_cron("0 0 30 2 *").next_after(at("2026-01-01")) == math.inf  # Go accepts it
    assert parse_cron("0 0 31 4 *").between(0, 4e9) == []


def test_between_is_open_closed_and_limited():
    every = parse_cron("*/10 * * * *")
    a = at("2026-01-05T10:00:00")
    assert every.between(a, a + 1800) == [a + 600, a + 1200, a + 1800]
    assert every.between(a, a + 1800, limit=2) == [a + 600, a + 1200]
    assert every.between(a, a) == []


def test_a_skipped_local_minute_does_not_fire():
    """New York, 9 March 2025: 02:00 EST jumps to 03:00 EDT; 02:30 does not exist."""
    cron = parse_cron("30 2 * * *")
    span = (at("2025-03-08T00:00", NY), at("2025-03-11", NY), NY)
    fires = [local(t, NY) for t in cron.between(*span)]
    assert fires == ["2025-03-08T02:30:00-05:00", "2025-03-10T02:30:00-04:00"]
    hourly = parse_cron("30 * * * *")
    day = [
        local(t, NY)
        for t in hourly.between(at("2025-03-09T00:00", NY), at("2025-03-09T04:00", NY), NY)
    ]
    assert day == [
        "2025-03-09T00:30:00-05:00",
        "2025-03-09T01:30:00-05:00",
        "2025-03-09T03:30:00-04:00",
    ]


def test_a_repeated_local_minute_fires_once_unless_the_hour_is_a_wildcard():
    """New York, 2 November 2025: 02:00 EDT falls back to 01:00 EST; 01:xx happens twice."""
    daily = parse_cron("30 1 * * *")
    fires = daily.between(at("2025-11-01T12:00", NY), at("2025-11-03T12:00", NY), NY)
    assert [local(t, NY) for t in fires] == [
        "2025-11-02T01:30:00-04:00",
        "2025-11-03T01:30:00-05:00",
    ]
    # fired at the first 01:30: the second one (an hour later) is not due
    first = fires[0]
    assert daily.next_after(first, NY) == fires[1]
    assert daily.next_after(first + 1800, NY) == fires[1]  # asked during the repeated hour
    rhythm = parse_cron("*/30 * * * *")
    fires = rhythm.between(at("2025-11-02T00:15", NY), at("2025-11-02T02:15", NY), NY)
    assert [local(t, NY) for t in fires] == [
        "2025-11-02T00:30:00-04:00",
        "2025-11-02T01:00:00-04:00",
        "2025-11-02T01:30:00-04:00",
        "2025-11-02T01:00:00-05:00",
        "2025-11-02T01:30:00-05:00",
        "2025-11-02T02:00:00-05:00",
    ]
    assert all(b - a == 1800 for a, b in zip(fires, fires[1:], strict=False))


# -- properties, against a minute-by-minute scan ------------------------------------------

ZONES = ["UTC", NY, "Europe/Paris", "Australia/Lord_Howe", "Asia/Kolkata", "Pacific/Chatham"]


def _part(lo: int, hi: int):
    n = st.integers(lo, hi)
    return st.one_of(
        st.just("*"),
        st.integers(1, hi - lo + 1).map(lambda k: f"*/{k}"),
        n.map(str),
        st.tuples(n, n).map(lambda p: f"{min(p)}-{max(p)}"),
        st.lists(n, min_size=1, max_size=3).map(lambda xs: ",".join(map(str, xs))),
    )


# frequent enough that a 16-day scan finds the next occurrence (a DST gap skips a week)
EXPRS = st.tuples(_part(0, 59), st.sampled_from(["*", "*/3", "1-4", "1,2,22", "2"]), _part(0, 6))
EXPRS = EXPRS.map(lambda p: f"{p[0]} {p[1]} * * {p[2]}")


def brute_next(cron, t: float, tz: str) -> float:
    """The first UTC minute after ``t`` whose wall-clock minute matches, the second pass of a
    repeated minute only with a wildcard hour. It scans 16 days: a weekly minute that falls
    in a DST gap (Lord Howe's 02:00 on the Sunday it moves by 30 min) comes a week later."""
    z = zone(tz)
    m = math.floor(t / 60) * 60 + 60
    for _ in range(16 * 24 * 60):
        here = datetime.fromtimestamp(m, z)
        if cron.matches(here) and (here.fold == 0 or cron.hours_wild):
            return m
        m += 60
    raise AssertionError("no occurrence within 16 days")


@settings(max_examples=300, deadline=None)
@given(
    expr=EXPRS,
    tz=st.sampled_from(ZONES),
    t=st.floats(at("2024-01-01"), at("2030-01-01")),
)
@example(expr="0 2 * * */7", tz="Australia/Lord_Howe", t=1853335800.0)  # found by CI
def test_next_after_is_the_first_matching_minute(expr, tz, t):
    cron = parse_cron(expr)
    got = cron.next_after(t, tz)
    assert got > t and got % 60 == 0
    assert got == brute_next(cron, t, tz), (expr, tz, local(t, tz), local(got, tz))


@settings(max_examples=60, deadline=None)
@given(expr=EXPRS, tz=st.sampled_from(ZONES), t=st.floats(at("2025-03-01"), at("2025-12-01")))
def test_between_chains_next_after(expr, tz, t):
    cron = parse_cron(expr)
    fires = cron.between(t, t + 2 * 86400, tz)
    assert fires == sorted(set(fires))
    prev = t
    for f in fires:
        assert cron.next_after(prev, tz) == f
        prev = f
    assert cron.next_after(prev, tz) > t + 2 * 86400


@pytest.mark.parametrize("tz", [NY, "Europe/Paris", "Australia/Lord_Howe"])
def test_every_minute_across_each_dst_change_of_a_year(tz):
    """Each real instant fires once: a wildcard schedule skips nothing and repeats nothing
    across the clock changes; a daily one fires at most once a local day."""
    every = parse_cron("* * * * *")
    start = at("2025-01-01T00:00:00")
    z = zone(tz)
    changes = [
        d
        for d in range(366)
        if datetime.fromtimestamp(start + d * 86400, z).utcoffset()
        != datetime.fromtimestamp(start + (d + 1) * 86400, z).utcoffset()
    ]
    assert len(changes) == 2
    for d in changes:
        a = start + d * 86400
        fires = every.between(a, a + 2 * 86400, tz)
        assert fires == [a + 60 * (i + 1) for i in range(2 * 24 * 60)]
    daily = parse_cron("15 2 * * *")  # 02:15 is skipped once a year in NY and Paris
    days = daily.between(start, start + 365 * 86400, tz)
    assert 364 <= len(days) <= 365
    assert len({local(d, tz)[:10] for d in days}) == len(days)  # never twice a day


def test_the_search_is_cheap():
    """next_after jumps field by field: 1,000 triggers are scheduled in well under a second."""
    exprs = [parse_cron(e) for e in ("0 9 * * 1-5", "*/5 * * * *", "0 0 1 1 *", "30 2 * * 0")]
    start = datetime.now(UTC).timestamp()
    t0 = datetime.now(UTC)
    for i in range(1000):
        exprs[i % 4].next_after(start, "Europe/Paris")
    assert datetime.now(UTC) - t0 < timedelta(seconds=1)

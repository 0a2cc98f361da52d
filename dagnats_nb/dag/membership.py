"""Which engines are alive, from their heartbeats (pure: no I/O, no clock of its own).

Every started engine puts its entry ``engine.{id}`` in the KV ``dagnats_engines`` every
``HEARTBEAT_EVERY`` seconds (``runtime.membership``). An observer reads the entries now and
then and hands each reading to :class:`Liveness` with the value of *its own* monotonic
clock. An engine is:

- **dead** when its entry's revision has not changed for ``DEAD_AFTER`` seconds;
- **live** when the observer saw its revision change and it is not dead;
- **unknown** before either: a first sighting says nothing about whether it still puts.

Clocks of different machines are never compared. The one exception is at first sight: how
long the entry had already been silent then, which the reader measures between two stamps
of the same server (the stream's message time and its answer's time), so an entry left
by an engine that died long ago is dead at once instead of after ``DEAD_AFTER``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

HEARTBEAT_EVERY = 0.5  # seconds between two puts of an engine's entry
DEAD_AFTER = 3.0  # seconds without a new revision: the engine is dead

State = Literal["live", "dead", "unknown"]


@dataclass(frozen=True, slots=True)
class Reading:
    """One entry as read: its revision, its value and how long it had been silent then
    (the server's own stamps; 0 when not known)."""

    revision: int
    value: Mapping[str, Any]
    silent: float = 0.0


@dataclass(slots=True)
class _Seen:
    revision: int
    value: Mapping[str, Any]
    since: float  # observer's clock: when this revision was first seen
    silent_before: float  # how long it had been silent at that moment
    changed: bool  # a revision change was seen: it was putting at `since`


class Liveness:
    """The engines an observer has seen, and whether each is live (see the module
    docstring). ``observe`` takes every entry read at one moment; what is missing from a
    reading (a deleted key, an entry aged out) is forgotten."""

    def __init__(self, dead_after: float = DEAD_AFTER) -> None:
        self.dead_after = dead_after
        self._seen: dict[str, _Seen] = {}

    def observe(self, readings: Mapping[str, Reading], now: float) -> None:
        """Record the entries read at ``now`` (the observer's monotonic clock)."""
        for key in set(self._seen) - set(readings):
            del self._seen[key]
        for key, r in readings.items():
            seen = self._seen.get(key)
            if seen is None:
                self._seen[key] = _Seen(r.revision, r.value, now, max(0.0, r.silent), False)
            elif r.revision != seen.revision:
                self._seen[key] = _Seen(r.revision, r.value, now, 0.0, True)

    def silence(self, key: str, now: float) -> float:
        """Seconds since ``key``'s last put, as far as this observer knows."""
        seen = self._seen[key]
        return max(0.0, now - seen.since) + seen.silent_before

    def state(self, key: str, now: float) -> State:
        """``live``, ``dead`` or ``unknown`` (see the module docstring)."""
        if self.silence(key, now) >= self.dead_after:
            return "dead"
        return "live" if self._seen[key].changed else "unknown"

    def value(self, key: str) -> Mapping[str, Any]:
        """The last value read of ``key``."""
        return self._seen[key].value

    def seen(self) -> list[str]:
        """The keys seen in the last reading, sorted."""
        return sorted(self._seen)

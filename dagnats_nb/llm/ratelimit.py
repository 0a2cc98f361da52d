"""Requests-per-minute and tokens-per-minute limits, shared by every call of one provider.

Two token buckets refilled continuously; each holds at most one second's worth, so calls
are paced evenly instead of bursting a minute's quota at once. A call debits both buckets
at once and sleeps until its debt is repaid, which keeps the order of arrival.
"""

from __future__ import annotations

import asyncio
import time


class _Bucket:
    def __init__(self, per_minute: float) -> None:
        self.rate = per_minute / 60.0
        self.capacity = max(1.0, self.rate)
        self.level = self.capacity
        self.at = time.monotonic()

    def debit(self, amount: float, now: float) -> float:
        """Take ``amount``; the seconds until the bucket is out of debt."""
        self.level = min(self.capacity, self.level + (now - self.at) * self.rate)
        self.at = now
        self.level -= amount
        return -self.level / self.rate if self.level < 0 else 0.0


class RateLimiter:
    """``await limiter.acquire(tokens)`` before each call; 0 disables a limit."""

    def __init__(self, requests_per_min: float = 0, tokens_per_min: float = 0) -> None:
        self.requests = _Bucket(requests_per_min) if requests_per_min > 0 else None
        self.tokens = _Bucket(tokens_per_min) if tokens_per_min > 0 else None
        self.waited_s = 0.0

    @property
    def active(self) -> bool:
        return self.requests is not None or self.tokens is not None

    async def acquire(self, tokens: int = 0) -> float:
        """Wait for a slot for one call of about ``tokens`` tokens; the seconds waited."""
        now = time.monotonic()
        wait = 0.0
        if self.requests is not None:
            wait = self.requests.debit(1, now)
        if self.tokens is not None and tokens > 0:
            wait = max(wait, self.tokens.debit(tokens, now))
        if wait > 0:
            self.waited_s += wait
            await asyncio.sleep(wait)
        return wait

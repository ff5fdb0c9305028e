"""Budget decisions as pure functions of the state and `now` (seconds since the epoch).

A budget is a token bucket per identity (tokens per minute, burst capacity) plus a counter per
UTC day. The Redis backend runs the same arithmetic in Lua (`redis_scripts.py`); the tests run
both on the same sequences of calls.

Lifecycle of one request:
- `admit`: the request must fit: prompt + its completion cap must be available in the bucket
  and in today's counter (else 429 with the limit and Retry-After). It then takes the prompt
  plus a first lease of at most `lease` completion tokens.
- `lease`: a stream takes more completion tokens as it goes; a lease can be granted in part
  (down to 0) when the bucket is nearly empty, so the stream stops at exactly the last
  granted token. Leased tokens are taken atomically, so concurrent streams on one identity
  never deliver more than the bucket gave out.
- `reconcile`: at the end the actual usage (provider-reported when available) replaces what
  was taken: unused tokens are refunded, overage is charged (the bucket may go negative and
  later requests wait). It applies once per request id.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

SECONDS_PER_DAY = 86_400


@dataclass(frozen=True)
class Limits:
    tokens_per_minute: int | None
    tokens_per_day: int | None
    burst_tokens: int | None = None

    @property
    def capacity(self) -> float | None:
        if self.tokens_per_minute is None:
            return None
        return float(self.burst_tokens if self.burst_tokens is not None else self.tokens_per_minute)

    @property
    def rate(self) -> float:
        """Refill in tokens per second."""
        return (self.tokens_per_minute or 0) / 60.0


@dataclass
class Bucket:
    tokens: float
    updated: float


@dataclass
class Day:
    day: int
    used: int = 0


@dataclass(frozen=True)
class Decision:
    allowed: bool
    # "tpm_exceeded" / "tpd_exceeded" when refused.
    reason: str | None = None
    # Seconds until the request could fit, None when it never can (bigger than the bucket).
    retry_after: float | None = None
    taken: int = 0
    # Tokens left after the decision (None for an unlimited dimension).
    tpm_remaining: float | None = None
    tpd_remaining: int | None = None


def day_of(now: float) -> int:
    return int(now // SECONDS_PER_DAY)


def seconds_to_next_day(now: float) -> float:
    return (day_of(now) + 1) * SECONDS_PER_DAY - now


def refill(bucket: Bucket | None, limits: Limits, now: float) -> Bucket:
    cap = limits.capacity
    if cap is None:
        return Bucket(0.0, now)
    if bucket is None:
        return Bucket(cap, now)
    elapsed = max(0.0, now - bucket.updated)
    return Bucket(min(cap, bucket.tokens + elapsed * limits.rate), max(now, bucket.updated))


def current_day(day: Day | None, now: float) -> Day:
    d = day_of(now)
    if day is None or day.day != d:
        return Day(d, 0)
    return day


def admit(
    bucket: Bucket | None, day: Day | None, limits: Limits, now: float, need: int, take: int
) -> tuple[Decision, Bucket, Day]:
    """Check that `need` tokens fit, then take `take` (≤ need)."""
    b = refill(bucket, limits, now)
    d = current_day(day, now)
    cap = limits.capacity
    if cap is not None and b.tokens < need:
        retry = (
            None
            if need > cap
            else math.ceil((need - b.tokens) / limits.rate)
            if limits.rate > 0
            else None
        )
        return Decision(False, "tpm_exceeded", retry, 0, b.tokens, _day_left(d, limits)), b, d
    if limits.tokens_per_day is not None and d.used + need > limits.tokens_per_day:
        retry = None if need > limits.tokens_per_day else math.ceil(seconds_to_next_day(now))
        return (
            Decision(
                False,
                "tpd_exceeded",
                retry,
                0,
                b.tokens if cap is not None else None,
                _day_left(d, limits),
            ),
            b,
            d,
        )
    if cap is not None:
        b = Bucket(b.tokens - take, b.updated)
    d = Day(d.day, d.used + take)
    return (
        Decision(
            True, None, None, take, b.tokens if cap is not None else None, _day_left(d, limits)
        ),
        b,
        d,
    )


def lease(
    bucket: Bucket | None, day: Day | None, limits: Limits, now: float, want: int
) -> tuple[int, Bucket, Day]:
    """Take up to `want` tokens: all, part, or none of them."""
    b = refill(bucket, limits, now)
    d = current_day(day, now)
    grant = want
    if limits.capacity is not None:
        grant = min(grant, max(0, math.floor(b.tokens)))
    if limits.tokens_per_day is not None:
        grant = min(grant, max(0, limits.tokens_per_day - d.used))
    if limits.capacity is not None:
        b = Bucket(b.tokens - grant, b.updated)
    return grant, b, Day(d.day, d.used + grant)


def reconcile(
    bucket: Bucket | None,
    day: Day | None,
    limits: Limits,
    now: float,
    taken: int,
    actual: int,
    taken_day: int,
) -> tuple[int, Bucket, Day]:
    """Replace `taken` by `actual`. Returns the adjustment (positive: refunded)."""
    delta = taken - actual
    b = refill(bucket, limits, now)
    cap = limits.capacity
    if cap is not None:
        b = Bucket(min(cap, b.tokens + delta), b.updated)
    d = current_day(day, now)
    if d.day == taken_day:
        d = Day(d.day, max(0, d.used - delta))
    return delta, b, d


def _day_left(d: Day, limits: Limits) -> int | None:
    return None if limits.tokens_per_day is None else limits.tokens_per_day - d.used

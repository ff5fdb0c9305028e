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

An operator may `grant` a key more tokens for the current UTC day (kept apart from what was
used, so refunds never eat into a grant) or `reset` it (a full bucket, nothing used today);
`standing` says where a budget stands.
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
    # Tokens an operator added to today's allowance (`meterkit budget grant`).
    granted: int = 0


@dataclass(frozen=True)
class Standing:
    """Where one budget stands at `now`: what is left of the bucket and of the day, and in
    how many seconds each is whole again (None for a dimension without a limit)."""

    tpm_remaining: float | None
    tpm_capacity: float | None
    tpm_reset: float | None
    tpd_limit: int | None
    tpd_used: int
    tpd_granted: int
    tpd_remaining: int | None
    tpd_reset: float | None

    def as_dict(self) -> dict[str, float | int | None]:
        """For people and scripts: whole tokens (a bucket refills continuously; what is
        usable is whole — `budget show` printed 265.66365464528405) and seconds to 0.1."""

        def whole(v: float | None) -> int | None:
            return None if v is None else math.floor(v)

        def tenths(v: float | None) -> float | None:
            return None if v is None else round(v, 1)

        return {
            "tokens_per_minute_remaining": whole(self.tpm_remaining),
            "tokens_per_minute_capacity": whole(self.tpm_capacity),
            "tokens_per_minute_reset_seconds": tenths(self.tpm_reset),
            "tokens_per_day": self.tpd_limit,
            "tokens_today_used": self.tpd_used,
            "tokens_today_granted": self.tpd_granted,
            "tokens_today_remaining": self.tpd_remaining,
            "tokens_today_reset_seconds": tenths(self.tpd_reset),
        }


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
    allowance = _allowance(d, limits)
    if allowance is not None and d.used + need > allowance:
        retry = None if need > allowance else math.ceil(seconds_to_next_day(now))
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
    d = Day(d.day, d.used + take, d.granted)
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
    allowance = _allowance(d, limits)
    if allowance is not None:
        grant = min(grant, max(0, allowance - d.used))
    if limits.capacity is not None:
        b = Bucket(b.tokens - grant, b.updated)
    return grant, b, Day(d.day, d.used + grant, d.granted)


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
        d = Day(d.day, max(0, d.used - delta), d.granted)
    return delta, b, d


def _allowance(d: Day, limits: Limits) -> int | None:
    """Today's limit: the policy's tokens_per_day plus what an operator granted today."""
    return None if limits.tokens_per_day is None else limits.tokens_per_day + d.granted


def _day_left(d: Day, limits: Limits) -> int | None:
    allowance = _allowance(d, limits)
    return None if allowance is None else allowance - d.used


def grant(day: Day | None, limits: Limits, now: float, tokens: int) -> Day:
    """Add `tokens` to today's allowance (they lapse at the end of the UTC day). Raises
    ValueError when the budget has no daily limit: a per-minute bucket is a rate, not an
    allowance (`reset` refills it)."""
    if limits.tokens_per_day is None:
        raise ValueError("this budget has no tokens_per_day: nothing to grant (reset refills it)")
    if tokens <= 0:
        raise ValueError("grant a positive number of tokens")
    d = current_day(day, now)
    return Day(d.day, d.used, d.granted + tokens)


def standing(bucket: Bucket | None, day: Day | None, limits: Limits, now: float) -> Standing:
    """Where a budget stands at `now` (pure: nothing is taken)."""
    b = refill(bucket, limits, now)
    d = current_day(day, now)
    cap = limits.capacity
    tpm_reset = None
    if cap is not None:
        tpm_reset = (
            0.0 if b.tokens >= cap else (cap - b.tokens) / limits.rate if limits.rate else None
        )
    return Standing(
        tpm_remaining=b.tokens if cap is not None else None,
        tpm_capacity=cap,
        tpm_reset=tpm_reset,
        tpd_limit=limits.tokens_per_day,
        tpd_used=d.used,
        tpd_granted=d.granted,
        tpd_remaining=_day_left(d, limits),
        tpd_reset=seconds_to_next_day(now) if limits.tokens_per_day is not None else None,
    )

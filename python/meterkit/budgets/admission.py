"""Admission planning for one request against its budget: pure functions, no I/O.

`plan` says what to reserve and how to meter the stream; the problems say why a request is
refused, in the words a client can act on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from meterkit.budgets.policy import Limits
from meterkit.config.budgets import BudgetPolicy
from meterkit.problems import Problem

_KEY_WORDS = {
    "api_key": "an API key (Authorization: Bearer or x-api-key)",
    "ip": "a client address",
    "payer": "a verified payment",
}


@dataclass(frozen=True)
class Plan:
    """What one request reserves and how its stream is metered."""

    # The completion cap: the policy's, or the request's own when smaller.
    cap: int
    # The first lease of completion tokens (the whole cap unless leased mid-stream).
    first: int
    # Tokens the request could use at most (admission checks these are available) and the
    # tokens taken now.
    need: int
    take: int
    mid_stream: bool
    shadow: bool
    prompt: int = 0


def limits_of(policy: BudgetPolicy) -> Limits:
    return Limits(policy.tokens_per_minute, policy.tokens_per_day, policy.burst_tokens)


def plan(policy: BudgetPolicy, requested: int | None, prompt: int, stream: bool) -> Plan:
    cap = (
        policy.max_completion_tokens
        if requested is None
        else min(requested, policy.max_completion_tokens)
    )
    mid_stream = stream and policy.streaming.enforce_mid_stream
    first = min(cap, policy.streaming.buffer_tokens) if mid_stream else cap
    return Plan(
        cap, first, prompt + cap, prompt + first, mid_stream, policy.mode == "shadow", prompt
    )


def prepaid(p: Plan, paid: int) -> Plan:
    """The plan of a request whose completion was paid for up front (`paid` tokens): it is
    granted whole — all of it reserved at admission, no mid-stream lease that could cut a
    paid stream short (the payment's own cap cuts it at what was paid)."""
    cap = min(p.cap, paid)
    return Plan(cap, cap, p.prompt + cap, p.prompt + cap, False, p.shadow, p.prompt)


def key_missing(policy: BudgetPolicy) -> Problem:
    what = _KEY_WORDS.get(policy.key.kind) or f"the {policy.key.header} header"
    return Problem(
        401,
        "budget-key-missing",
        "Budget identity missing",
        f"budget {policy.name!r} is keyed by {what}, which this request does not carry",
        extra={"budget": policy.name},
    )


def rejection(
    policy: BudgetPolicy,
    reason: str,
    need: int,
    retry_after: float | None,
    remaining: float | None,
    ratelimit: dict[str, str] | None = None,
) -> Problem:
    window = "minute" if reason == "tpm_exceeded" else "day"
    if retry_after is None:
        detail = (
            f"the request needs {need} tokens (prompt + completion limit), more than budget "
            f"{policy.name!r} allows per {window} at all"
        )
    else:
        detail = (
            f"the request needs {need} tokens (prompt + completion limit) and budget "
            f"{policy.name!r} has {max(0, math.floor(remaining or 0))} left this {window}; "
            f"retry in {math.ceil(retry_after)} s"
        )
    extra: dict[str, object] = {"budget": policy.name, "limit": reason, "need": need}
    headers: tuple[tuple[str, str], ...] = tuple((ratelimit or {}).items())
    if retry_after is not None:
        extra["retry_after"] = math.ceil(retry_after)
        headers = (("Retry-After", str(math.ceil(retry_after))), *headers)
    return Problem(429, reason, "Token budget exceeded", detail, extra=extra, headers=headers)


def backend_down(policy: BudgetPolicy) -> Problem:
    return Problem(
        503,
        "budget-backend-unavailable",
        "Budget store unavailable",
        f"budget {policy.name!r} cannot be checked right now and fails closed",
        extra={"budget": policy.name},
        headers=(("Retry-After", "1"),),
    )


# The headers OpenAI answers with, which SDKs and gateways already read: the per-minute
# window under its own names, today's allowance with a `-day` suffix. Each names one window
# (issue 20 #5: one header that switched between them silently).
LIMIT_HEADER = "x-ratelimit-limit-tokens"
REMAINING_HEADER = "x-ratelimit-remaining-tokens"
RESET_HEADER = "x-ratelimit-reset-tokens"
DAY = "-day"


def go_duration(seconds: float) -> str:
    """A duration as OpenAI writes it in `x-ratelimit-reset-tokens`: "250ms", "1.5s",
    "6m0s", "2h3m4s"."""
    if seconds <= 0:
        return "0s"
    if seconds < 1:
        return f"{max(1, round(seconds * 1000))}ms"
    total = math.ceil(seconds * 10) / 10  # tenths, rounded up: never promise too early
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    s = f"{secs:.1f}".rstrip("0").rstrip(".")
    if hours:
        return f"{int(hours)}h{int(minutes)}m{s}s"
    if minutes:
        return f"{int(minutes)}m{s}s"
    return f"{s}s"


def ratelimit_headers(
    tpm_remaining: float | None,
    tpd_remaining: int | None,
    limits: Limits,
    now: float,
    pending: int = 0,
) -> dict[str, str]:
    """The rate-limit headers of an answer: for the per-minute bucket
    `x-ratelimit-limit-tokens`, `-remaining-tokens` and `-reset-tokens` (until it is full
    again), and for today's allowance the same with `-day` (reset: the next UTC midnight).
    `pending`: what this request may still take beyond its reservation (a stream leases as
    it goes), counted as taken — so the figure is never more than what will be left,
    whatever the stream uses (before, 272 was shown where 228 were left). Empty for a budget
    without limits."""
    from meterkit.budgets.policy import seconds_to_next_day

    out: dict[str, str] = {}
    cap = limits.capacity
    if tpm_remaining is not None and cap is not None:
        left = max(0.0, tpm_remaining - pending)
        refill = (cap - left) / limits.rate if limits.rate > 0 else 0.0
        out[LIMIT_HEADER] = str(math.floor(cap))
        out[REMAINING_HEADER] = str(math.floor(left))
        out[RESET_HEADER] = go_duration(max(0.0, refill))
    if tpd_remaining is not None and limits.tokens_per_day is not None:
        out[LIMIT_HEADER + DAY] = str(limits.tokens_per_day)
        out[REMAINING_HEADER + DAY] = str(max(0, tpd_remaining - pending))
        out[RESET_HEADER + DAY] = go_duration(seconds_to_next_day(now))
    return out

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
    return Plan(cap, first, prompt + cap, prompt + first, mid_stream, policy.mode == "shadow")


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
    headers: tuple[tuple[str, str], ...] = ()
    if retry_after is not None:
        extra["retry_after"] = math.ceil(retry_after)
        headers = (("Retry-After", str(math.ceil(retry_after))),)
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

"""Which completion figure a request is billed: what the provider reported, or what was
counted on the wire — a pure decision, tested without sockets.

An upstream's `usage` can be wrong in either direction: `completion_tokens: 0` after five
delivered tokens (served free, budgets never spent), or 10^12 (a payer billed for tokens
that never existed). What was forwarded was counted, and for a model counted exactly (its
tokenizer is public) that count is a floor: the provider cannot have produced fewer tokens
than the client received. It can have produced more than reached the wire only where the
request hides them (reasoning tokens), and never more than the request allowed. So the
plausible range for the provider's figure is [counted, counted + reasoning], capped by the
request's completion limit; outside it, the figure is a **discrepancy**: recorded (record
field, metric, one log line) and billed as the policy says (`upstreams.*.usage_source`):

- `max` (default): the provider's figure brought into the plausible range — never below the
  wire's count, never above what the request could have produced;
- `counted`: the wire's count (plus reported reasoning, within the limit) whenever the
  provider's figure is out of range;
- `provider`: the provider's figure, only made non-negative (the old behaviour, for
  upstreams the operator trusts over meterkit's count).

A model counted by estimate (Anthropic: its tokenizer is not public) has no floor that can
be trusted: the provider's figure stands, but never below zero nor above the request's
limit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# Above this a reported figure is not a count of anything (and would overflow what stores
# and metrics hold): treated as unusable, like a negative or a non-integer.
ABSURD = 10**12


def usable(value: Any) -> int | None:
    """A reported token figure, if it is one: a non-negative integer below `ABSURD`."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < ABSURD:
        return value
    return None


@dataclass(frozen=True)
class Billed:
    """The completion tokens billed, where the figure came from, and the discrepancy when
    the provider's report was out of the plausible range (None when it was not)."""

    tokens: int
    provenance: str
    discrepancy: dict[str, Any] | None = None


def completion(
    *,
    reported: int | None,
    counted: int | None,
    counted_provenance: str | None,
    reasoning: int | None,
    limit: int | None,
    source: str,
) -> Billed | None:
    """Decide the billed completion of a response that finished (a cut, cancelled or
    broken response has no final report: its count is billed, as before). `reported`: the
    provider's figure (None when absent or unusable); `counted` and its provenance
    ("counted" or "estimated"); `reasoning`: reasoning tokens the provider reported (hidden
    from the wire); `limit`: the request's effective completion limit, if known."""
    if reported is None:
        if counted is None:
            return None
        return Billed(counted, counted_provenance or "counted")
    if counted is None:
        # Nothing was counted (no stream format): the provider's word, within the limit.
        return Billed(_cap(reported, limit), "provider")
    if counted_provenance != "counted":
        # An estimate is no floor: the provider's figure, within [0, limit].
        billed = _cap(reported, limit)
        if billed == reported:
            return Billed(reported, "provider")
        return Billed(billed, "provider", _discrepancy(reported, counted, billed, "above_limit"))
    low = counted
    # What the wire cannot show (reasoning), within the request's limit; never below what
    # the wire showed (an upstream that ignored the limit still delivered those tokens).
    high = max(low, _cap(counted + (reasoning or 0), limit))
    if low <= reported <= high:
        return Billed(reported, "provider")
    kind = "below_counted" if reported < low else "above_plausible"
    if source == "provider":
        billed = reported
    elif source == "counted":
        billed = high
    else:
        billed = min(max(reported, low), high)
    provenance = "provider" if billed == reported else "counted"
    return Billed(billed, provenance, _discrepancy(reported, counted, billed, kind))


def _cap(value: int, limit: int | None) -> int:
    return value if limit is None else min(value, limit)


def _discrepancy(reported: int, counted: int, billed: int, kind: str) -> dict[str, Any]:
    return {"kind": kind, "reported": reported, "counted": counted, "billed": billed}

"""What a request costs: fixed prices, per-model prices, and token-based quotes.

A token-based price is a quote the client pays up front: the core's exact prompt count plus
the maximum completion tokens, at the route's per-token rates for the model (the maximum is
written into the upstream request so the upstream cannot exceed what was paid for). Exact
post-hoc per-token billing needs pay-as-you-go sessions, which this is not.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, TypeVar

from meterkit import count_request_prompt
from meterkit.config.payments import Accept, Asset, RoutePayment, TokenRates, match_model
from meterkit.formats import requested_max
from meterkit.payments.problems import PaymentProblem

DEFAULT_QUOTE_MAX_TOKENS = 4096
T = TypeVar("T")


class Unpriceable(PaymentProblem):
    status, code, title, fresh_challenge = 400, "unpriceable", "No price for this request", False


@dataclass(frozen=True)
class Quote:
    """The price of one request in currency units (exact), and what it was computed from."""

    price: Decimal
    basis: str  # "fixed", "model", "token-based"
    model: str | None = None
    prompt_tokens: int | None = None
    max_completion_tokens: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "price": str(self.price),
            "basis": self.basis,
            "model": self.model,
            "prompt_tokens": self.prompt_tokens,
            "max_completion_tokens": self.max_completion_tokens,
        }


def base_units(price: Decimal, asset: Asset) -> int:
    """The amount in the asset's smallest unit; a fraction of a unit rounds up (a price is
    never undercharged by rounding)."""
    scaled = price * (Decimal(10) ** asset.decimals)
    return math.ceil(scaled)


def _by_model(table: Mapping[str, T], model: str | None) -> T | None:
    # Exact, dated version, most specific glob, default: see `config.payments.match_model`.
    value: T | None = match_model(table, model)
    return value


def quote(
    payment: RoutePayment,
    body: dict[str, Any] | None,
    fmt: str | None,
    model: str | None,
    cap: int | None = None,
) -> Quote:
    """The price of a request. `cap`: the smallest completion cap other features put on it
    (a budget's `max_completion_tokens`): a token-based quote never charges for completion
    tokens the request cannot get."""
    if payment.type == "fixed":
        if payment.prices_by_model:
            p = _by_model(payment.prices_by_model, model)
            if p is None:
                raise Unpriceable(
                    f"this route has no price for model {model!r}", reason="no_model_price"
                )
            return Quote(p, "model", model)
        assert payment.price is not None
        return Quote(payment.price, "fixed")
    if payment.type == "token-based":
        rates: TokenRates | None = _by_model(payment.rates_by_model, model)
        if rates is None:
            raise Unpriceable(
                f"this route has no token rates for model {model!r}", reason="no_model_rate"
            )
        if body is None or fmt is None:
            raise Unpriceable("a token-based price needs an LLM request body", reason="no_body")
        prompt = count_request_prompt(body, fmt, model)
        requested, _ = requested_max(body, fmt)
        max_out = requested if requested is not None else DEFAULT_QUOTE_MAX_TOKENS
        if cap is not None:
            max_out = min(max_out, cap)
        price = rates.input * prompt + rates.output * max_out
        return Quote(price, "token-based", model, prompt, max_out)
    return Quote(Decimal(0), "free")


def offers(q: Quote, accepts: tuple[Accept, ...]) -> list[tuple[Accept, int]]:
    return [(a, base_units(q.price, a.asset)) for a in accepts]

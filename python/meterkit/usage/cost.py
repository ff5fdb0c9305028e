"""What a recorded request cost, in currency units (exact decimals): the amount its payment
settled for on a paid route, else its tokens at the `prices:` table of its model.

Pure functions of a record and the config's tables: the usage report and the spend metrics
use the same arithmetic, so a dashboard and a report agree."""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from meterkit.config.payments import KNOWN_ASSETS, Accept, Asset, TokenRates, match_model

ZERO = Decimal(0)


def priced(
    prices: Mapping[str, TokenRates],
    model: str | None,
    prompt_tokens: int | None,
    completion_tokens: int | None,
) -> Decimal:
    """Tokens at the price table's rates for `model` (0 when no entry matches it)."""
    rates: TokenRates | None = match_model(prices, model)
    if rates is None:
        return ZERO
    return rates.input * (prompt_tokens or 0) + rates.output * (completion_tokens or 0)


def assets(accepts: tuple[Accept, ...]) -> dict[str, Asset]:
    """Assets by lowercase token address: the config's accepted ones and the known ones."""
    out = {a.address.lower(): a for a in KNOWN_ASSETS.values()}
    out.update({a.asset.address.lower(): a.asset for a in accepts})
    return out


def from_base_units(amount: str | int, asset: Asset | None) -> Decimal:
    """A ledger amount (the token's smallest unit) in currency units. An unknown token is
    taken to have 6 decimals, as USDC does."""
    decimals = asset.decimals if asset is not None else 6
    return Decimal(int(amount)).scaleb(-decimals)


def paid_amount(record: Mapping[str, Any], known: Mapping[str, Asset]) -> tuple[str, Decimal]:
    """(asset symbol, amount) a record's payment settled or queued, or ("", 0) when it paid
    nothing (no payment, refused, a redelivery served without a second charge)."""
    payment = record.get("payment") or {}
    if not payment.get("settled") or payment.get("redelivery") or payment.get("amount") is None:
        return "", ZERO
    address = str(payment.get("asset") or "").lower()
    asset = known.get(address)
    return (asset.symbol if asset else address), from_base_units(payment["amount"], asset)

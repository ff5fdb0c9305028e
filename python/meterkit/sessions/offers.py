"""What a session route asks of its payers, per accepted asset: the MPP session request
(price per token in base units, currency, recipient, escrow), one challenge per method."""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from meterkit import _core
from meterkit.config.payments import Accept, SessionTerms
from meterkit.payments import mpp
from meterkit.payments.pricing import base_units
from meterkit.sessions.channels import PREPAID_ESCROW

UNIT_TYPE = "llm_token"
METHODS = ("evm", "tempo")


@dataclass(frozen=True)
class SessionOffer:
    """One way to pay a session route: an asset, and the route's terms in its base units."""

    accept: Accept
    price: int  # per completion token
    prompt_price: int  # per prompt token
    min_delta: int
    suggested_deposit: int | None
    escrow: str = PREPAID_ESCROW

    @property
    def chain_id(self) -> int:
        return self.accept.asset.chain_id

    def request(self, channel_id: str | None = None) -> dict[str, Any]:
        """The challenge's `request` (the same for `evm` and `tempo`); `channel_id`: the
        channel the request said it pays from, as `methodDetails.channelId`."""
        a = self.accept.asset
        out: dict[str, Any] = {
            "amount": str(self.price),
            "unitType": UNIT_TYPE,
            "currency": _core.checksum_address(a.address),
            "recipient": _core.checksum_address(self.accept.pay_to),
            "methodDetails": {
                "chainId": a.chain_id,
                "escrowContract": _core.checksum_address(self.escrow),
                "minVoucherDelta": str(self.min_delta),
            },
        }
        if channel_id is not None:
            out["methodDetails"]["channelId"] = channel_id
        if self.suggested_deposit is not None:
            out["suggestedDeposit"] = str(self.suggested_deposit)
        return out


def session_offers(
    terms: SessionTerms, accepts: Sequence[Accept], escrow: str = PREPAID_ESCROW
) -> list[SessionOffer]:
    return [
        SessionOffer(
            a,
            base_units(terms.price, a.asset),
            base_units(terms.prompt_price, a.asset),
            base_units(terms.min_voucher_delta, a.asset),
            base_units(terms.suggested_deposit, a.asset)
            if terms.suggested_deposit is not None
            else None,
            escrow,
        )
        for a in accepts
    ]


def session_challenges(
    secret: bytes,
    realm: str,
    offers: Sequence[SessionOffer],
    expires: str,
    description: str | None,
    channel_id: str | None = None,
    header: str | None = None,
) -> list[mpp.Challenge]:
    return [
        mpp.make_challenge(
            secret,
            realm=realm,
            method=method,
            intent="session",
            request=o.request(channel_id),
            expires=expires,
            opaque={"n": secrets.token_hex(12)},
            description=description,
            header=header,
        )
        for o in offers
        for method in METHODS
    ]

"""The paying client: an async HTTP client that answers `402 Payment Required` by itself for
MPP `evm/charge` (EIP-3009 authorizations signed with a local key), within spending caps.

    async with PayingClient(key, max_per_request=Decimal("0.50"), max_total=Decimal("5")) as client:
        result = await client.request("POST", url, json={...})
        print(result.status, result.receipt)

`dry_run=True` stops at the price: nothing is signed or sent twice.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import aiohttp
import orjson

from meterkit import _core
from meterkit.config.payments import KNOWN_ASSETS, Asset
from meterkit.payments import evm, mpp

__all__ = ["Offer", "PaidResult", "PayingClient", "PaymentDeclined", "generate_key"]


class PaymentDeclined(Exception):
    """The client would not pay: over a cap, or no offer it can pay."""


def generate_key() -> bytes:
    """A new secp256k1 private key (retrying the negligible chance of an invalid scalar)."""
    while True:
        key = os.urandom(32)
        try:
            _core.address_of(key)
            return key
        except ValueError:
            continue


@dataclass(frozen=True)
class Offer:
    challenge: mpp.Challenge
    asset: Asset
    amount: int  # base units
    pay_to: str

    @property
    def price(self) -> Decimal:
        return Decimal(self.amount) / (Decimal(10) ** self.asset.decimals)


@dataclass
class PaidResult:
    status: int
    headers: dict[str, str]
    body: bytes
    offers: list[Offer] = field(default_factory=list)
    paid: Offer | None = None
    receipt: dict[str, Any] | None = None


def _asset_for(chain_id: int, currency: str, decimals: int) -> Asset | None:
    for a in KNOWN_ASSETS.values():
        if a.chain_id == chain_id and a.address.lower() == currency.lower():
            return a
    return None


def offers_from(headers: Any) -> list[Offer]:
    """The `evm/charge` offers of a 402 this client can sign (known EIP-3009 tokens)."""
    out = []
    for ch in mpp.parse_challenges(headers.getall("WWW-Authenticate", [])):
        if (ch.method, ch.intent) != ("evm", "charge"):
            continue
        try:
            req = ch.request_json
            details = req.get("methodDetails") or {}
            asset = _asset_for(
                int(details["chainId"]), str(req["currency"]), int(details.get("decimals", 6))
            )
            if asset is None or "authorization" not in (details.get("credentialTypes") or []):
                continue
            out.append(Offer(ch, asset, int(req["amount"]), str(req["recipient"])))
        except (KeyError, ValueError, TypeError):
            continue
    return out


class PayingClient:
    def __init__(
        self,
        private_key: bytes | str,
        *,
        max_per_request: Decimal | None = None,
        max_total: Decimal | None = None,
        dry_run: bool = False,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        if isinstance(private_key, str):
            private_key = bytes.fromhex(private_key.removeprefix("0x"))
        self.key = private_key
        self.address = _core.address_of(private_key)
        self.max_per_request = max_per_request
        self.max_total = max_total
        self.dry_run = dry_run
        self.spent = Decimal(0)
        self._session = session
        self._own = session is None

    async def __aenter__(self) -> PayingClient:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._own and self._session is not None:
            await self._session.close()

    def choose(self, offers: list[Offer]) -> Offer:
        if not offers:
            raise PaymentDeclined("the server offers no evm/charge payment this client can sign")
        best = min(offers, key=lambda o: o.price)
        if self.max_per_request is not None and best.price > self.max_per_request:
            raise PaymentDeclined(
                f"the price {best.price} is above the per-request cap {self.max_per_request}"
            )
        if self.max_total is not None and self.spent + best.price > self.max_total:
            raise PaymentDeclined(
                f"paying {best.price} would exceed the total cap {self.max_total} "
                f"(spent {self.spent})"
            )
        return best

    def credential(self, offer: Offer) -> str:
        ch = offer.challenge
        expires = mpp.parse_rfc3339(ch.expires) if ch.expires else None
        valid_before = int(expires) if expires else int(time.time()) + 300
        fields, signature = evm.sign(
            self.key,
            offer.asset,
            to=offer.pay_to,
            value=offer.amount,
            valid_before=valid_before,
            nonce=evm.challenge_nonce(ch.id, ch.realm),
        )
        payload = {"type": evm.CREDENTIAL_TYPE, **fields, "signature": signature}
        return mpp.credential_token(ch, payload, evm.did_pkh(offer.asset.chain_id, self.address))

    async def request(
        self,
        method: str,
        url: str,
        *,
        json: Any = None,
        data: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> PaidResult:
        assert self._session is not None, "use `async with PayingClient(...)`"
        body = orjson.dumps(json) if json is not None else data
        h = (
            {"Content-Type": "application/json", **(headers or {})}
            if json is not None
            else dict(headers or {})
        )
        async with self._session.request(method, url, data=body, headers=h) as resp:
            first = PaidResult(resp.status, dict(resp.headers), await resp.read())
            if resp.status != 402:
                return first
            first.offers = offers_from(resp.headers)
        offer = self.choose(first.offers)
        if self.dry_run:
            first.paid = None
            return first
        h["Authorization"] = f"Payment {self.credential(offer)}"
        async with self._session.request(method, url, data=body, headers=h) as resp:
            result = PaidResult(resp.status, dict(resp.headers), await resp.read(), first.offers)
            receipt = resp.headers.get("Payment-Receipt")
        if 200 <= result.status < 300:
            self.spent += offer.price
            result.paid = offer
            if receipt:
                result.receipt = mpp.decode_receipt(receipt)
        return result

"""The paying client: an async HTTP client that answers `402 Payment Required` by itself with
an EIP-3009 authorization signed by a local key — MPP `evm/charge` (`WWW-Authenticate:
Payment`) or x402 `exact` (`PAYMENT-REQUIRED` v2, or a v1 JSON body) — within spending caps.

    async with PayingClient(key, max_per_request=Decimal("0.50"), max_total=Decimal("5")) as client:
        result = await client.request("POST", url, json={...})
        print(result.status, result.paid, result.receipt)

Caps are in units of the token paid (0.50 is half a USDC). The client refuses to pay with
neither cap unless it is built with `no_cap=True`. `spent` counts every paid request whose
answer says money moved — a receipt (`Payment-Receipt`, or a `PAYMENT-RESPONSE` /
`X-PAYMENT-RESPONSE` with `success: true`), or any 2xx — whatever its status (an upstream
404 after settlement still cost the price), and every paid request whose answer never came
(the outcome is unknown, so it counts). Concurrent requests reserve their price before
paying, so together they cannot pass `max_total` either.

Which header carries the credential follows the offer: `Authorization: Payment …` by
default, `Payment-Authorization` when the challenge says `header="Payment-Authorization"`
(the caller's own `Authorization` is then left as it is), `PAYMENT-SIGNATURE` for x402 v2
and `X-PAYMENT` for v1.

Any EIP-3009 token the offer describes can be paid: Base and Base Sepolia USDC are known;
for another token the offer must give its EIP-712 `name` and `version` (x402 `extra`, MPP
`methodDetails`) and its `decimals` (MPP `methodDetails`, or x402 `extra.decimals`), and the
client trusts them — a cap in token units is only as good as the decimals it is read with.
An offer whose decimals are unknown is not paid.

`dry_run=True` stops at the price: nothing is signed or sent twice.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import aiohttp
import orjson

from meterkit import _core
from meterkit.config.payments import KNOWN_ASSETS, NETWORK_IDS, Asset
from meterkit.payments import evm, mpp

__all__ = ["Offer", "PaidResult", "PayingClient", "PaymentDeclined", "generate_key"]

# How long an x402 authorization stays valid when the offer names no `maxTimeoutSeconds`.
_DEFAULT_VALIDITY = 300
_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")
# Preference between offers of the same price: MPP binds its nonce to the challenge.
_PROTOCOL_ORDER = {"mpp": 0, "x402-v2": 1, "x402-v1": 2}


class PaymentDeclined(Exception):
    """The client would not pay: over a cap, no cap at all, or no offer it can pay."""


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
    """One way to pay: an MPP `evm/charge` challenge or an x402 `exact` requirement."""

    challenge: mpp.Challenge | None
    asset: Asset
    amount: int  # base units
    pay_to: str
    protocol: str = "mpp"  # mpp | x402-v1 | x402-v2
    # x402: the requirement as offered (echoed in `accepted`), its resource, its timeout.
    requirements: Mapping[str, Any] | None = None
    resource: Mapping[str, Any] | None = None
    max_timeout: int = _DEFAULT_VALIDITY

    @property
    def price(self) -> Decimal:
        return Decimal(self.amount) / (Decimal(10) ** self.asset.decimals)

    @property
    def header(self) -> str:
        """The request header the credential goes in."""
        if self.protocol == "x402-v1":
            return "X-PAYMENT"
        if self.protocol == "x402-v2":
            return "PAYMENT-SIGNATURE"
        assert self.challenge is not None
        return self.challenge.credential_header


@dataclass
class PaidResult:
    status: int
    headers: dict[str, str]
    body: bytes
    offers: list[Offer] = field(default_factory=list)
    # The offer paid, when the answer says it was charged (counted in `spent`).
    paid: Offer | None = None
    receipt: dict[str, Any] | None = None


def _known(chain_id: int, address: str) -> Asset | None:
    for a in KNOWN_ASSETS.values():
        if a.chain_id == chain_id and a.address.lower() == address.lower():
            return a
    return None


def _decimals(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 36:
        return None
    return value


def asset_for(
    chain_id: int,
    address: str,
    *,
    decimals: Any = None,
    name: Any = None,
    version: Any = None,
    network: str | None = None,
) -> Asset | None:
    """The token an offer asks for: a known one (its own decimals and domain win), or the
    one the offer describes completely; None when the client cannot sign for it."""
    known = _known(chain_id, address)
    if known is not None:
        return known
    d = _decimals(decimals)
    if d is None or not isinstance(name, str) or not name or not isinstance(version, str):
        return None
    if not _ADDRESS.fullmatch(address):
        return None
    return Asset(
        f"{address[:6]}…{address[-4:]}",
        network or f"eip155:{chain_id}",
        chain_id,
        address,
        d,
        name,
        version,
    )


def _header_values(headers: Any, name: str) -> list[str]:
    if hasattr(headers, "getall"):
        return list(headers.getall(name, []))
    v = headers.get(name)
    return [v] if v is not None else []


def mpp_offers(headers: Any) -> list[Offer]:
    """The `evm/charge` offers of a 402 that this client can sign."""
    try:
        challenges = mpp.parse_challenges(_header_values(headers, "WWW-Authenticate"))
    except ValueError:
        return []
    out = []
    for ch in challenges:
        if (ch.method, ch.intent) != ("evm", "charge"):
            continue
        try:
            req = ch.request_json
            details = req.get("methodDetails") or {}
            if "authorization" not in (details.get("credentialTypes") or []):
                continue
            chain_id = details["chainId"]
            if isinstance(chain_id, bool) or not isinstance(chain_id, int):
                continue
            asset = asset_for(
                chain_id,
                str(req["currency"]),
                decimals=details.get("decimals"),
                name=details.get("name"),
                version=details.get("version"),
            )
            amount, recipient = req["amount"], req["recipient"]
            if (
                asset is None
                or not isinstance(amount, str)
                or not amount.isdigit()
                or not isinstance(recipient, str)
                or not _ADDRESS.fullmatch(recipient)
            ):
                continue
            out.append(Offer(ch, asset, int(amount), recipient))
        except (KeyError, ValueError, TypeError, AttributeError):
            continue
    return out


def _b64json(value: str) -> Any:
    text = value.strip()
    return orjson.loads(base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_"))


def _x402_offer(item: Any, version: int, resource: Any) -> Offer | None:
    if not isinstance(item, dict) or item.get("scheme") != "exact":
        return None
    network = item.get("network")
    if not isinstance(network, str):
        return None
    if network.startswith("eip155:") and network[7:].isdigit():
        chain_id: int | None = int(network[7:])
    else:
        chain_id = NETWORK_IDS.get(network)
    amount = item.get("amount" if version == 2 else "maxAmountRequired")
    address, pay_to = item.get("asset"), item.get("payTo")
    raw_extra = item.get("extra")
    extra: dict[str, Any] = raw_extra if isinstance(raw_extra, dict) else {}
    if (
        chain_id is None
        or not isinstance(amount, str)
        or not amount.isdigit()
        or not isinstance(address, str)
        or not isinstance(pay_to, str)
        or not _ADDRESS.fullmatch(pay_to)
    ):
        return None
    if extra.get("assetTransferMethod", "eip3009") != "eip3009":
        return None  # Permit2 and others: not an EIP-3009 authorization
    asset = asset_for(
        chain_id,
        address,
        decimals=extra.get("decimals"),
        name=extra.get("name"),
        version=extra.get("version"),
        network=network,
    )
    if asset is None:
        return None
    timeout = item.get("maxTimeoutSeconds")
    if isinstance(timeout, bool) or not isinstance(timeout, int) or timeout <= 0:
        timeout = _DEFAULT_VALIDITY
    return Offer(
        None,
        asset,
        int(amount),
        pay_to,
        protocol=f"x402-v{version}",
        requirements=item,
        resource=resource if isinstance(resource, dict) else None,
        max_timeout=timeout,
    )


def x402_offers(headers: Any, body: bytes) -> list[Offer]:
    """The `exact` offers of a 402: the v2 `PAYMENT-REQUIRED` header, else a v1 JSON body."""
    out: list[Offer] = []
    for value in _header_values(headers, "PAYMENT-REQUIRED"):
        try:
            doc = _b64json(value)
        except (ValueError, binascii.Error):
            continue
        if isinstance(doc, dict) and doc.get("x402Version") == 2:
            for item in doc.get("accepts") or []:
                if (o := _x402_offer(item, 2, doc.get("resource"))) is not None:
                    out.append(o)
    if out:
        return out
    try:
        doc = orjson.loads(body)
    except ValueError:
        return out
    if isinstance(doc, dict) and doc.get("x402Version") == 1:
        for item in doc.get("accepts") or []:
            if (o := _x402_offer(item, 1, None)) is not None:
                out.append(o)
    return out


def offers_from(headers: Any, body: bytes = b"") -> list[Offer]:
    """Every offer of a 402 this client can pay, MPP first."""
    return mpp_offers(headers) + x402_offers(headers, body)


def _receipt(headers: Mapping[str, str]) -> tuple[bool, dict[str, Any] | None]:
    """(was money moved, the receipt) from a paid request's answer headers. A receipt header
    that does not decode still says the payment went through."""
    value = headers.get("Payment-Receipt")
    if value is not None:
        try:
            return True, mpp.decode_receipt(value)
        except ValueError:
            return True, None
    for name in ("PAYMENT-RESPONSE", "X-PAYMENT-RESPONSE"):
        value = headers.get(name)
        if value is None:
            continue
        try:
            doc = _b64json(value)
        except (ValueError, binascii.Error):
            return True, None
        if isinstance(doc, dict):
            return doc.get("success") is True, doc
        return True, None
    return False, None


class PayingClient:
    def __init__(
        self,
        private_key: bytes | str,
        *,
        max_per_request: Decimal | None = None,
        max_total: Decimal | None = None,
        dry_run: bool = False,
        session: aiohttp.ClientSession | None = None,
        no_cap: bool = False,
    ) -> None:
        if no_cap and (max_per_request is not None or max_total is not None):
            raise ValueError("no_cap=True contradicts max_per_request / max_total")
        if isinstance(private_key, str):
            private_key = bytes.fromhex(private_key.removeprefix("0x"))
        self.key = private_key
        self.address = _core.address_of(private_key)
        self.max_per_request = max_per_request
        self.max_total = max_total
        self.no_cap = no_cap
        self.dry_run = dry_run
        self.spent = Decimal(0)
        # Prices of payments in flight: counted against max_total before their answer.
        self._reserved = Decimal(0)
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
            raise PaymentDeclined(
                "the server offers no EIP-3009 payment (MPP evm/charge or x402 exact) "
                "this client can sign"
            )
        best = min(offers, key=lambda o: (o.price, _PROTOCOL_ORDER.get(o.protocol, 9)))
        if self.dry_run:
            return best
        if self.max_per_request is None and self.max_total is None and not self.no_cap:
            raise PaymentDeclined(
                "no spending cap: set max_per_request or max_total (--max-amount), "
                "or no_cap=True (--no-cap) to pay without one"
            )
        if self.max_per_request is not None and best.price > self.max_per_request:
            raise PaymentDeclined(
                f"the price {best.price} is above the per-request cap {self.max_per_request}"
            )
        committed = self.spent + self._reserved
        if self.max_total is not None and committed + best.price > self.max_total:
            raise PaymentDeclined(
                f"paying {best.price} would exceed the total cap {self.max_total} "
                f"(spent {self.spent}, in flight {self._reserved})"
            )
        return best

    def _sign(
        self, offer: Offer, valid_before: int, nonce: str | None
    ) -> tuple[dict[str, str], str]:
        return evm.sign(
            self.key,
            offer.asset,
            to=offer.pay_to,
            value=offer.amount,
            valid_before=valid_before,
            nonce=nonce,
        )

    def credential(self, offer: Offer) -> str:
        """The credential paying this offer: an MPP token (sent as `Payment <token>`) or the
        base64 x402 payment document."""
        if offer.protocol == "mpp":
            ch = offer.challenge
            assert ch is not None
            expires = mpp.parse_rfc3339(ch.expires) if ch.expires else None
            valid_before = int(expires) if expires else int(time.time()) + _DEFAULT_VALIDITY
            fields, signature = self._sign(
                offer, valid_before, evm.challenge_nonce(ch.id, ch.realm)
            )
            payload = {"type": evm.CREDENTIAL_TYPE, **fields, "signature": signature}
            token = mpp.credential_token(
                ch, payload, evm.did_pkh(offer.asset.chain_id, self.address)
            )
            return token
        fields, signature = self._sign(offer, int(time.time()) + offer.max_timeout, None)
        body: dict[str, Any] = {"authorization": fields, "signature": signature}
        doc: dict[str, Any]
        if offer.protocol == "x402-v1":
            doc = {
                "x402Version": 1,
                "scheme": "exact",
                "network": offer.asset.network,
                "payload": body,
            }
        else:
            doc = {"x402Version": 2, "accepted": dict(offer.requirements or {}), "payload": body}
            if offer.resource is not None:
                doc["resource"] = dict(offer.resource)
        return base64.b64encode(orjson.dumps(doc)).decode()

    def _paid_headers(self, headers: dict[str, str], offer: Offer) -> dict[str, str]:
        """The retry's headers: the credential in its header, no stale Payment credential in
        the other; an ordinary `Authorization` (a bearer key) stays unless it is the field."""
        out = {
            k: v
            for k, v in headers.items()
            if not (
                k.lower() in ("payment-authorization", "payment-signature", "x-payment")
                or (k.lower() == "authorization" and v.lstrip().lower().startswith("payment "))
            )
        }
        if offer.header.lower() == "authorization":
            out = {k: v for k, v in out.items() if k.lower() != "authorization"}
        credential = self.credential(offer)
        out[offer.header] = f"Payment {credential}" if offer.protocol == "mpp" else credential
        return out

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
            first.offers = offers_from(resp.headers, first.body)
        offer = self.choose(first.offers)
        if self.dry_run:
            first.paid = None
            return first
        self._reserved += offer.price
        charged = True  # until the answer says otherwise: an unknown outcome counts
        try:
            retry = self._paid_headers(h, offer)
            async with self._session.request(method, url, data=body, headers=retry) as resp:
                result = PaidResult(
                    resp.status, dict(resp.headers), await resp.read(), first.offers
                )
                moved, result.receipt = _receipt(resp.headers)
            charged = moved or 200 <= result.status < 300
        finally:
            self._reserved -= offer.price
            if charged:
                self.spent += offer.price
        if charged:
            result.paid = offer
        return result

"""What a priced request can be paid with, and the 402 that says so: pure functions of the
route's terms, with `now` passed in."""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from meterkit import _core
from meterkit.config.payments import Accept
from meterkit.payments import evm, mpp, x402
from meterkit.payments.pricing import base_units
from meterkit.payments.problems import PaymentProblem
from meterkit.problems import Problem


@dataclass(frozen=True)
class Offer:
    """One way to pay one request: an accepted asset and the amount in its base units."""

    accept: Accept
    amount: int
    # The request this offer is for (HTTP method, route, path, query), bound into the MPP
    # challenge as `_mppx_scope` (the member `pympp` servers use): a credential paid for one
    # resource cannot be spent on another at the same price.
    scope: tuple[tuple[str, str], ...] = ()

    @property
    def mpp_request(self) -> dict[str, Any]:
        """The `evm/charge` request (the shape the `pympp` client expects)."""
        a = self.accept.asset
        scope = {"_mppx_scope": dict(self.scope)} if self.scope else {}
        return {
            "amount": str(self.amount),
            "currency": _core.checksum_address(a.address),
            "recipient": _core.checksum_address(self.accept.pay_to),
            "methodDetails": {
                "chainId": a.chain_id,
                "credentialTypes": [evm.CREDENTIAL_TYPE],
                "decimals": a.decimals,
                # A custom token's EIP-712 domain, which the client signs under.
                **(
                    {"name": a.eip712_name, "version": a.eip712_version}
                    if x402.custom_token_details(a)
                    else {}
                ),
            },
            **scope,
        }

    @property
    def x402(self) -> x402.Offer:
        return x402.Offer(self.accept.asset, self.amount, self.accept.pay_to)


def request_scope(method: str, route: str, path: str, query: str) -> tuple[tuple[str, str], ...]:
    """The scope of one request: what `pympp` binds (`http_method`, `route`, `resource`, and
    `query` when there is one)."""
    scope = [("http_method", method), ("route", route), ("resource", path)]
    if query:
        scope.append(("query", query))
    return tuple(scope)


def make_offers(
    price: Decimal, accepts: Sequence[Accept], scope: tuple[tuple[str, str], ...] = ()
) -> list[Offer]:
    return [Offer(a, base_units(price, a.asset), scope) for a in accepts]


@dataclass(frozen=True)
class ChallengeTerms:
    """What a 402 for one request binds: who asks, for what body, until when."""

    secret: bytes
    realm: str
    digest: str | None
    resource: str
    description: str
    # Seconds a challenge stays valid.
    expires: float
    protocols: tuple[str, ...]
    # The header the client must send its MPP credential in (None: Authorization).
    header: str | None = None


def challenges(
    terms: ChallengeTerms, offers: Sequence[Offer], now: float, route_description: str | None
) -> list[mpp.Challenge]:
    expires = mpp.rfc3339(now + terms.expires)
    # Every challenge gets a random `opaque` nonce: two identical requests in the same second
    # must not get the same challenge id, which would give both the same EIP-3009 nonce and
    # make the second payment a replay of the first.
    return [
        mpp.make_challenge(
            terms.secret,
            realm=terms.realm,
            method="evm",
            intent="charge",
            request=o.mpp_request,
            expires=expires,
            digest=terms.digest,
            opaque={"n": secrets.token_hex(12)},
            description=route_description,
            header=terms.header,
        )
        for o in offers
    ]


def refusal(
    e: PaymentProblem,
    terms: ChallengeTerms,
    offers: Sequence[Offer],
    price: Decimal,
    now: float,
    route_description: str | None,
) -> Problem:
    """The answer to a request whose payment is missing or refused: with fresh challenges
    (every configured protocol) when the client may pay again, without them when the money
    may already have moved."""
    headers: list[tuple[str, str]] = []
    extra: dict[str, Any] = dict(e.extra)
    if e.fresh_challenge:
        x_offers = [o.x402 for o in offers]
        timeout = int(terms.expires)
        if "mpp" in terms.protocols:
            headers += [
                ("WWW-Authenticate", ch.header())
                for ch in challenges(terms, offers, now, route_description)
            ]
        if "x402" in terms.protocols:
            headers.append(
                (
                    "PAYMENT-REQUIRED",
                    x402.payment_required_v2(
                        x_offers, terms.resource, terms.description, timeout, e.detail
                    ),
                )
            )
            extra.update(
                x402.payment_required_v1(
                    x_offers, terms.resource, terms.description, timeout, e.detail
                )
            )
        extra["price"] = str(price)
    return e.problem(headers, extra)

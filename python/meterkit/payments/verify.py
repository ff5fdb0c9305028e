"""Checking a payment credential against the offers of one request: pure functions of the
credential, the terms and `now`. Each returns who paid, with which offer, or raises the
`PaymentProblem` that says why not."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from meterkit.payments import evm, mpp, x402
from meterkit.payments.offers import Offer
from meterkit.payments.problems import (
    InvalidChallenge,
    MalformedCredential,
    MalformedPayment,
    MethodUnsupported,
    PaymentExpired,
    VerificationFailed,
)


@dataclass(frozen=True)
class Verified:
    protocol: str  # mpp | x402-v1 | x402-v2
    offer: Offer
    auth: evm.Authorization
    payer: str
    challenge_id: str | None = None


def verify_mpp(
    token: str,
    offers: Sequence[Offer],
    *,
    field: str = mpp.AUTHORIZATION,
    secret: bytes,
    realm: str,
    digest: str | None,
    now: float,
    max_validity: float,
) -> Verified:
    cred = mpp.decode_credential(token)
    ch = cred.challenge
    # 1. The id binds the echoed terms: issued by us, unaltered.
    if not ch.bound(secret):
        raise InvalidChallenge(
            "the challenge id does not match its terms (not issued here, or altered)",
            reason="hmac",
        )
    if (ch.method, ch.intent) != ("evm", "charge"):
        raise MethodUnsupported(
            f"payment method {ch.method}/{ch.intent} is not accepted here", reason="method"
        )
    # 2. The echoed terms are today's terms for this request.
    if ch.realm != realm:
        raise InvalidChallenge("the challenge was issued for another realm", reason="realm")
    wanted = ch.request_json
    scope = dict(offers[0].scope) if offers else {}
    if wanted.get("_mppx_scope", {}) != scope:
        raise InvalidChallenge(
            "the challenge was issued for another resource (method, route, path or query)",
            reason="scope",
        )
    if field.lower() != ch.credential_header.lower():
        raise InvalidChallenge(
            f"the challenge asked for the credential in {ch.credential_header}, not {field}",
            reason="header",
        )
    offer = next((o for o in offers if o.mpp_request == wanted), None)
    if offer is None:
        raise InvalidChallenge(
            "the challenge's terms are not what this request costs now", reason="terms"
        )
    if not mpp.same_digest(ch.digest, digest):
        raise InvalidChallenge(
            "the request body is not the one the challenge was issued for", reason="digest"
        )
    # `opaque` carries the challenge's own random nonce: bound by the HMAC, nothing to check.
    # 3. Expiry: required, and in the future.
    if ch.expires is None:
        raise InvalidChallenge("the challenge has no expiry", reason="no_expires")
    expires = mpp.parse_rfc3339(ch.expires)
    if expires is None:
        raise InvalidChallenge("the challenge expiry is not an RFC 3339 time", reason="expires")
    if expires <= now:
        raise PaymentExpired(f"the challenge expired at {ch.expires}", reason="expired_challenge")
    # 4. The payload: an EIP-3009 authorization bound to this challenge.
    p = cred.payload
    if p.get("type") != evm.CREDENTIAL_TYPE:
        raise MalformedCredential(
            "the evm/charge payload type must be 'authorization'", reason="payload_type"
        )
    auth = evm.parse_authorization(p, p.get("signature"))
    payer = evm.verify(
        auth,
        evm.Terms(offer.accept.asset, offer.amount, offer.accept.pay_to),
        now=now,
        max_valid_before=max(now + max_validity, expires),
        nonce=evm.challenge_nonce(ch.id, ch.realm),
    )
    if (
        cred.source is not None
        and cred.source.lower() != evm.did_pkh(offer.accept.asset.chain_id, payer).lower()
    ):
        raise VerificationFailed("the credential's source is not the payer", reason="source")
    return Verified("mpp", offer, auth, payer, ch.id)


def verify_x402(
    header: str, value: str, offers: Sequence[Offer], *, now: float, max_validity: float
) -> Verified:
    pay = x402.decode_payment(value, header)
    if pay.scheme != "exact":
        raise MethodUnsupported(f"x402 scheme {pay.scheme!r} is not accepted", reason="scheme")
    offer = next(
        (o for o in offers if pay.network in (o.accept.asset.network, o.accept.asset.caip2)),
        None,
    )
    if offer is None:
        raise VerificationFailed(f"network {pay.network} is not accepted here", reason="network")
    if pay.accepted is not None:
        terms = x402.requirements_v2(offer.x402, 0)
        for k in ("amount", "asset", "payTo"):
            if str(pay.accepted.get(k, "")).lower() != str(terms[k]).lower():
                raise VerificationFailed(
                    f"the accepted terms differ from today's ({k})", reason="terms"
                )
    if not isinstance(pay.authorization, dict):
        raise MalformedPayment("payload.authorization must be an object", reason="shape")
    auth = evm.parse_authorization(pay.authorization, pay.signature, problem=MalformedPayment)
    payer = evm.verify(
        auth,
        evm.Terms(offer.accept.asset, offer.amount, offer.accept.pay_to),
        now=now,
        max_valid_before=now + max_validity,
    )
    return Verified(f"x402-v{pay.version}", offer, auth, payer)


def authorization_of(
    header: str, value: str, offers: Sequence[Offer]
) -> tuple[evm.Authorization, Offer] | None:
    """The authorization a credential carries and the offer it pays, read without checking
    anything (no expiry, no signature): to look up what it already paid for. `header`:
    `Authorization`/`Payment-Authorization` (MPP) or `PAYMENT-SIGNATURE`/`X-PAYMENT` (x402).
    None when it cannot be read."""
    try:
        if header.upper() in ("PAYMENT-SIGNATURE", "X-PAYMENT"):
            pay = x402.decode_payment(value, header)
            offer = next(
                (
                    o
                    for o in offers
                    if pay.network in (o.accept.asset.network, o.accept.asset.caip2)
                ),
                None,
            )
            if offer is None or not isinstance(pay.authorization, dict):
                return None
            auth = evm.parse_authorization(pay.authorization, pay.signature)
            return auth, offer
        cred = mpp.decode_credential(value)
        offer = next((o for o in offers if o.mpp_request == cred.challenge.request_json), None)
        if offer is None:
            return None
        return evm.parse_authorization(cred.payload, cred.payload.get("signature")), offer
    except Exception:  # any defect: nothing to look up (verification says what is wrong)
        return None

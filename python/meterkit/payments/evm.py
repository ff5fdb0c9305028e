"""EIP-3009 `transferWithAuthorization` payments (MPP `evm/charge`, x402 `exact`): checking an
authorization against the terms it must pay, and building one (the paying client).

EIP-712 hashing and secp256k1 recovery run in the Rust core.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any

import orjson

from meterkit import _core
from meterkit.config.payments import Asset
from meterkit.payments.problems import MalformedCredential, PaymentInsufficient, VerificationFailed

CREDENTIAL_TYPE = "authorization"
_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")
_HASH = re.compile(r"0x[0-9a-fA-F]{64}")
_SIG = re.compile(r"0x(?:[0-9a-fA-F]{128}|[0-9a-fA-F]{130})")
_UINT = re.compile(r"[0-9]{1,78}")
UINT256_MAX = 2**256 - 1


# The EIP-712 type of an EIP-3009 authorization, in the typed-data form other libraries
# (eth-account) take: the benchmark and the tests hand it to them to cross-check the core.
TRANSFER_WITH_AUTHORIZATION = {
    "TransferWithAuthorization": [
        {"name": "from", "type": "address"},
        {"name": "to", "type": "address"},
        {"name": "value", "type": "uint256"},
        {"name": "validAfter", "type": "uint256"},
        {"name": "validBefore", "type": "uint256"},
        {"name": "nonce", "type": "bytes32"},
    ]
}


def eip712_domain(asset: Asset) -> dict[str, Any]:
    return {
        "name": asset.eip712_name,
        "version": asset.eip712_version,
        "chainId": asset.chain_id,
        "verifyingContract": asset.address,
    }


@dataclass(frozen=True)
class Authorization:
    """A parsed (not yet verified) EIP-3009 authorization."""

    from_address: str
    to: str
    value: int
    valid_after: int
    valid_before: int
    nonce: str
    signature: str

    def fields(self) -> dict[str, str]:
        return {
            "from": self.from_address,
            "to": self.to,
            "value": str(self.value),
            "validAfter": str(self.valid_after),
            "validBefore": str(self.valid_before),
            "nonce": self.nonce,
        }


@dataclass(frozen=True)
class Terms:
    """What an authorization must pay: amount in base units, asset, recipient."""

    asset: Asset
    amount: int
    pay_to: str


def parse_authorization(
    fields: Any,
    signature: Any,
    *,
    problem: type[MalformedCredential] = MalformedCredential,
) -> Authorization:
    """Check the shape of an authorization (any JSON value in, an `Authorization` or a
    `problem` out): addresses, 32-byte nonce, decimal strings within uint256, a hex signature.
    x402 callers pass `problem=MalformedPayment` (400 on that transport)."""
    if not isinstance(fields, dict):
        raise problem("authorization must be an object", reason="shape")
    for key, pattern in (
        ("from", _ADDRESS),
        ("to", _ADDRESS),
        ("nonce", _HASH),
        ("value", _UINT),
        ("validAfter", _UINT),
        ("validBefore", _UINT),
    ):
        v = fields.get(key)
        # fullmatch: `$` accepts a trailing newline, which the core then refuses (a 500).
        if not isinstance(v, str) or not pattern.fullmatch(v):
            raise problem(f"authorization.{key} is malformed", reason="shape")
    if not isinstance(signature, str) or not _SIG.fullmatch(signature):
        raise problem("the signature must be 0x + 64 or 65 bytes of hex", reason="shape")
    values = [int(fields[k]) for k in ("value", "validAfter", "validBefore")]
    if any(v > UINT256_MAX for v in values):
        raise problem("authorization value out of range", reason="shape")
    return Authorization(
        fields["from"],
        fields["to"],
        values[0],
        values[1],
        values[2],
        fields["nonce"].lower(),
        signature,
    )


def digest(auth: Authorization, asset: Asset) -> bytes:
    return _core.eip3009_digest(
        name=asset.eip712_name,
        version=asset.eip712_version,
        chain_id=asset.chain_id,
        verifying_contract=asset.address,
        from_address=auth.from_address,
        to=auth.to,
        value=str(auth.value),
        valid_after=str(auth.valid_after),
        valid_before=str(auth.valid_before),
        nonce=auth.nonce,
    )


def challenge_nonce(challenge_id: str, realm: str) -> str:
    """MPP binds an `evm/charge` authorization to its challenge: the EIP-3009 nonce is
    keccak256 of the JSON array `[id, realm]` (compact, as the `pympp` package and mppx do)."""
    encoded = orjson.dumps([challenge_id, realm])
    return "0x" + _core.keccak256(encoded).hex()


def verify(
    auth: Authorization,
    terms: Terms,
    *,
    now: float,
    max_valid_before: float,
    nonce: str | None = None,
) -> str:
    """Check an authorization against the terms; the checksummed payer, or a problem.

    Order: recipient, amount, challenge binding, validity window, then the signature (the
    expensive step last)."""
    if auth.to.lower() != terms.pay_to.lower():
        raise VerificationFailed(
            "the authorization pays another recipient", reason="wrong_recipient"
        )
    if auth.value < terms.amount:
        raise PaymentInsufficient(
            f"the authorization pays {auth.value}, the price is {terms.amount}", reason="underpaid"
        )
    if auth.value != terms.amount:
        raise VerificationFailed(
            f"the authorization pays {auth.value}, the price is {terms.amount}",
            reason="wrong_amount",
        )
    if nonce is not None and auth.nonce != nonce.lower():
        raise VerificationFailed(
            "the authorization is not bound to this challenge", reason="unbound"
        )
    if auth.valid_after > now:
        raise VerificationFailed("the authorization is not valid yet", reason="not_yet_valid")
    if auth.valid_before <= now:
        raise VerificationFailed("the authorization has expired", reason="expired")
    if auth.valid_before > max_valid_before:
        raise VerificationFailed("the authorization is valid for too long", reason="too_long")
    try:
        signer = _core.recover_address(digest(auth, terms.asset), bytes.fromhex(auth.signature[2:]))
    except ValueError as e:
        raise VerificationFailed(f"the signature is invalid: {e}", reason="bad_signature") from None
    if signer.lower() != auth.from_address.lower():
        raise VerificationFailed("the signature is not the payer's", reason="forged_signature")
    return signer


def claim_key(auth: Authorization, asset: Asset) -> str:
    """One key per authorization: chain, token, payer, nonce (EIP-3009 nonces are unique per
    payer on a token contract)."""
    return f"eip3009:{asset.chain_id}:{asset.address.lower()}:{auth.from_address.lower()}:{auth.nonce.lower()}"


def sign(
    secret_key: bytes,
    asset: Asset,
    *,
    to: str,
    value: int,
    valid_before: int,
    nonce: str | None = None,
    valid_after: int = 0,
) -> tuple[dict[str, str], str]:
    """Build and sign an authorization (the paying side)."""
    auth = Authorization(
        from_address=_core.address_of(secret_key),
        to=_core.checksum_address(to),
        value=value,
        valid_after=valid_after,
        valid_before=valid_before,
        nonce=(nonce or "0x" + os.urandom(32).hex()).lower(),
        signature="",
    )
    signature = "0x" + _core.sign_digest(secret_key, digest(auth, asset)).hex()
    return auth.fields(), signature


def did_pkh(chain_id: int, address: str) -> str:
    return f"did:pkh:eip155:{chain_id}:{_core.checksum_address(address)}"

"""Well-formed payment header values (an MPP `Payment` credential, x402 v1 and v2 payment
headers) to start from: the malformed-value tests mutate them, the client tests answer with
them."""

from __future__ import annotations

import base64
import time
from typing import Any

import orjson

from meterkit import _core
from meterkit.config.payments import KNOWN_ASSETS
from meterkit.payments import evm, mpp, x402

SECRET = b"payment-secret-for-tests-0123456789"
PAY_TO = "0x" + "22" * 20
ASSET = KNOWN_ASSETS[("USDC", "base-sepolia")]
KEY = bytes(31) + b"\x07"


def challenge(amount: int = 10_000, header: str | None = None) -> mpp.Challenge:
    return mpp.make_challenge(
        SECRET,
        realm="127.0.0.1",
        method="evm",
        intent="charge",
        request={
            "amount": str(amount),
            "currency": ASSET.address,
            "recipient": PAY_TO,
            "methodDetails": {"chainId": 84532, "credentialTypes": ["authorization"]},
        },
        expires=mpp.rfc3339(time.time() + 300),
        header=header,
    )


def mpp_credential_obj(amount: int = 10_000) -> dict[str, Any]:
    """The JSON object of a valid `Authorization: Payment` credential."""
    ch = challenge(amount)
    fields, sig = evm.sign(
        KEY,
        ASSET,
        to=PAY_TO,
        value=amount,
        valid_before=int(time.time()) + 300,
        nonce=evm.challenge_nonce(ch.id, ch.realm),
    )
    return {
        "challenge": ch.echo(),
        "payload": {"type": "authorization", **fields, "signature": sig},
        "source": evm.did_pkh(ASSET.chain_id, _core.address_of(KEY)),
    }


def x402_obj(version: int, amount: int = 10_000) -> dict[str, Any]:
    """The JSON object of a valid x402 payment header (`X-PAYMENT` for 1, else v2)."""
    fields, sig = evm.sign(KEY, ASSET, to=PAY_TO, value=amount, valid_before=int(time.time()) + 300)
    payload = {"authorization": fields, "signature": sig}
    if version == 1:
        return {"x402Version": 1, "scheme": "exact", "network": ASSET.network, "payload": payload}
    offer = x402.Offer(ASSET, amount, PAY_TO)
    return {"x402Version": 2, "accepted": x402.requirements_v2(offer, 60), "payload": payload}


def b64url(obj: Any) -> str:
    raw = obj if isinstance(obj, bytes) else orjson.dumps(obj)
    return mpp.b64url(raw)


def b64(obj: Any) -> str:
    raw = obj if isinstance(obj, bytes) else orjson.dumps(obj)
    return base64.b64encode(raw).decode()

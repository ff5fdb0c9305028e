"""Well-formed payment header values (an MPP `Payment` credential, x402 v1 and v2 payment
headers) to start from: the malformed-value tests mutate them, the client tests answer with
them."""

from __future__ import annotations

import base64
import json
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


# ---- malformed values: wrong types anywhere in a valid header, and deep nesting ------------


def nested(depth: int, opener: str = "[", closer: str = "]") -> bytes:
    return (opener * depth + closer * depth).encode()


DEEP = [
    nested(1100),
    nested(5000),
    b'{"a":' * 1100 + b"1" + b"}" * 1100,
    b'{"challenge":' + nested(1100) + b',"payload":{}}',
    b'{"x402Version":2,"accepted":' + nested(1100) + b',"payload":{}}',
    b'{"x402Version":1,"scheme":"exact","network":"base","payload":{"authorization":'
    + nested(3000)
    + b"}}",
    nested(40),  # beyond MAX_DEPTH, within the stdlib's recursion limit
    b"[" * 1100,  # unterminated
]


def replace(obj: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    out = dict(obj) if isinstance(obj, dict) else list(obj)
    out[path[0]] = replace(out[path[0]], path[1:], value)
    return out


def paths(obj: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += paths(v, (*prefix, k))
    return out


WRONG_VALUES: list[Any] = [
    None,
    True,
    0,
    -1,
    1.5,
    10**80,
    [],
    [1, 2],
    {},
    "",
    "x" * 70_000,
    "é",
    "0x" + "1" * 40 + "\n",
    "0x" + "a" * 64 + "\n",
    "１２３",
    "1" * 5000,
]


def corpus() -> list[tuple[str, bytes]]:
    bases = {
        "mpp": mpp_credential_obj(),
        "x402v1": x402_obj(1),
        "x402v2": x402_obj(2),
    }
    out = []
    for name, base in bases.items():
        for p in paths(base)[1:]:
            for v in WRONG_VALUES:
                out.append((f"{name}:{'.'.join(map(str, p))}={str(v)[:12]!r}", replace(base, p, v)))
    # json, not orjson: the corpus holds integers past 64 bits on purpose.
    return [(n, json.dumps(o).encode()) for n, o in out]

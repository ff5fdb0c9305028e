"""Paying a meterkit route from a test: the 402's MPP challenge, and a credential signed for
it with a throwaway key (what `meterkit pay` does, spelled out)."""

from __future__ import annotations

import asyncio
import os
from decimal import Decimal
from typing import Any

from meterkit.bench.processes import Process
from meterkit.client import PayingClient
from meterkit.config.payments import KNOWN_ASSETS
from meterkit.payments import evm, mpp
from support.http import request

SECRET = "payment-secret-for-tests-0123456789"
PAY_TO = "0x" + "22" * 20
ASSET = KNOWN_ASSETS[("USDC", "base-sepolia")]
CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "Hello there"}]}


def key() -> bytes:
    return os.urandom(31) + b"\x01"


def challenges(www_authenticate: list[str]) -> list[mpp.Challenge]:
    return mpp.parse_challenges(www_authenticate)


def credential(ch: mpp.Challenge, secret_key: bytes, **over: Any) -> str:
    req = ch.request_json
    fields, sig = evm.sign(
        secret_key,
        ASSET,
        to=over.pop("to", req["recipient"]),
        value=over.pop("value", int(req["amount"])),
        valid_before=over.pop("valid_before", int(mpp.parse_rfc3339(ch.expires or "") or 0)),
        nonce=over.pop("nonce", evm.challenge_nonce(ch.id, ch.realm)),
    )
    payload = {"type": "authorization", **fields, "signature": over.pop("signature", sig)}
    return mpp.credential_token(ch, payload)


def paid(tree: dict[str, Any], ledger_path: str) -> dict[str, Any]:
    """`tree` with the payment settings a priced route needs (deferred settlement: the
    authorization is queued in the SQLite ledger, nothing leaves the machine)."""
    return {
        **tree,
        "wallets": {"base-sepolia": PAY_TO},
        "accepts": [{"asset": "USDC", "network": "base-sepolia"}],
        "payments": {"secret": SECRET, "settlement": {"type": "deferred"}},
        "ledger": {"type": "sqlite", "path": ledger_path},
    }


def priced_now_route(upstream_url: str) -> dict[str, Any]:
    """One route, `POST /now`, at $0.01 a request to the chat endpoint of `upstream_url`:
    the gateway the crash tests pay and kill (add payments with `paid`)."""
    return {
        "gateway": {"host": "127.0.0.1"},
        "upstreams": {"mock": {"url": upstream_url}},
        "routes": {
            "POST /now": {"upstream": "mock", "path": "/v1/chat/completions", "price": "$0.01"}
        },
        "logging": {"level": "error"},
    }


def pay(
    url: str,
    path: str,
    body: dict[str, Any] | None = None,
    secret_key: bytes | None = None,
    headers: dict[str, str] | None = None,
    **kw: Any,
) -> Any:
    if not ({"max_per_request", "max_total", "no_cap", "dry_run"} & kw.keys()):
        # The client refuses to pay without a cap; every test price is below a dollar.
        kw["max_total"] = Decimal("1")

    async def go() -> Any:
        async with PayingClient(secret_key or key(), **kw) as client:
            return await client.request("POST", url + path, json=body or CHAT, headers=headers)

    return asyncio.run(go())


def challenge_for(
    gateway: Process, path: str = "/v1/chat/completions", body: dict[str, Any] | None = None
) -> mpp.Challenge:
    from multidict import CIMultiDict

    status, headers, _ = request(gateway.url, "POST", path, body or CHAT)
    assert status == 402
    (ch,) = mpp.parse_challenges(CIMultiDict(headers.items()).getall("WWW-Authenticate"))
    return ch


def claim_key(token: str) -> str:
    """The ledger key of the authorization inside an MPP credential."""
    cred = mpp.decode_credential(token)
    auth = evm.parse_authorization(cred.payload, cred.payload.get("signature"))
    return evm.claim_key(auth, ASSET)

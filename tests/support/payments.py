"""Paying a meterkit route from a test: the 402's MPP challenge, and a credential signed for
it with a throwaway key (what `meterkit pay` does, spelled out)."""

from __future__ import annotations

import os
from typing import Any

from meterkit.config.payments import KNOWN_ASSETS
from meterkit.payments import evm, mpp

SECRET = "payment-secret-for-tests-0123456789"
PAY_TO = "0x" + "22" * 20
ASSET = KNOWN_ASSETS[("USDC", "base-sepolia")]


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

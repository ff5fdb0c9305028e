"""A payment claim row for ledger tests: `claim_row(n, status)` is claim `k{n}` with a nonce
and request id of its own."""

from __future__ import annotations

import time

import orjson

from meterkit.payments.ledger import Claim


def claim_row(n: int, status: str, valid_before: int | None = None) -> Claim:
    return Claim(
        claim_key=f"k{n}",
        status=status,
        protocol="mpp",
        network="eip155:31337",
        asset="0xtoken",
        payer="0xpayer",
        pay_to="0xpayto",
        amount="10000",
        nonce=f"0x{n:064x}",
        valid_before=valid_before if valid_before is not None else int(time.time()) + 3600,
        route="POST /paid",
        request_id=f"r{n}",
        challenge_id=None,
        authorization_json=orjson.dumps({"authorization": {"n": n}}).decode(),
    )

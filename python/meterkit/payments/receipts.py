"""What a settled payment tells the payer: the receipt and the response headers each
protocol carries it in."""

from __future__ import annotations

from typing import Any

from meterkit.payments import mpp, x402
from meterkit.payments.verify import Verified


def receipt(v: Verified, reference: str | None, settlement: str, now: float) -> dict[str, Any]:
    asset = v.offer.accept.asset
    out: dict[str, Any] = {
        "status": "success",
        "method": "evm",
        "intent": "charge",
        "timestamp": mpp.rfc3339(now),
        "reference": reference,
        "payer": v.payer,
        "amount": str(v.offer.amount),
        "currency": asset.address,
        "network": asset.caip2,
        "settlement": settlement,
    }
    if v.challenge_id:
        out["challengeId"] = v.challenge_id
    return out


def response_headers(v: Verified, rcpt: dict[str, Any]) -> dict[str, str]:
    """The headers that carry `rcpt` in the protocol the payer used."""
    h = {"Cache-Control": "private"}
    if v.protocol == "mpp":
        h["Payment-Receipt"] = mpp.receipt_header(rcpt)
    else:
        asset = v.offer.accept.asset
        name = "X-PAYMENT-RESPONSE" if v.protocol == "x402-v1" else "PAYMENT-RESPONSE"
        network = asset.network if v.protocol == "x402-v1" else asset.caip2
        # A request served again without a second charge says so, as the MPP receipt does.
        ext = {"meterkit": {"redelivery": True}} if rcpt.get("redelivery") else None
        h[name] = x402.payment_response(True, rcpt["reference"], network, v.payer, None, ext)
    return h

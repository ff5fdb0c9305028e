"""x402 compatibility (see docs/protocols.md): the v1 JSON body and the v2 `PAYMENT-REQUIRED` header
offered on a 402, the `X-PAYMENT` (v1) and `PAYMENT-SIGNATURE` (v2) request headers, and the
`X-PAYMENT-RESPONSE` / `PAYMENT-RESPONSE` answers."""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any

import orjson

from meterkit.config.payments import KNOWN_ASSETS, Asset
from meterkit.payments import evm, wirejson
from meterkit.payments.problems import MalformedPayment

MAX_HEADER = 64 * 1024


@dataclass(frozen=True)
class Offer:
    """One way to pay a request: an asset, its amount in base units, the recipient."""

    asset: Asset
    amount: int
    pay_to: str


def requirements_v1(offer: Offer, resource: str, description: str, timeout: int) -> dict[str, Any]:
    return {
        "scheme": "exact",
        "network": offer.asset.network,
        "maxAmountRequired": str(offer.amount),
        "asset": offer.asset.address,
        "payTo": offer.pay_to,
        "resource": resource,
        "description": description,
        "mimeType": "application/json",
        "maxTimeoutSeconds": timeout,
        "extra": {"name": offer.asset.eip712_name, "version": offer.asset.eip712_version},
    }


def requirements_v2(offer: Offer, timeout: int) -> dict[str, Any]:
    return {
        "scheme": "exact",
        "network": offer.asset.caip2,
        "amount": str(offer.amount),
        "asset": offer.asset.address,
        "payTo": offer.pay_to,
        "maxTimeoutSeconds": timeout,
        "extra": {
            "name": offer.asset.eip712_name,
            "version": offer.asset.eip712_version,
            "assetTransferMethod": "eip3009",
            **custom_token_details(offer.asset),
        },
    }


def custom_token_details(asset: Asset) -> dict[str, Any]:
    """What a client cannot know about a token that is not a well-known one: its decimals
    (a cap in token units is read with them). Nothing for the known USDC deployments, whose
    offers stay byte for byte what they were."""
    if any(a == asset for a in KNOWN_ASSETS.values()):
        return {}
    return {"decimals": asset.decimals}


def payment_required_v2(
    offers: list[Offer],
    resource: str,
    description: str,
    timeout: int,
    error: str = "payment required",
) -> str:
    body = {
        "x402Version": 2,
        "error": error,
        "resource": {"url": resource, "description": description, "mimeType": "application/json"},
        "accepts": [requirements_v2(o, timeout) for o in offers],
    }
    return base64.b64encode(orjson.dumps(body)).decode()


def payment_required_v1(
    offers: list[Offer],
    resource: str,
    description: str,
    timeout: int,
    error: str = "payment required",
) -> dict[str, Any]:
    return {
        "x402Version": 1,
        "error": error,
        "accepts": [requirements_v1(o, resource, description, timeout) for o in offers],
    }


@dataclass(frozen=True)
class X402Payment:
    version: int
    scheme: str
    network: str  # as sent: v1 name or CAIP-2
    accepted: dict[str, Any] | None
    authorization: Any
    signature: Any
    raw: dict[str, Any]


def _b64json(value: str) -> dict[str, Any]:
    if len(value) > MAX_HEADER:
        raise MalformedPayment("the payment header is larger than 64 KiB", reason="too_large")
    text = value.strip()
    try:
        raw = base64.b64decode(
            text + "=" * (-len(text) % 4),
            altchars=b"-_" if ("-" in text or "_" in text) else None,
            validate=True,
        )
    except (ValueError, binascii.Error):
        raise MalformedPayment("the payment header is not base64", reason="base64") from None
    try:
        obj = wirejson.loads(raw)
    except ValueError as e:
        raise MalformedPayment(
            f"the payment header is not valid JSON: {e}", reason="json"
        ) from None
    if not isinstance(obj, dict):
        raise MalformedPayment("the payment header must hold a JSON object", reason="shape")
    return obj


def decode_payment(value: str, header: str) -> X402Payment:
    """Decode an `X-PAYMENT` (v1) or `PAYMENT-SIGNATURE` (v2) header. Every defect is a
    `MalformedPayment` (400, per the x402 HTTP transport); for the `exact` scheme that
    includes an authorization whose fields are not well-formed, so nothing malformed reaches
    verification."""
    obj = _b64json(value)
    version = obj.get("x402Version")
    payload = obj.get("payload")
    if type(version) is not int or version not in (1, 2):
        raise MalformedPayment("x402Version must be 1 or 2", reason="version")
    if (header.upper() == "X-PAYMENT") != (version == 1):
        raise MalformedPayment(f"{header} carries x402 version {version}", reason="version")
    if not isinstance(payload, dict):
        raise MalformedPayment("payload must be an object", reason="shape")
    if version == 1:
        scheme, network, accepted = obj.get("scheme"), obj.get("network"), None
    else:
        accepted = obj.get("accepted")
        if not isinstance(accepted, dict):
            raise MalformedPayment("accepted must be an object", reason="shape")
        scheme, network = accepted.get("scheme"), accepted.get("network")
    if not isinstance(scheme, str) or not isinstance(network, str):
        raise MalformedPayment("scheme and network must be strings", reason="shape")
    if scheme == "exact":
        evm.parse_authorization(
            payload.get("authorization"), payload.get("signature"), problem=MalformedPayment
        )
    return X402Payment(
        version,
        scheme,
        network,
        accepted,
        payload.get("authorization"),
        payload.get("signature"),
        obj,
    )


def payment_response(
    success: bool,
    transaction: str,
    network: str,
    payer: str | None,
    error: str | None = None,
    extensions: dict[str, Any] | None = None,
) -> str:
    body: dict[str, Any] = {
        "success": success,
        "transaction": transaction,
        "network": network,
        "payer": payer,
    }
    if error:
        body["errorReason"] = error
    if extensions:
        # x402's settle response carries `extensions` (an object the client keeps as it is).
        body["extensions"] = extensions
    return base64.b64encode(orjson.dumps(body)).decode()

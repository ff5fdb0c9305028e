"""Discovery of priced routes: `GET /.well-known/x402` (x402 v2 shape) and an OpenAPI 3.1
document whose operations carry their prices (`x-payment`)."""

from __future__ import annotations

from typing import Any

from meterkit.config import Config, Route
from meterkit.payments import x402
from meterkit.payments.pricing import base_units


def _path(route: Route) -> str:
    parts = []
    for s in route.segments:
        parts.append("{" + s[1:] + "}" if s.startswith(":") else ("{path}" if s == "*" else s))
    return "/" + "/".join(parts)


def pricing(route: Route) -> dict[str, Any]:
    p = route.payment
    if p.type == "token-based":
        return {
            "type": "token-based",
            "quote": "prompt tokens + max completion tokens, paid up front",
            "rates_per_million_tokens": {
                m: {"input": str(r.input * 1_000_000), "output": str(r.output * 1_000_000)}
                for m, r in p.rates_by_model.items()
            },
        }
    if p.prices_by_model:
        return {"type": "per-model", "prices": {m: f"${v}" for m, v in p.prices_by_model.items()}}
    return {"type": "fixed", "price": f"${p.price}"}


def well_known(config: Config, base_url: str) -> dict[str, Any]:
    resources = []
    timeout = int(config.payments.expires)
    for r in config.routes:
        if not r.payment.priced:
            continue
        accepts = []
        if (
            r.payment.type == "fixed"
            and r.payment.price is not None
            and not r.payment.prices_by_model
        ):
            accepts = [
                x402.requirements_v2(
                    x402.Offer(a.asset, base_units(r.payment.price, a.asset), a.pay_to), timeout
                )
                for a in config.accepts
            ]
        resources.append(
            {
                "resource": {
                    "url": base_url + _path(r),
                    "description": r.payment.description or r.key,
                    "mimeType": "application/json",
                },
                "method": r.method,
                "path": _path(r),
                "pricing": pricing(r),
                "settlement": r.payment.settlement,
                "accepts": accepts,
                "networks": [
                    {
                        "network": a.asset.caip2,
                        "asset": a.asset.address,
                        "payTo": a.pay_to,
                        "symbol": a.asset.symbol,
                    }
                    for a in config.accepts
                ],
            }
        )
    return {"x402Version": 2, "resources": resources}


def openapi(config: Config, base_url: str) -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for r in config.routes:
        op: dict[str, Any] = {
            "summary": r.payment.description or r.key,
            "operationId": r.key,
            "responses": {"200": {"description": "the upstream's answer"}},
        }
        params = [
            {"name": s[1:], "in": "path", "required": True, "schema": {"type": "string"}}
            for s in r.segments
            if s.startswith(":")
        ]
        if params:
            op["parameters"] = params
        if r.payment.priced:
            op["x-payment"] = {
                **pricing(r),
                "settlement": r.payment.settlement,
                "protocols": list(config.payments.protocols),
                "accepts": [
                    {"network": a.asset.caip2, "asset": a.asset.address, "payTo": a.pay_to}
                    for a in config.accepts
                ],
            }
            op["responses"]["402"] = {
                "description": "Payment required: WWW-Authenticate: Payment challenges, "
                "PAYMENT-REQUIRED (x402 v2) and an x402 v1 body"
            }
        if r.budget:
            op["responses"]["429"] = {"description": f"token budget {r.budget!r} exceeded"}
        methods = (
            ["get", "post", "put", "patch", "delete"] if r.method == "*" else [r.method.lower()]
        )
        for m in methods:
            paths.setdefault(_path(r), {})[m] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": "meterkit gateway", "version": "1"},
        "servers": [{"url": base_url}],
        "paths": paths,
    }

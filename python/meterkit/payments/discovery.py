"""Discovery of priced routes: `GET /.well-known/x402` (x402 v2 shape) and an OpenAPI 3.1
document whose operations carry their prices (`x-payment`)."""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

from meterkit.config import Config, Route
from meterkit.payments import x402
from meterkit.payments.pricing import base_units


def decimal_text(d: Decimal) -> str:
    """A decimal as people write it: "2.5", "10", "0.0000025" — never "2.5000000" (what
    the division per token leaves) nor "1E+1" (what `normalize()` alone gives)."""
    text = format(d.normalize(), "f")
    return text if text != "-0" else "0"


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
                m: {
                    "input": decimal_text(r.input * 1_000_000),
                    "output": decimal_text(r.output * 1_000_000),
                }
                for m, r in p.rates_by_model.items()
            },
        }
    if p.prices_by_model:
        return {
            "type": "per-model",
            "prices": {m: f"${v}" for m, v in p.prices_by_model.items()},
        }
    # Prices keep the precision the operator wrote ("$0.10"); rates are computed per token,
    # so they are rendered canonically.
    return {"type": "fixed", "price": f"${p.price}"}


def accepts(config: Config, route: Route) -> list[dict[str, Any]]:
    """x402 v2 requirements of a priced route, one per accepted asset: with its `amount` for
    a fixed price; per model (`extra.model`) for per-model prices; without an `amount` for a
    token-based route, whose price is quoted per request (`extra.pricing: "token-based"`,
    the rates under the resource's `pricing`)."""
    p = route.payment
    timeout = int(config.payments.expires)
    out: list[dict[str, Any]] = []
    for a in config.accepts:
        if p.type == "token-based":
            req = x402.requirements_v2(x402.Offer(a.asset, 0, a.pay_to), timeout)
            del req["amount"]
            req["extra"]["pricing"] = "token-based"
            out.append(req)
        elif p.prices_by_model:
            for model, price in p.prices_by_model.items():
                req = x402.requirements_v2(
                    x402.Offer(a.asset, base_units(price, a.asset), a.pay_to), timeout
                )
                req["extra"]["model"] = model
                out.append(req)
        elif p.price is not None:
            out.append(
                x402.requirements_v2(
                    x402.Offer(a.asset, base_units(p.price, a.asset), a.pay_to), timeout
                )
            )
    return out


def operation_id(method: str, route: Route) -> str:
    """An OpenAPI `operationId` that code generators take as a function name: `post_v1_chat_
    completions`, `get_session_by_id_events` (was the route key, spaces and slashes)."""
    words = [method.lower()]
    for s in route.segments:
        if s.startswith(":"):
            words += ["by", s[1:]]
        elif s == "*":
            words.append("any")
        else:
            words.append(s)
    ident = re.sub(r"[^0-9A-Za-z]+", "_", "_".join(words)).strip("_")
    return ident if not ident[:1].isdigit() else "op_" + ident


def well_known(config: Config, base_url: str) -> dict[str, Any]:
    resources = []
    for r in config.routes:
        if not r.payment.priced:
            continue
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
                "accepts": accepts(config, r),
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
    used: set[str] = set()
    for r in config.routes:
        op: dict[str, Any] = {
            "summary": r.payment.description or r.key,
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
            # One operation per method: operationIds are unique in a document.
            oid = base = operation_id(m, r)
            n = 1
            while oid in used:
                n += 1
                oid = f"{base}_{n}"
            used.add(oid)
            paths.setdefault(_path(r), {})[m] = {"operationId": oid, **op}
    return {
        "openapi": "3.1.0",
        "info": {"title": "meterkit gateway", "version": "1"},
        "servers": [{"url": base_url}],
        "paths": paths,
    }

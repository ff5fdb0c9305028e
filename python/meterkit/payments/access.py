"""Time-window access tokens (the seed's session-start pattern): a paid route mints a signed,
expiring token; free routes can require one. HMAC-SHA256 over the JSON claims."""

from __future__ import annotations

import hashlib
import hmac
import time
from typing import Any

import orjson

from meterkit.payments.mpp import b64url, b64url_decode

HEADER = "Meterkit-Access-Token"


class AccessDenied(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def mint(
    secret: bytes, *, scope: str, ttl: float, subject: str | None, now: float | None = None
) -> tuple[str, int]:
    t = int(time.time() if now is None else now)
    claims: dict[str, Any] = {"scope": scope, "iat": t, "exp": t + int(ttl)}
    if subject:
        claims["sub"] = subject
    body = b64url(orjson.dumps(claims))
    sig = b64url(hmac.new(secret, body.encode(), hashlib.sha256).digest())
    return f"{body}.{sig}", claims["exp"]


def check(
    secret: bytes, token: str | None, *, scope: str, now: float | None = None
) -> dict[str, Any]:
    if not token:
        raise AccessDenied(
            "missing",
            f"this route needs an access token in the {HEADER} header "
            "(bought from the route that sells access)",
        )
    body, _, sig = token.strip().partition(".")
    try:
        expected = b64url(hmac.new(secret, body.encode(), hashlib.sha256).digest())
        if not sig or not hmac.compare_digest(expected, sig):
            raise AccessDenied("invalid", "the access token's signature is not valid")
        claims = orjson.loads(b64url_decode(body))
    except (ValueError, orjson.JSONDecodeError):
        raise AccessDenied("invalid", "the access token is malformed") from None
    if not isinstance(claims, dict) or claims.get("scope") != scope:
        raise AccessDenied("wrong_scope", f"the access token is not valid for scope {scope!r}")
    t = time.time() if now is None else now
    exp = claims.get("exp")
    if not isinstance(exp, int) or exp <= t:
        raise AccessDenied("expired", "the access token has expired; buy a new one")
    return claims

"""RFC 9457 problem details: the one place where proxy errors become HTTP responses."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

PROBLEM_BASE = "https://meterkit.dev/problems/"


class ProxyError(Exception):
    """An error the proxy answers itself, before or instead of the upstream."""

    def __init__(self, status: int, code: str, title: str, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.title = title
        self.detail = detail
        self.extra = extra


def problem_response(
    error: ProxyError, request_id: str | None, headers: dict[str, str] | None = None
) -> web.Response:
    body: dict[str, Any] = {
        "type": PROBLEM_BASE + error.code,
        "title": error.title,
        "status": error.status,
        "detail": error.detail,
        **error.extra,
    }
    if request_id:
        body["request_id"] = request_id
    h = {"Cache-Control": "no-store", **(headers or {})}
    if request_id:
        h["X-Request-Id"] = request_id
    return web.Response(
        status=error.status,
        body=orjson.dumps(body),
        content_type="application/problem+json",
        headers=h,
    )


def not_found(method: str, path: str) -> ProxyError:
    return ProxyError(404, "no-route", "No route", f"no route for {method} {path}")


def method_not_allowed(method: str, path: str) -> ProxyError:
    return ProxyError(
        405, "method-not-allowed", "Method not allowed", f"{method} is not routed for {path}"
    )


def body_too_large(limit: int) -> ProxyError:
    return ProxyError(
        413,
        "request-too-large",
        "Request body too large",
        f"request bodies are limited to {limit} bytes",
        limit=limit,
    )


def bad_json(detail: str) -> ProxyError:
    return ProxyError(400, "invalid-json", "Invalid JSON body", detail)


def upstream_unreachable(name: str, detail: str) -> ProxyError:
    return ProxyError(
        502,
        "upstream-unreachable",
        "Upstream unreachable",
        f"upstream {name!r}: {detail}",
        upstream=name,
    )


def upstream_timeout(name: str, seconds: float, phase: str) -> ProxyError:
    return ProxyError(
        504,
        "upstream-timeout",
        "Upstream timeout",
        f"upstream {name!r} sent no {phase} within {seconds:g} s",
        upstream=name,
    )

"""Problem details as aiohttp responses, and the problems the gateway itself answers."""

from __future__ import annotations

from collections.abc import Mapping

from aiohttp import web
from multidict import CIMultiDict

from meterkit.problems import PROBLEM_BASE, Problem, ProxyError, render

__all__ = ["PROBLEM_BASE", "Problem", "ProxyError", "problem_response"]


def problem_response(
    problem: Problem | ProxyError,
    request_id: str | None,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    """`problem` as an aiohttp response (`meterkit.problems.render` decides what it holds)."""
    r = render(problem, request_id, headers)
    h: CIMultiDict[str] = CIMultiDict()
    for name, value in r.headers:
        h.add(name, value)
    return web.Response(status=r.status, body=r.body, headers=h)


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


def unsupported_body_encoding(coding: str) -> ProxyError:
    return ProxyError(
        415,
        "unsupported-content-encoding",
        "Request body encoding not supported",
        f"the request body is in content coding {coding!r}; the gateway reads gzip, deflate "
        "or an uncompressed body on metered routes",
        encoding=coding,
    )


def body_required() -> ProxyError:
    return ProxyError(
        400,
        "body-required",
        "Request body required",
        "an LLM request needs a JSON body; this one is empty",
    )


def invalid_field(field: str, detail: str) -> ProxyError:
    return ProxyError(
        400, "invalid-request", "Invalid request body", f"{field}: {detail}", field=field
    )


class UpstreamError(ProxyError):
    """The upstream failed before its response headers (502, 504). `detail` is what the
    client reads and names the upstream only; `internal` is the cause (the exception text,
    which may hold internal addresses or bytes the upstream sent), for logs and records."""

    internal: str | None = None


def upstream_unreachable(name: str, cause: str | None = None) -> UpstreamError:
    """`cause` (the exception text) goes to logs and records, never to the client."""
    error = UpstreamError(
        502,
        "upstream-unreachable",
        "Upstream unreachable",
        f"upstream {name!r} could not be reached or sent an invalid response",
        upstream=name,
    )
    error.internal = cause
    return error


def upstream_bad_encoding(name: str) -> UpstreamError:
    return UpstreamError(
        502,
        "upstream-unsupported-encoding",
        "Upstream response not meterable",
        f"upstream {name!r} answered in a content coding the gateway cannot meter",
        upstream=name,
    )


def upstream_timeout(name: str, seconds: float, phase: str) -> UpstreamError:
    return UpstreamError(
        504,
        "upstream-timeout",
        "Upstream timeout",
        f"upstream {name!r} sent no {phase} within {seconds:g} s",
        upstream=name,
    )


def internal_error() -> ProxyError:
    return ProxyError(500, "internal-error", "Internal error", "the gateway failed; see its logs")


def usage_backlogged(pending: int) -> ProxyError:
    return ProxyError(
        503,
        "usage-store-backlogged",
        "Usage store backlogged",
        f"{pending} usage records are waiting for the usage store; retry shortly",
        headers={"Retry-After": "1"},
    )

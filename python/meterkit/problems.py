"""Problem values (RFC 9457), web-free: every family of errors the gateway answers itself —
its own, a budget's, a payment's — becomes one `Problem`, and one renderer (`render`: status,
headers and body bytes) decides what its HTTP response holds; the web frameworks only copy
that out (`meterkit.pipeline.problems.problem_response` for aiohttp, and the adapters of
`meterkit.integrations`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

PROBLEM_BASE = "https://meterkit.dev/problems/"
PROBLEM_JSON = "application/problem+json"


@dataclass(frozen=True)
class Problem:
    """What went wrong, in the shape RFC 9457 answers with. `code` is the last segment of
    the type URI and the machine-readable reason in records, metrics and logs."""

    status: int
    code: str
    title: str
    detail: str
    type_base: str = PROBLEM_BASE
    # Extra members of the body (e.g. `budget`, `retry_after`).
    extra: Mapping[str, Any] = field(default_factory=dict)
    # Response headers; a name may repeat (several `WWW-Authenticate` challenges).
    headers: tuple[tuple[str, str], ...] = ()
    # Why, for records and metrics, when it is finer than `code` (e.g. "no_credential").
    reason: str | None = None

    def body(self, request_id: str | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {
            "type": self.type_base + self.code,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
            **self.extra,
        }
        if request_id:
            out["request_id"] = request_id
        return out


class ProxyError(Exception):
    """Raise it anywhere in the request path (a stage, an operator hook) to answer with its
    problem details instead of the upstream."""

    def __init__(
        self,
        status: int,
        code: str,
        title: str,
        detail: str,
        *,
        headers: Mapping[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.title = title
        self.detail = detail
        self.headers = dict(headers or {})
        self.extra = extra

    def problem(self) -> Problem:
        return Problem(
            self.status,
            self.code,
            self.title,
            self.detail,
            extra=self.extra,
            headers=tuple(self.headers.items()),
        )


@dataclass(frozen=True)
class Rendered:
    """A problem as an HTTP response, framework-free: `headers` may repeat a name (one
    `WWW-Authenticate` per challenge), so it is a list, not a mapping."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes


def render(
    problem: Problem | ProxyError,
    request_id: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> Rendered:
    """`problem` as an `application/problem+json` response. `headers` (e.g. a receipt set by
    a stage) come first; the problem's own headers are added after them: each
    `WWW-Authenticate` is added beside the others, any other name replaces what was set."""
    p = problem.problem() if isinstance(problem, ProxyError) else problem
    out: list[tuple[str, str]] = []

    def put(name: str, value: str) -> None:
        low = name.lower()
        out[:] = [(n, v) for n, v in out if n.lower() != low]
        out.append((name, value))

    put("Cache-Control", "no-store")
    for name, value in (headers or {}).items():
        put(name, value)
    for name, value in p.headers:
        if name.lower() == "www-authenticate":
            out.append((name, value))
        else:
            put(name, value)
    if request_id:
        put("X-Request-Id", request_id)
    put("Content-Type", PROBLEM_JSON)
    return Rendered(p.status, out, orjson.dumps(p.body(request_id)))

"""Problem values (RFC 9457), web-free: every family of errors the gateway answers itself —
its own, a budget's, a payment's — becomes one `Problem`, and one renderer
(`meterkit.pipeline.problems.problem_response`) turns it into an HTTP response."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

PROBLEM_BASE = "https://meterkit.dev/problems/"


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

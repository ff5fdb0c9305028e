"""The usage record: what one proxied request cost and how it ended."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Outcome = Literal["completed", "client_cancelled", "upstream_error", "truncated", "rejected"]
# provider: the upstream reported it; counted: exact local count with the model's tokenizer;
# estimated: a local count with a fallback tokenizer, or a rule-of-thumb prompt estimate.
Provenance = Literal["provider", "counted", "estimated"]


@dataclass
class UsageRecord:
    request_id: str
    route: str
    upstream: str
    method: str
    path: str
    started_at: float
    model: str | None = None
    format: str | None = None
    stream: bool = False
    status: int = 0
    prompt_tokens: int | None = None
    prompt_provenance: Provenance | None = None
    completion_tokens: int | None = None
    completion_provenance: Provenance | None = None
    # What meterkit counted itself, kept beside the billed figure for reconciliation.
    counted_completion_tokens: int | None = None
    reasoning_tokens: int | None = None
    cached_prompt_tokens: int | None = None
    upstream_usage: dict[str, int] | None = None
    ttft_ms: float | None = None
    duration_ms: float | None = None
    request_bytes: int = 0
    response_bytes: int = 0
    upstream_bytes: int = 0
    outcome: Outcome = "completed"
    error: str | None = None
    anomalies: list[str] = field(default_factory=list)
    # Shadow mode: the count at which the limit would have cut the stream.
    would_truncate_at: int | None = None
    # Budget accounting of the request (reserved/taken/actual/refund), when a budget applies.
    budget: dict[str, Any] | None = None
    # Payment of the request: quote, amount, protocol, payer, settlement reference.
    payment: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

"""Per-request state: what the handler learned about a request, what the stages decided,
and how the response ended (`Result`), which becomes its one usage record."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from aiohttp import web

from meterkit.config import Route, Upstream
from meterkit.usage import Outcome

if TYPE_CHECKING:
    from meterkit import StreamMeter
    from meterkit.pipeline.stage import Stage

# What cut a stream short: the per-request limit, the shared budget, or the payer's credit.
TruncationCause = Literal["limit", "budget", "payment"]
Emit = Callable[[bytes], Awaitable[None]]


@dataclass
class MeterSettings:
    """What a stage may ask of the stream's meter before it starts."""

    limit: int | None = None
    shadow: bool = False
    ending: str = "graceful_close"
    credit: int | None = None
    strip_usage: bool = False
    partial_usage: bool = False


@dataclass
class Result:
    """How the response ended, filled in as it happens (also while the handler is being
    cancelled), and read once to write the usage record."""

    status: int = 0
    outcome: Outcome = "completed"
    # Machine-readable why of a rejection or failure (a problem code, a stage name).
    reason: str | None = None
    error: str | None = None
    # Seconds from the request to the first response byte, and to the first billed token.
    ttfb: float | None = None
    ttft: float | None = None
    sent: int = 0
    # True once the upstream's response started towards the client: from then on stages get
    # `on_complete`; before, `on_abort`.
    delivered: bool = False
    truncation: TruncationCause | None = None
    meter: StreamMeter | None = None
    # A non-streamed response body, parsed, for its usage (None when not captured).
    json_body: Any = None


@dataclass
class RequestContext:
    request: web.Request
    # Server-generated, unique: the key of every piece of internal state (reservations,
    # records, receipts). The client's own X-Request-Id is only carried and echoed.
    request_id: str
    client_request_id: str | None
    route: Route
    params: dict[str, str]
    upstream: Upstream
    upstream_path: str
    # Stream format of the route: a meterkit format name, or None for a plain HTTP route.
    format: str | None
    started: float = field(default_factory=time.monotonic)
    started_at: float = field(default_factory=time.time)
    body: bytes | None = None
    # Parsed JSON body of an LLM route. A stage that changes it sets `body_changed`, and the
    # handler sends the re-serialised body upstream.
    json: dict[str, Any] | None = None
    body_changed: bool = False
    model: str | None = None
    stream: bool = False
    prompt_tokens: int | None = None
    prompt_provenance: str | None = None
    meter: MeterSettings = field(default_factory=MeterSettings)
    # Called when the meter pauses for want of credit: the tokens granted (0: none, end the
    # stream), or None to stop gating the stream. `credit_kind` names who grants it, and so
    # the cause of a truncation when the answer is 0.
    # The source is handed `emit`, which writes bytes to the client between two events (a
    # `payment-need-voucher` event, say) while the stream is paused.
    credit_source: Callable[[Emit], Awaitable[int | None]] | None = None
    credit_kind: TruncationCause = "budget"
    # Bytes to send after the stream's own ending, just before it closes (a session's final
    # `payment-receipt` event); not called when the client already left.
    stream_trailer: Callable[[], Awaitable[bytes]] | None = None
    # Extra headers for the client response (e.g. a payment receipt).
    response_headers: dict[str, str] = field(default_factory=dict)
    # Free-form state for stages, keyed by stage name.
    state: dict[str, Any] = field(default_factory=dict)
    # Stages whose `on_request` was called, in order: each gets `on_abort` or `on_complete`.
    entered: list[Stage] = field(default_factory=list)
    result: Result = field(default_factory=Result)

    @property
    def echo_id(self) -> str:
        """The id the client knows the request by: its own when it sent one."""
        return self.client_request_id or self.request_id

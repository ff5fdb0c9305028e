"""Per-request state: what the handler learned about a request, what the stages decided,
and how the response ended (`Result`), which becomes its one usage record.

What one stage learns and another needs is a typed field here, written once by the stage
that owns it (`identity`, `payment`) or added to by each (`caps`, `gates`, `trailers`):
`state` is for a stage's private notes only. Strings in a shared dict and single-slot
callables that a later stage overwrote are how features broke each other on one route
(a session replaced the budget's lease; a payer never reached a payer-keyed budget)."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web

from meterkit.config import Route, Upstream
from meterkit.pipeline.limits import Caps, Emit, Gates, TruncationCause
from meterkit.usage import Outcome

if TYPE_CHECKING:
    from meterkit import StreamMeter
    from meterkit.config.keys import KeyEntry
    from meterkit.payments.pricing import Quote
    from meterkit.pipeline.stage import Stage
    from meterkit.sessions.stream import PaidStream

__all__ = [
    "Caps",
    "Emit",
    "Gates",
    "Identity",
    "MeterSettings",
    "PaymentFacts",
    "RequestContext",
    "Result",
    "TruncationCause",
]


@dataclass
class MeterSettings:
    """How the stream's meter rewrites and ends a stream (its caps and credit are
    `RequestContext.caps` and `.gates`)."""

    ending: str = "graceful_close"
    strip_usage: bool = False
    partial_usage: bool = False


@dataclass
class Identity:
    """Who the request is, as the stages that verified it found."""

    def label(self) -> str | None:
        """The key the request's record is attributed to when no budget keyed it: a
        registered key's alias (`key_<alias>`), a refused key's hash, a verified payer."""
        if self.key is not None:
            return f"key_{self.key.alias}"
        if self.refused_key is not None:
            return self.refused_key
        return f"payer_{self.payer.lower()}" if self.payer else None

    # The registered API key (the key stage).
    key: KeyEntry | None = None
    # The budget key of an API key the key stage refused as unknown (`ak_<hash>`): what its
    # refusal is attributed to in the books.
    refused_key: str | None = None
    # The verified payer's address: the one-time credential's signer (the payment stage) or
    # the session voucher's channel payer (the session stage). Never from an unverified header.
    payer: str | None = None


@dataclass
class PaymentFacts:
    """What the money stages tell the others about this request."""

    # The one-time price (the payment stage), when the route is priced.
    quote: Quote | None = None
    # Completion tokens paid for up front (a token-based quote): they are granted whole at
    # admission — a budget reserves them all or refuses before anything is claimed.
    prepaid_completion: int | None = None
    # The request pays per token from a channel (the session stage): its account.
    session: PaidStream | None = None
    # The request carries a session credential (a voucher): the session stage answers for it.
    session_credential: bool = False


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
    # True once the request was sent upstream (whatever came back): it used tokens there.
    upstream_called: bool = False
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
    identity: Identity = field(default_factory=Identity)
    payment: PaymentFacts = field(default_factory=PaymentFacts)
    # Completion caps (cut) and credit gates (pause), each stage adding its own.
    caps: Caps = field(default_factory=Caps)
    gates: Gates = field(default_factory=Gates)
    # Bytes to send after the stream's own ending, just before it closes (a session's final
    # `payment-receipt` event), in the order added; not called when the client already left.
    trailers: list[Callable[[], Awaitable[bytes]]] = field(default_factory=list)
    # Extra headers for the client response (e.g. a payment receipt).
    response_headers: dict[str, str] = field(default_factory=dict)
    # A stage's private notes, keyed by its name; never data another stage reads.
    state: dict[str, Any] = field(default_factory=dict)
    # Stages whose `on_request` was called, in order: each gets `on_abort` or `on_complete`.
    entered: list[Stage] = field(default_factory=list)
    result: Result = field(default_factory=Result)

    @property
    def echo_id(self) -> str:
        """The id the client knows the request by: its own when it sent one."""
        return self.client_request_id or self.request_id

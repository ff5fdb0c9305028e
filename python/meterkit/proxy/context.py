"""Per-request state and the stage interface of the request pipeline.

The handler runs: route → read the body (LLM routes) → stages' `on_request` → upstream →
stream through the meter → stages' `on_complete` → usage record. Budgets and payments are
stages; they add behaviour without rewriting the handler.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from aiohttp import web

from meterkit.config import Route, Upstream
from meterkit.usage import UsageRecord


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
class RequestContext:
    request: web.Request
    request_id: str
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
    # stream), or None to stop gating the stream.
    credit_source: Callable[[], Awaitable[int | None]] | None = None
    # Extra headers for the client response (e.g. a payment receipt).
    response_headers: dict[str, str] = field(default_factory=dict)
    # Free-form state for stages, keyed by stage name.
    state: dict[str, Any] = field(default_factory=dict)


class Stage(Protocol):
    """A step of the request pipeline.

    `on_request` runs before the upstream is called. Returning a response answers the client
    with it and skips the upstream (e.g. 402, 429); returning None continues; raising
    `ProxyError` answers with its problem details.

    `on_complete` runs once the response is over, whatever its outcome (also when the client
    left), with the usage record about to be written; it may add to the record. It must not
    raise: errors are logged and the record is still written.
    """

    name: str

    async def on_request(self, ctx: RequestContext) -> web.StreamResponse | None: ...

    async def on_complete(self, ctx: RequestContext, record: UsageRecord) -> None: ...

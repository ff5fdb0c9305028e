"""The stage contract: every hook a pipeline stage can implement, declared here with a no-op
default, each saying when it fires and what its answers mean.

The order of a request (see `meterkit.pipeline.run`; which stage comes first and why:
`meterkit.pipeline.order`):

    on_request (each stage, in order)        admission: nothing that moves money
    before_upstream (each stage, in order)   commit: claim / settle a payment
    upstream request
    on_upstream_response | on_upstream_failure
    stream through the meter (cut at `ctx.caps`, paused at the smallest of `ctx.gates`)
    on_complete | on_abort (each stage that entered, in reverse order), then the usage record

A hook that answers returns a `Problem` (rendered as RFC 9457 problem details) or an aiohttp
response (sent as it is). Raising `ProxyError` is the same as returning its problem. Any
other exception is a bug: the client gets a 500 problem, the stages that entered get
`on_abort`, and the error is logged.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from meterkit.problems import Problem, ProxyError

if TYPE_CHECKING:
    from meterkit.config import Route
    from meterkit.pipeline.context import RequestContext
    from meterkit.usage import UsageRecord

Answer = Problem | web.StreamResponse


class Stage:
    """A step of the request pipeline. Subclass it and override the hooks you need."""

    name: str = "stage"

    def applies_to(self, route: Route) -> bool:
        """Whether requests of `route` can concern this stage at all, decided once per route
        from the config. False: none of its hooks is called for them, and it never enters
        (a stage that returns at once on such a route costs nothing then: no hook calls,
        and a request that no stage entered writes its record without a task). The default,
        True, calls every hook."""
        return True

    async def on_request(self, ctx: RequestContext) -> Answer | None:
        """Before any upstream call, once the route is known and the body is read and valid.

        Decide admission here and take only what can be given back (a reservation, a claim
        that `on_abort` releases). Return an answer to refuse (402, 429…): later stages do not
        run, and this stage and the earlier ones get `on_abort`. Return None to continue. Once
        this hook was called the stage has *entered*: it gets exactly one of `on_abort` or
        `on_complete`, even if this hook raised.
        """
        return None

    async def before_upstream(self, ctx: RequestContext) -> Answer | None:
        """After every stage's `on_request` admitted the request: the moment to commit
        (settle a payment now). Return an answer to refuse; every entered stage then gets
        `on_abort`. None continues to the upstream."""
        return None

    async def on_upstream_response(self, ctx: RequestContext, status: int) -> Answer | None:
        """The upstream answered with `status` (headers only; no body byte has gone to the
        client). Return an answer to send it instead (the upstream response is dropped, and
        every entered stage gets `on_abort`); None forwards the upstream's response."""
        return None

    async def on_upstream_failure(self, ctx: RequestContext, error: ProxyError) -> None:
        """The upstream could not be reached or sent no headers in time; the client gets
        `error`'s problem (502/504). Informational: `on_abort` follows."""

    async def on_abort(self, ctx: RequestContext, record: UsageRecord) -> None:
        """The request ended before any upstream response reached the client: a stage or the
        gateway refused it, the upstream failed before its headers, the client left early, or
        a bug. Give back everything taken (reservations, claims). `record` is the request's
        usage record (outcome `rejected`, `upstream_error`, `client_cancelled` or `failed`);
        the stage may add its own section. Must not raise: errors are logged."""

    async def on_complete(self, ctx: RequestContext, record: UsageRecord) -> None:
        """The upstream's response reached the client and is over, however it ended
        (completed, truncated, client left, upstream broke mid-way). Reconcile against what
        `record` says was delivered; the stage may add its own section. Must not raise:
        errors are logged and the record is written anyway."""

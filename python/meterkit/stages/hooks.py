"""The hook stage: a route's operator hooks that belong to the request as a whole, whatever
pays for it — `onRequest` before any budget or payment is looked at (a voucher POST
included), `onResponse` once the upstream's status is known, `onError` when the upstream
failed. The money hooks (`onPriceResolved`, `onSettled`, refusals' `onError`) are fired by
the payment and session stages through the same `RouteHooks`."""

from __future__ import annotations

from aiohttp import web

from meterkit.config import Route
from meterkit.payments.hooks import RouteHooks
from meterkit.pipeline import Answer, RequestContext, Stage
from meterkit.problems import ProxyError


class HookStage(Stage):
    name = "hooks"

    def __init__(self, hooks: RouteHooks) -> None:
        self.hooks = hooks

    def applies_to(self, route: Route) -> bool:
        return self.hooks.has(route)

    async def on_request(self, ctx: RequestContext) -> Answer | None:
        answer = await self.hooks.fire(ctx, "onRequest")
        return answer if isinstance(answer, web.StreamResponse) else None

    async def on_upstream_response(self, ctx: RequestContext, status: int) -> Answer | None:
        await self.hooks.fire(ctx, "onResponse", status)
        return None

    async def on_upstream_failure(self, ctx: RequestContext, error: ProxyError) -> None:
        await self.hooks.fire(ctx, "onError", error)

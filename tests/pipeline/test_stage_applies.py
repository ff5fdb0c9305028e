"""`Stage.applies_to`: a stage that cannot concern a route is left out of its requests
entirely (issue 14 item 2); the others run as before."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from meterkit.config import Route, config_from_dict
from meterkit.pipeline import Pipeline, RequestContext, Stage
from meterkit.usage import UsageRecord

CONFIG = config_from_dict(
    {
        "upstreams": {"u": {"url": "http://127.0.0.1:9"}},
        "routes": {
            "POST /a": {"upstream": "u"},
            "POST /b": {"upstream": "u"},
        },
    }
)


class Only(Stage):
    def __init__(self, name: str, route_key: str | None, log: list[str]) -> None:
        self.name, self.route_key, self.log = name, route_key, log

    def applies_to(self, route: Route) -> bool:
        return self.route_key is None or route.key == self.route_key

    async def on_request(self, ctx: RequestContext) -> Any:
        self.log.append(f"{self.name}.on_request")

    async def before_upstream(self, ctx: RequestContext) -> Any:
        self.log.append(f"{self.name}.before_upstream")

    async def on_complete(self, ctx: RequestContext, record: UsageRecord) -> None:
        self.log.append(f"{self.name}.on_complete")


def run(pipeline: Pipeline, route: Route) -> RequestContext:
    async def forward(ctx: RequestContext) -> web.StreamResponse:
        ctx.result.delivered, ctx.result.status = True, 200
        return web.Response()

    async def go() -> RequestContext:
        ctx = RequestContext(
            request=make_mocked_request("POST", "/" + route.key.split("/")[-1]),
            request_id="r",
            client_request_id=None,
            route=route,
            params={},
            upstream=CONFIG.upstreams["u"],
            upstream_path="/",
            format="openai-chat",
        )
        await pipeline.run(ctx, forward)
        await pipeline.finish(ctx, UsageRecord("r", route.key, "u", "POST", "/", 0.0))
        return ctx

    return asyncio.run(go())


def test_a_stage_that_does_not_apply_to_a_route_never_enters_its_requests() -> None:
    log: list[str] = []
    a_only, everywhere = Only("a_only", "POST /a", log), Only("all", None, log)
    pipeline = Pipeline([a_only, everywhere])
    route_a, route_b = CONFIG.routes
    ctx = run(pipeline, route_b)
    assert ctx.entered == [everywhere]
    assert log == ["all.on_request", "all.before_upstream", "all.on_complete"]
    log.clear()
    ctx = run(pipeline, route_a)
    assert ctx.entered == [a_only, everywhere]
    assert log[:2] == ["a_only.on_request", "all.on_request"]
    assert pipeline.stages_for(route_b) == (everywhere,)
    assert pipeline.stages == (a_only, everywhere)

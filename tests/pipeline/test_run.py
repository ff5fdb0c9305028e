"""The orchestration loop with fake stages and a fake upstream: no sockets. Every path out of
a request must give every stage that entered exactly one `on_abort` or `on_complete`."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from meterkit.config import config_from_dict
from meterkit.pipeline import Pipeline, Problem, ProxyError, RequestContext, Stage
from meterkit.pipeline.problems import upstream_unreachable
from meterkit.usage import UsageRecord

CONFIG = config_from_dict(
    {
        "upstreams": {"u": {"url": "http://127.0.0.1:9"}},
        "routes": {"POST /v1/chat/completions": {"upstream": "u"}},
    }
)


def context() -> RequestContext:
    route = CONFIG.routes[0]
    return RequestContext(
        request=make_mocked_request("POST", "/v1/chat/completions"),
        request_id="r1",
        client_request_id=None,
        route=route,
        params={},
        upstream=CONFIG.upstreams["u"],
        upstream_path="/v1/chat/completions",
        format="openai-chat",
    )


def record(ctx: RequestContext) -> UsageRecord:
    return UsageRecord(ctx.request_id, ctx.route.key, "u", "POST", "/", 0.0)


class Fake(Stage):
    """Logs every hook call into a shared list; answers or raises where told."""

    def __init__(self, name: str, log: list[str], **behaviour: Any) -> None:
        self.name = name
        self.log = log
        self.behaviour = behaviour

    async def _hook(self, hook: str) -> Any:
        self.log.append(f"{self.name}.{hook}")
        what = self.behaviour.get(hook)
        if isinstance(what, BaseException):
            raise what
        return what

    async def on_request(self, ctx: RequestContext) -> Any:
        return await self._hook("on_request")

    async def before_upstream(self, ctx: RequestContext) -> Any:
        return await self._hook("before_upstream")

    async def on_upstream_response(self, ctx: RequestContext, status: int) -> Any:
        return await self._hook("on_upstream_response")

    async def on_upstream_failure(self, ctx: RequestContext, error: ProxyError) -> None:
        await self._hook("on_upstream_failure")

    async def on_abort(self, ctx: RequestContext, record: UsageRecord) -> None:
        await self._hook("on_abort")

    async def on_complete(self, ctx: RequestContext, record: UsageRecord) -> None:
        await self._hook("on_complete")


async def delivered(ctx: RequestContext) -> web.StreamResponse:
    ctx.result.delivered, ctx.result.status = True, 200
    return web.Response(status=200)


def run(stages: list[Stage], forward: Any = delivered) -> tuple[RequestContext, Any]:
    async def go() -> tuple[RequestContext, Any]:
        ctx = context()
        p = Pipeline(stages)
        try:
            resp = await p.run(ctx, forward)
        except asyncio.CancelledError:
            resp = None
        await p.finish(ctx, record(ctx))
        return ctx, resp

    return asyncio.run(go())


REFUSED = Problem(429, "tpd_exceeded", "Token budget exceeded", "no tokens left")


def test_hooks_run_in_order_and_a_delivered_response_completes_every_stage() -> None:
    log: list[str] = []
    ctx, resp = run([Fake("a", log), Fake("b", log)])
    assert resp.status == 200 and ctx.result.outcome == "completed"
    assert log == [
        "a.on_request",
        "b.on_request",
        "a.before_upstream",
        "b.before_upstream",
        "b.on_complete",
        "a.on_complete",
    ]


def test_a_refusal_stops_later_stages_and_aborts_the_ones_that_entered() -> None:
    log: list[str] = []
    ctx, resp = run([Fake("a", log), Fake("b", log, on_request=REFUSED), Fake("c", log)])
    assert resp.status == 429
    assert ctx.result.outcome == "rejected" and ctx.result.reason == "tpd_exceeded"
    assert log == ["a.on_request", "b.on_request", "b.on_abort", "a.on_abort"]


def test_a_refusal_at_commit_time_aborts_every_stage() -> None:
    log: list[str] = []
    _, resp = run([Fake("a", log, before_upstream=REFUSED), Fake("b", log)])
    assert resp.status == 429
    assert log[-2:] == ["b.on_abort", "a.on_abort"]
    assert "b.before_upstream" not in log


def test_a_stage_raising_proxy_error_is_its_problem_and_still_aborted() -> None:
    log: list[str] = []
    err = ProxyError(401, "budget-key-missing", "Budget identity missing", "no key")
    ctx, resp = run([Fake("a", log), Fake("b", log, on_request=err)])
    assert resp.status == 401 and resp.content_type == "application/problem+json"
    assert ctx.result.reason == "budget-key-missing"
    assert log[-2:] == ["b.on_abort", "a.on_abort"]


def test_a_bug_is_a_500_problem_and_every_entered_stage_is_aborted() -> None:
    log: list[str] = []
    ctx, resp = run([Fake("a", log), Fake("b", log, before_upstream=KeyError("x"))])
    assert resp.status == 500 and ctx.result.outcome == "failed"
    assert log[-2:] == ["b.on_abort", "a.on_abort"]


def test_an_upstream_failure_is_reported_then_aborted() -> None:
    log: list[str] = []

    async def unreachable(ctx: RequestContext) -> web.StreamResponse:
        raise upstream_unreachable("u", "connection refused")

    ctx, resp = run([Fake("a", log)], unreachable)
    assert resp.status == 502 and ctx.result.outcome == "upstream_error"
    assert log == ["a.on_request", "a.before_upstream", "a.on_upstream_failure", "a.on_abort"]


def test_a_client_leaving_before_the_response_aborts_every_stage() -> None:
    log: list[str] = []

    async def cancelled(ctx: RequestContext) -> web.StreamResponse:
        raise asyncio.CancelledError

    ctx, resp = run([Fake("a", log), Fake("b", log)], cancelled)
    assert resp is None and ctx.result.outcome == "client_cancelled"
    assert log[-2:] == ["b.on_abort", "a.on_abort"]


def test_a_client_leaving_mid_stream_completes_every_stage() -> None:
    log: list[str] = []

    async def cut(ctx: RequestContext) -> web.StreamResponse:
        ctx.result.delivered = True
        ctx.result.outcome = "client_cancelled"
        raise asyncio.CancelledError

    ctx, _ = run([Fake("a", log)], cut)
    assert ctx.result.outcome == "client_cancelled"
    assert log[-1] == "a.on_complete"


def test_a_failing_abort_does_not_stop_the_others() -> None:
    log: list[str] = []
    run([Fake("a", log), Fake("b", log, on_abort=RuntimeError("boom"), on_request=REFUSED)])
    assert log[-2:] == ["b.on_abort", "a.on_abort"]


@pytest.mark.parametrize("hook", ["on_request", "before_upstream"])
def test_a_stage_answering_with_its_own_response_is_sent_as_is(hook: str) -> None:
    log: list[str] = []
    own = web.Response(status=401, text="go away")
    ctx, resp = run([Fake("a", log, **{hook: own})])
    assert resp is own and ctx.result.outcome == "rejected" and ctx.result.reason == "a-401"


def test_an_answer_instead_of_the_upstream_response() -> None:
    log: list[str] = []
    stage = Fake("a", log, on_upstream_response=REFUSED)

    async def answered(ctx: RequestContext) -> web.StreamResponse:
        answer = await Pipeline([stage]).upstream_answered(ctx, 200)
        assert answer is REFUSED
        raise ProxyError(402, "x", "y", "z")

    _, resp = run([stage], answered)
    assert resp.status == 402 and log[-1] == "a.on_abort"

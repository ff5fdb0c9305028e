"""The orchestration loop: admission, commit, the upstream (a callable of the HTTP layer),
and the guarantee that every stage that entered hears how the request ended.

Sockets stay out of this module: `forward` does the upstream request and the streaming, so
the loop is tested with fake stages and a fake `forward` (tests/pipeline/).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence

from aiohttp import web

from meterkit import formats
from meterkit.config import Route
from meterkit.pipeline.context import RequestContext
from meterkit.pipeline.problems import UpstreamError, internal_error, problem_response
from meterkit.pipeline.stage import Answer, Stage
from meterkit.problems import Problem, ProxyError
from meterkit.usage import UsageRecord

log = logging.getLogger("meterkit.pipeline")

Forward = Callable[[RequestContext], Awaitable[web.StreamResponse]]


class Pipeline:
    """The stages of an app, in order, and the rules for running them."""

    def __init__(self, stages: Sequence[Stage]) -> None:
        self.stages = tuple(stages)
        # The stages that apply to a route, by the route's identity (hashing the frozen
        # Route per request would cost more than it saves); the entry keeps the route, so
        # its id is not reused while the entry lives.
        self._for_route: dict[int, tuple[Route, tuple[Stage, ...]]] = {}

    def stages_for(self, route: Route) -> tuple[Stage, ...]:
        """The stages whose hooks requests of `route` go through (`Stage.applies_to`), in
        order; worked out once per route (issue 14 item 2)."""
        hit = self._for_route.get(id(route))
        if hit is None or hit[0] is not route:
            if len(self._for_route) >= 1024:
                self._for_route.clear()
            hit = (route, tuple(s for s in self.stages if s.applies_to(route)))
            self._for_route[id(route)] = hit
        return hit[1]

    async def run(self, ctx: RequestContext, forward: Forward) -> web.StreamResponse:
        """Answer one request. `ctx.result` says how it ended; the caller writes the record
        (and calls `finish`) whatever happens, including cancellation."""
        try:
            stages = self.stages_for(ctx.route)
            # No stage for the route: no admission coroutines to create and run.
            answer = await self._admit(ctx, stages) if stages else None
            if answer is not None:
                # A stage may also answer a request it fully served (a session voucher: 204).
                return self._answered(
                    ctx, answer, "rejected" if answer.status >= 400 else "completed"
                )
            return await forward(ctx)
        except UpstreamError as e:
            for stage in ctx.entered:
                try:
                    await stage.on_upstream_failure(ctx, e)
                except Exception:
                    log.exception("stage on_upstream_failure failed", extra={"stage": stage.name})
            ctx.result.error = e.internal or e.detail
            return self._answered(ctx, e.problem(), "upstream_error")
        except ProxyError as e:
            return self._answered(ctx, e.problem(), "rejected")
        except asyncio.CancelledError:
            if not ctx.result.delivered:
                client_left(ctx)
            raise
        except Exception as e:
            # A bug or an operator hook failing: log it, answer problem details, keep serving.
            log.exception("unhandled error", extra={"path": ctx.request.path})
            ctx.result.error = f"{type(e).__name__}: {e}"
            if ctx.result.delivered:
                # The response has begun: there is no other answer to give; drop it.
                ctx.result.outcome = "failed"
                raise
            return self._answered(ctx, internal_error().problem(), "failed")

    async def _admit(self, ctx: RequestContext, stages: tuple[Stage, ...]) -> Answer | None:
        for stage in stages:
            # Entered before the call: a stage that raised half-way still gets on_abort.
            ctx.entered.append(stage)
            answer = await stage.on_request(ctx)
            if answer is not None:
                ctx.result.reason = _reason(answer, stage)
                return answer
        # Every stage admitted the request: the moment to commit (e.g. settle a payment).
        for stage in stages:
            answer = await stage.before_upstream(ctx)
            if answer is not None:
                ctx.result.reason = _reason(answer, stage)
                return answer
        write_caps(ctx)
        return None

    async def upstream_answered(self, ctx: RequestContext, status: int) -> Answer | None:
        """The upstream's headers arrived: a stage may still answer instead."""
        for stage in ctx.entered:
            answer = await stage.on_upstream_response(ctx, status)
            if answer is not None:
                ctx.result.reason = _reason(answer, stage)
                return answer
        return None

    def refuse(self, ctx: RequestContext, error: ProxyError) -> web.StreamResponse:
        """The gateway refused the request before the stages (a bad body, a full queue)."""
        return self._answered(ctx, error.problem(), "rejected")

    def render(self, ctx: RequestContext, answer: Answer) -> web.StreamResponse:
        if isinstance(answer, Problem):
            return problem_response(answer, ctx.echo_id, ctx.response_headers)
        return answer

    def _answered(self, ctx: RequestContext, answer: Answer, outcome: str) -> web.StreamResponse:
        r = ctx.result
        r.outcome = outcome  # type: ignore[assignment]
        if isinstance(answer, Problem):
            r.reason = r.reason or answer.reason or answer.code
        r.status = answer.status
        return self.render(ctx, answer)

    async def finish(self, ctx: RequestContext, record: UsageRecord) -> None:
        """Tell every stage that entered how the request ended, last entered first:
        `on_complete` when the upstream's response reached the client, else `on_abort`."""
        delivered = ctx.result.delivered
        for stage in reversed(ctx.entered):
            try:
                if delivered:
                    await stage.on_complete(ctx, record)
                else:
                    await stage.on_abort(ctx, record)
            except Exception:
                log.exception(
                    "stage %s failed",
                    "on_complete" if delivered else "on_abort",
                    extra={"stage": stage.name},
                )


def write_caps(ctx: RequestContext) -> None:
    """Ask the upstream for no more than the smallest enforced cap (`ctx.caps`), when the
    client asked for more or said nothing: the upstream must not outrun what was reserved or
    paid for. Shadow caps change nothing on the wire."""
    cap = ctx.caps.limit
    if cap is not None and ctx.json is not None and ctx.format is not None:
        if formats.set_completion_cap(ctx.json, ctx.format, cap):
            ctx.body_changed = True


# nginx's "client closed request": the client left before any response was sent.
CLIENT_CLOSED = 499


def client_left(ctx: RequestContext) -> None:
    ctx.result.outcome, ctx.result.status = "client_cancelled", CLIENT_CLOSED


def _reason(answer: Answer, stage: Stage) -> str:
    if isinstance(answer, Problem):
        return answer.reason or answer.code
    return f"{stage.name}-{answer.status}"

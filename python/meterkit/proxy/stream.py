"""The metered SSE relay: each upstream read is fed to the Rust meter (one call) and what it
releases is written at once. Pauses for credit, truncation, an upstream that breaks or
stalls, and a client that leaves each end the stream with the format's proper ending, and
each is written into `ctx.result`, which becomes the usage record."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable

import aiohttp
from aiohttp import web

from meterkit import FeedResult, StreamMeter
from meterkit.pipeline import RequestContext
from meterkit.proxy.appkeys import METRICS
from meterkit.proxy.encoding import CorruptBody, Decoder
from meterkit.proxy.headers import client_response_headers
from meterkit.proxy.upstream import IdleWatchdog

_EXHAUSTED = {
    "budget": "the token budget is exhausted",
    "payment": "the session's credit is exhausted: no voucher arrived in time",
    "limit": "the completion limit is reached",
}


class _StreamRun:
    """Writes what the meter releases and keeps `ctx.result` up to date."""

    def __init__(self, ctx: RequestContext, out: web.StreamResponse, meter: StreamMeter) -> None:
        self.ctx = ctx
        self.result = ctx.result
        self.out = out
        self.meter = meter
        self.public_error = "upstream error"

    async def emit(self, data: bytes) -> None:
        if not data:
            return
        r = self.result
        if r.ttfb is None:
            r.ttfb = time.monotonic() - self.ctx.started
        # Time to first token: the first write that carries a billed token (content, tool
        # arguments, reasoning), not the first byte (a role-only chunk, a comment).
        if r.ttft is None and self.meter.completion_tokens > 0:
            r.ttft = time.monotonic() - self.ctx.started
        await self.out.write(data)
        r.sent += len(data)

    async def settle(self, fed: FeedResult) -> bool:
        """Write what a meter result releases; while the meter waits for credit, get more
        (or end the stream when there is none). False when the stream is over."""
        await self.emit(fed.forward)
        gates = self.ctx.gates
        while fed.paused or self.meter.state == "paused":
            # Only the gates at the meter's credit are asked: a session is not asked for a
            # voucher while the budget is what holds the stream back, nor the reverse.
            cause = await gates.refill(self.meter.completion_tokens, self.emit)
            if cause is not None:
                self.result.truncation = cause
                await self.emit(self.meter.truncate(_EXHAUSTED[cause]))
                self.result.outcome = "truncated"
                return False
            # Every gate at the old credit gave more or left: the smallest allowance rose.
            credit = gates.credit
            if credit is None:
                fed = self.meter.clear_credit()
            else:
                fed = self.meter.grant(credit - (self.meter.credit or 0))
            await self.emit(fed.forward)
        if fed.truncated:
            self.result.outcome, self.result.truncation = "truncated", "limit"
            return False
        if gates.stopped is not None and fed.state != "finished":
            # The channel paying for it is closing: end now, properly, and be charged.
            self.result.outcome, self.result.truncation = "truncated", gates.stopped
            await self.emit(self.meter.truncate("the payment channel was closed"))
            return False
        if fed.state == "failed":
            # The meter has already sent the format's error ending (issue 12 #5, #9).
            if any(a.kind == "pending_budget_exceeded" for a in fed.anomalies):
                self.fail("the budget for unfinished upstream events across streams ran out")
            else:
                self.fail("the upstream stream broke the event size limit")
            return False
        return True

    async def feed(self, pieces: Iterable[bytes]) -> bool:
        """Meter and write each piece of one upstream read (one piece unless decompressed).
        False when the stream is over."""
        for piece in pieces:
            if not await self.settle(self.meter.feed(piece)):
                return False
        return True

    async def trailer(self) -> None:
        """The stages' last words after the stream's own ending (a payment receipt)."""
        for make in self.ctx.trailers:
            await self.emit(await make())

    def fail(self, error: str, public: str | None = None) -> None:
        """The stream failed: `error` for the record and the log, `public` (default: the
        same) for the client's error event."""
        self.result.outcome, self.result.error = "upstream_error", error
        self.public_error = public or error


async def stream_events(
    ctx: RequestContext,
    resp: aiohttp.ClientResponse,
    decoder: Decoder | None = None,
    watchdog: IdleWatchdog | None = None,
) -> web.StreamResponse:
    """Relay `resp` through the meter; `decoder` decompresses a compressed upstream body
    first (the client then gets identity bytes). `watchdog`: the one `open_upstream`
    armed (a new one otherwise); stopped here (and by the handler, whatever happens)."""
    request = ctx.request
    metrics = request.app[METRICS]
    route = ctx.route.key
    settings = ctx.meter
    meter = StreamMeter(
        ctx.format or "auto",
        ctx.model,
        path=ctx.upstream_path,
        limit=ctx.caps.limit,
        shadow_limit=ctx.caps.shadow_limit,
        ending=settings.ending,
        credit=ctx.gates.credit,
        prompt_tokens=ctx.prompt_tokens,
        strip_usage=settings.strip_usage,
        partial_usage=settings.partial_usage,
    )
    result = ctx.result
    result.meter = meter
    out = web.StreamResponse(
        status=resp.status,
        headers=client_response_headers(resp.headers, event_stream=True, request_id=ctx.echo_id),
    )
    if decoder is not None:
        out.headers.popall("Content-Encoding", None)
    for k, v in ctx.response_headers.items():
        out.headers[k] = v
    active = metrics.by_active_streams[(route,)]
    if watchdog is None:
        watchdog = IdleWatchdog(ctx.upstream.timeouts.idle)
    await out.prepare(request)
    active.inc()
    run = _StreamRun(ctx, out, meter)
    try:
        while True:
            watchdog.reading()
            try:
                chunk = await resp.content.readany()
            except (aiohttp.ClientError, OSError) as e:
                # The exception text may quote upstream bytes: the record keeps it, the
                # client's error event does not.
                run.fail(
                    f"upstream stream failed: {e or type(e).__name__}", "upstream stream failed"
                )
                break
            watchdog.received()
            if not chunk:
                break
            try:
                if not await run.feed(decoder.feed(chunk) if decoder else (chunk,)):
                    break
            except CorruptBody as e:
                run.fail(str(e), "the upstream sent a corrupt compressed body")
                break
        if result.outcome == "completed" and decoder is not None:
            try:
                await run.feed(decoder.finish())
            except CorruptBody as e:
                run.fail(str(e), "the upstream sent a corrupt compressed body")
        if result.outcome == "completed" and await run.settle(meter.close()):
            if meter.state == "streaming" and meter.format is not None:
                # The upstream ended without its end-of-stream marker.
                run.fail("the upstream closed the stream before its end")
        if result.outcome == "upstream_error":
            metrics.upstream_errors.labels(route, "stream").inc()
            await run.emit(meter.fail(run.public_error))
        if ctx.trailers:
            await run.trailer()
        await out.write_eof()
    except asyncio.CancelledError:
        if watchdog.fired:
            # Idle upstream: end the client's stream properly and carry on.
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            run.fail(f"upstream idle for {ctx.upstream.timeouts.idle:g} s")
            metrics.upstream_errors.labels(route, "idle_timeout").inc()
            try:
                await run.emit(meter.fail(run.public_error))
                await run.trailer()
                await out.write_eof()
            except (ConnectionResetError, RuntimeError):
                pass
        else:
            result.outcome = "client_cancelled"
            metrics.by_cancellations[(route,)].inc()
            raise
    except (ConnectionResetError, RuntimeError) as e:
        # RuntimeError: aiohttp refuses writes to a closed transport in some versions.
        result.outcome, result.error = "client_cancelled", str(e) or type(e).__name__
        metrics.by_cancellations[(route,)].inc()
    finally:
        watchdog.stop()
        # Closing the response drops the upstream connection: this is the abort on
        # truncation and on client disconnect.
        resp.close()
        active.dec()
    return out

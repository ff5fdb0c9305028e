"""The request handler: route, read and check the body, then run the pipeline with the
upstream forward, and write the one usage record on every way out.

Streams are never buffered: `stream.py` feeds each upstream read to the meter (one Rust
call). When the client goes away, aiohttp cancels this handler
(`handler_cancellation=True`); closing the upstream response closes its connection, so the
upstream stops generating (and billing) tokens right away.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Mapping
from types import MappingProxyType

import orjson
from aiohttp import web

from meterkit import detect_format, formats
from meterkit.config import Gateway
from meterkit.observability.logs import request_id_var
from meterkit.pipeline import RequestContext
from meterkit.pipeline import problems as gateway
from meterkit.pipeline.problems import problem_response
from meterkit.pipeline.run import client_left
from meterkit.problems import ProxyError
from meterkit.proxy import record, request_body
from meterkit.proxy.appkeys import CONFIG, METRICS, PIPELINE, PLANS, ROUTER, SINK
from meterkit.proxy.encoding import UnsupportedEncoding, decoder_for
from meterkit.proxy.ids import new_request_id
from meterkit.proxy.passthrough import pass_through
from meterkit.proxy.routing import upstream_path
from meterkit.proxy.server import body_chunks
from meterkit.proxy.stream import stream_events
from meterkit.proxy.upstream import has_body, open_upstream

_CLIENT_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_NO_QUERY: Mapping[str, str] = MappingProxyType({})
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


def _client_request_id(request: web.Request) -> str | None:
    given = request.headers.get("X-Request-Id")
    return given if given and _CLIENT_REQUEST_ID.match(given) else None


async def handle(request: web.Request) -> web.StreamResponse:
    started = (time.time(), time.monotonic())
    rid = new_request_id()
    client_rid = _client_request_id(request)
    token = request_id_var.set(rid)
    try:
        try:
            ctx = _context(request, rid, client_rid, started)
        except ProxyError as e:
            record.finish_unrouted(request, rid, client_rid, started, e.status, "rejected", e.code)
            return problem_response(e, client_rid or rid)
        try:
            return await _serve(ctx)
        finally:
            record.finish(ctx)
    finally:
        request_id_var.reset(token)


def _context(
    request: web.Request, rid: str, client_rid: str | None, started: tuple[float, float]
) -> RequestContext:
    app = request.app
    raw_path = request.raw_path
    match, path_known = app[ROUTER].match(request.method, raw_path)
    if match is None:
        if path_known:
            raise gateway.method_not_allowed(request.method, request.path)
        raise gateway.not_found(request.method, request.path)
    route = match.route
    plan = app[PLANS][route.key]
    path = upstream_path(
        route,
        match.params,
        raw_path.split("?", 1)[0],
        # Parsed only for a rewrite that can read it.
        request.query if route.path is not None else _NO_QUERY,
        request.query_string,
    )
    fmt = plan.format
    if plan.detect:
        fmt = detect_format(path) or detect_format(request.path)
    return RequestContext(
        request=request,
        request_id=rid,
        client_request_id=client_rid,
        route=route,
        params=dict(match.params),
        upstream=plan.upstream,
        upstream_path=path,
        format=fmt,
        started_at=started[0],
        started=started[1],
    )


async def _serve(ctx: RequestContext) -> web.StreamResponse:
    request = ctx.request
    app = request.app
    pipeline = app[PIPELINE]
    try:
        backlog = app[SINK].backlogged()
        if backlog:
            raise gateway.usage_backlogged(backlog)
        if ctx.format is not None and has_body(request):
            await _read_llm_body(ctx, app[CONFIG].gateway)
        elif (request.content_length or 0) > app[CONFIG].gateway.max_request_body:
            # A pass-through body is streamed, never read whole: a declared length over
            # the limit is refused here, a chunked one is cut off while it streams.
            raise gateway.body_too_large(app[CONFIG].gateway.max_request_body)
    except ProxyError as e:
        return pipeline.refuse(ctx, e)
    except asyncio.CancelledError:
        client_left(ctx)
        raise
    return await pipeline.run(ctx, _forward)


async def _read_capped(request: web.Request, limit: int, timeout: float) -> bytes:
    if request.content_length is not None and request.content_length > limit:
        raise gateway.body_too_large(limit)
    content = request.content
    if content.is_eof():
        # The whole body is here already (a small JSON body arrives with its head): taken
        # as it is, with no wait to time (two asyncio.timeout, ~8 µs), no copy and no async
        # iterator (issue 14 item 2).
        body = content.read_nowait()
        if len(body) > limit:
            raise gateway.body_too_large(limit)
        return body
    buf = bytearray()
    async for chunk in body_chunks(request, timeout):
        buf += chunk
        if len(buf) > limit:
            raise gateway.body_too_large(limit)
    return bytes(buf)


async def _read_llm_body(ctx: RequestContext, limits: Gateway) -> None:
    request = ctx.request
    coding = request.headers.get("Content-Encoding")
    # A coding the gateway cannot decode is refused before a byte is read; the others are
    # read, then decoded within the same limit.
    request_body.check(coding)
    raw = await _read_capped(request, limits.max_request_body, limits.body_timeout)
    ctx.body = request_body.decode(raw, coding, limits.max_request_body)
    if not ctx.body:
        return
    try:
        parsed = orjson.loads(ctx.body)
    except orjson.JSONDecodeError as e:
        raise gateway.bad_json(f"the request body is not valid JSON: {e}") from None
    if not isinstance(parsed, dict):
        raise gateway.bad_json("the request body must be a JSON object")
    try:
        formats.validate_body(parsed, ctx.format)
    except formats.InvalidBody as e:
        raise gateway.invalid_field(e.field, e.detail) from None
    ctx.json = parsed
    model = parsed.get("model")
    ctx.model = model if isinstance(model, str) else None
    accept = request.headers.get("Accept", "")
    ctx.stream = parsed.get("stream") is True or "text/event-stream" in accept


async def _forward(ctx: RequestContext) -> web.StreamResponse:
    if ctx.format is not None and ctx.json is None and ctx.request.method in _BODY_METHODS:
        # No stage answered this empty request (a voucher POST would have been): an LLM
        # request without a body is the client's mistake, not the upstream's to judge.
        raise gateway.body_required()
    plan = ctx.request.app[PLANS][ctx.route.key]
    ctx.result.upstream_called = True
    # The route's precomputed timeouts, unless a stage sent the request elsewhere.
    resp, watchdog = await open_upstream(
        ctx, plan.timeout if plan.upstream is ctx.upstream else None
    )
    try:
        decoder = None
        if ctx.format is not None:
            # A metered body must be read by the meter: decompress it, or refuse it before
            # anything reaches the client. Never forward it unmetered.
            try:
                decoder = decoder_for(resp.headers.get("Content-Encoding"))
            except UnsupportedEncoding as e:
                ctx.request.app[METRICS].upstream_errors.labels(ctx.route.key, "encoding").inc()
                error = gateway.upstream_bad_encoding(ctx.upstream.name)
                error.internal = f"unsupported Content-Encoding: {e}"
                raise error from None
        # Only stages that entered are asked: with none, no coroutine to create and run.
        answer = (
            await ctx.request.app[PIPELINE].upstream_answered(ctx, resp.status)
            if ctx.entered
            else None
        )
        if answer is not None:
            # Answered instead (e.g. the payment could not settle): drop the upstream.
            ctx.result.outcome = "rejected"
            ctx.result.status = answer.status
            return ctx.request.app[PIPELINE].render(ctx, answer)
        ctx.result.status = resp.status
        ctx.result.delivered = True
        if resp.headers.get("Content-Type", "").startswith("text/event-stream"):
            return await stream_events(ctx, resp, decoder, watchdog)
        return await pass_through(ctx, resp, decoder, watchdog)
    finally:
        watchdog.stop()
        # Closing (not releasing) an unfinished response drops its connection: this is what
        # stops the upstream when the client left or the stream was cut.
        resp.close()

"""Forwarding a response that is not an event stream: byte for byte as it arrives, with a
bounded copy of a JSON body kept to read its usage at the end."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import orjson
from aiohttp import web

from meterkit.pipeline import RequestContext
from meterkit.proxy.appkeys import METRICS
from meterkit.proxy.encoding import CorruptBody, Decoder
from meterkit.proxy.headers import client_response_headers
from meterkit.proxy.upstream import IdleWatchdog

# Bigger JSON bodies pass without usage extraction rather than being held in memory.
_JSON_CAPTURE_LIMIT = 8 * 1024 * 1024


async def pass_through(
    ctx: RequestContext,
    resp: aiohttp.ClientResponse,
    decoder: Decoder | None = None,
    watchdog: IdleWatchdog | None = None,
) -> web.StreamResponse:
    """Forward `resp`; on a metered route `decoder` decompresses a compressed body (the
    client then gets identity bytes and the usage can be read). `watchdog`: the one
    `open_upstream` armed (a new one otherwise); stopped here (and by the handler, whatever happens)."""
    request = ctx.request
    metrics = request.app[METRICS]
    result = ctx.result
    out = web.StreamResponse(
        status=resp.status,
        headers=client_response_headers(resp.headers, event_stream=False, request_id=ctx.echo_id),
    )
    if decoder is not None:
        out.headers.popall("Content-Encoding", None)
        out.headers.popall("Content-Length", None)
    for k, v in ctx.response_headers.items():
        out.headers[k] = v
    capture: bytearray | None = None
    if ctx.format is not None and "json" in resp.headers.get("Content-Type", ""):
        capture = bytearray()
    if watchdog is None:
        watchdog = IdleWatchdog(ctx.upstream.timeouts.idle)
    await out.prepare(request)
    if resp.status >= 500:
        result.outcome, result.error = "upstream_error", f"upstream answered {resp.status}"
    try:
        while True:
            watchdog.reading()
            chunk = await resp.content.readany()
            watchdog.received()
            if not chunk:
                break
            for piece in decoder.feed(chunk) if decoder else (chunk,):
                capture = await _write(ctx, out, piece, capture)
        if decoder is not None:
            for piece in decoder.finish():
                capture = await _write(ctx, out, piece, capture)
        await out.write_eof()
    except asyncio.CancelledError:
        if not watchdog.fired:
            result.outcome = "client_cancelled"
            metrics.by_cancellations[(ctx.route.key,)].inc()
            raise
        task = asyncio.current_task()
        if task is not None:
            task.uncancel()
        result.outcome, capture = "upstream_error", None
        result.error = f"upstream idle for {ctx.upstream.timeouts.idle:g} s"
        # A body with a length cannot be ended cleanly mid-way: drop the connection.
        if request.transport is not None:
            request.transport.close()
    except (aiohttp.ClientError, OSError, CorruptBody) as e:
        result.outcome, capture = "upstream_error", None
        result.error = f"upstream body failed: {e or type(e).__name__}"
        if request.transport is not None:
            request.transport.close()
    finally:
        watchdog.stop()
    if capture:
        try:
            result.json_body = orjson.loads(bytes(capture))
        except orjson.JSONDecodeError:
            result.json_body = None
    return out


async def _write(
    ctx: RequestContext, out: web.StreamResponse, chunk: bytes, capture: bytearray | None
) -> bytearray | None:
    result = ctx.result
    if result.ttfb is None:
        result.ttfb = time.monotonic() - ctx.started
    await out.write(chunk)
    result.sent += len(chunk)
    if capture is not None:
        if len(capture) + len(chunk) <= _JSON_CAPTURE_LIMIT:
            capture += chunk
        else:
            capture = None
    return capture

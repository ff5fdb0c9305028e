"""Forwarding a response that is not an event stream: byte for byte as it arrives, with a
bounded copy of a JSON body kept to read its usage at the end."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import orjson
from aiohttp import web

from meterkit.pipeline import RequestContext
from meterkit.proxy.headers import client_response_headers
from meterkit.proxy.keys import METRICS
from meterkit.proxy.upstream import IdleWatchdog

# Bigger JSON bodies pass without usage extraction rather than being held in memory.
_JSON_CAPTURE_LIMIT = 8 * 1024 * 1024


async def pass_through(ctx: RequestContext, resp: aiohttp.ClientResponse) -> web.StreamResponse:
    request = ctx.request
    metrics = request.app[METRICS]
    result = ctx.result
    out = web.StreamResponse(
        status=resp.status,
        headers=client_response_headers(resp.headers, event_stream=False, request_id=ctx.echo_id),
    )
    for k, v in ctx.response_headers.items():
        out.headers[k] = v
    capture: bytearray | None = None
    if ctx.format is not None and "json" in resp.headers.get("Content-Type", ""):
        capture = bytearray()
    await out.prepare(request)
    watchdog = IdleWatchdog(ctx.upstream.timeouts.idle)
    if resp.status >= 500:
        result.outcome, result.error = "upstream_error", f"upstream answered {resp.status}"
    try:
        async for chunk in resp.content.iter_any():
            watchdog.touch()
            if result.ttfb is None:
                result.ttfb = time.monotonic() - ctx.started
            await out.write(chunk)
            result.sent += len(chunk)
            if capture is not None:
                if len(capture) + len(chunk) <= _JSON_CAPTURE_LIMIT:
                    capture += chunk
                else:
                    capture = None
        await out.write_eof()
    except asyncio.CancelledError:
        if not watchdog.fired:
            result.outcome = "client_cancelled"
            metrics.cancellations.labels(ctx.route.key).inc()
            raise
        task = asyncio.current_task()
        if task is not None:
            task.uncancel()
        result.outcome, capture = "upstream_error", None
        result.error = f"upstream idle for {ctx.upstream.timeouts.idle:g} s"
        # A body with a length cannot be ended cleanly mid-way: drop the connection.
        if request.transport is not None:
            request.transport.close()
    except (aiohttp.ClientError, OSError) as e:
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

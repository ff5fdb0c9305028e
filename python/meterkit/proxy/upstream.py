"""The upstream request: headers and body to send, the error a failure before the response
headers maps to, and the idle watchdog that guards every body read afterwards."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from meterkit.pipeline import RequestContext
from meterkit.pipeline import problems as gateway
from meterkit.proxy.headers import upstream_request_headers
from meterkit.proxy.keys import METRICS, SESSION

_METHODS_WITHOUT_BODY = frozenset({"GET", "HEAD", "DELETE", "OPTIONS"})


class IdleWatchdog:
    """Cancels the handler when no upstream byte arrived for `timeout` seconds.

    One timer per stream, re-armed lazily, instead of a timeout object per read: `touch()` on
    the hot path only stores a float.
    """

    def __init__(self, timeout: float) -> None:
        self.loop = asyncio.get_running_loop()
        self.timeout = timeout
        self.task = asyncio.current_task()
        self.last = self.loop.time()
        self.fired = False
        self._handle = self.loop.call_later(timeout, self._check)

    def touch(self) -> None:
        self.last = self.loop.time()

    def _check(self) -> None:
        idle = self.loop.time() - self.last
        if idle >= self.timeout:
            self.fired = True
            if self.task is not None:
                self.task.cancel()
        else:
            self._handle = self.loop.call_later(self.timeout - idle, self._check)

    def stop(self) -> None:
        self._handle.cancel()


def has_body(request: web.Request) -> bool:
    return request.method not in _METHODS_WITHOUT_BODY and bool(
        request.content_length or request.body_exists
    )


async def _body_stream(request: web.Request) -> AsyncIterator[bytes]:
    async for chunk in request.content.iter_any():
        yield chunk


async def open_upstream(ctx: RequestContext) -> aiohttp.ClientResponse:
    """Send the request upstream and wait for its response headers (`first_byte` timeout).
    Failures raise `UpstreamError` (502 unreachable, 504 timeout)."""
    request = ctx.request
    app = request.app
    up = ctx.upstream
    headers = upstream_request_headers(
        request.headers,
        up.headers,
        client_ip=request.remote,
        scheme=request.scheme,
        host=request.host,
        request_id=ctx.echo_id,
        metered=ctx.format is not None,
    )
    if ctx.body is not None:
        data: Any = orjson.dumps(ctx.json) if ctx.body_changed else ctx.body
    elif has_body(request):
        data = _body_stream(request)
    else:
        data = None
    timeout = aiohttp.ClientTimeout(
        total=None, connect=up.timeouts.connect, sock_connect=up.timeouts.connect
    )
    metrics = app[METRICS]
    try:
        async with asyncio.timeout(up.timeouts.first_byte):
            return await app[SESSION].request(
                request.method,
                up.url + ctx.upstream_path,
                headers=headers,
                data=data,
                timeout=timeout,
                allow_redirects=False,
            )
    except TimeoutError:
        metrics.upstream_errors.labels(ctx.route.key, "timeout").inc()
        raise gateway.upstream_timeout(
            up.name, up.timeouts.first_byte, "response headers"
        ) from None
    except aiohttp.ConnectionTimeoutError:
        metrics.upstream_errors.labels(ctx.route.key, "connect_timeout").inc()
        raise gateway.upstream_timeout(up.name, up.timeouts.connect, "connection") from None
    except (aiohttp.ClientError, OSError) as e:
        metrics.upstream_errors.labels(ctx.route.key, "connect").inc()
        raise gateway.upstream_unreachable(up.name, str(e) or type(e).__name__) from None

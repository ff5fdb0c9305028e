"""The upstream request: headers and body to send, the error a failure before the response
headers maps to, and the idle watchdog that guards every body read afterwards."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from meterkit.pipeline import RequestContext
from meterkit.pipeline import problems as gateway
from meterkit.problems import ProxyError
from meterkit.proxy.appkeys import CONFIG, METRICS, SESSION
from meterkit.proxy.headers import upstream_request_headers
from meterkit.proxy.routing import client_timeout
from meterkit.proxy.server import body_chunks

log = logging.getLogger("meterkit.proxy")

_METHODS_WITHOUT_BODY = frozenset({"GET", "HEAD", "DELETE", "OPTIONS"})


class IdleWatchdog:
    """Cancels the handler when a read from the upstream waited `timeout` seconds.

    Only upstream reads are timed: `reading()` before awaiting the upstream, `received()`
    after. Time spent writing to a slow client (backpressure) or waiting for credit is the
    client's or the budget's, not an idle upstream. One timer per stream, re-armed lazily,
    instead of a timeout object per read: the hot path only stores a float and a bool.

    The same watchdog first times the wait for the response headers (`first_byte`, armed
    with `waiting=True`), then `rearm(idle)` turns it into the idle watchdog of the body:
    one timer per request instead of an `asyncio.timeout` (~4 µs: a Python object, a timer
    and its cancellation) plus the watchdog's own (issue 14 item 2).
    """

    def __init__(
        self,
        timeout: float,
        *,
        waiting: bool = False,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        # Given the loop, finding the task needs no `get_running_loop()`, which makes a
        # getpid syscall on every call in Python 3.11 (its fork check).
        self.loop = loop or asyncio.get_running_loop()
        self.timeout = timeout
        self.task = asyncio.current_task(self.loop)
        # The task's cancellation count when the watchdog started: a cancellation of ours
        # is told from the client's (aiohttp cancels the handler when it leaves) by it.
        self.cancelling = self.task.cancelling() if self.task is not None else 0
        self.since = self.loop.time()
        self.waiting = waiting
        self.fired = False
        self._due = self.since + timeout
        self._handle = self.loop.call_at(self._due, self._check)

    def reading(self) -> None:
        self.since = self.loop.time()
        self.waiting = True

    def received(self) -> None:
        self.waiting = False

    def rearm(self, timeout: float) -> None:
        """Time the next reads with `timeout`; the timer moves only when it would now fire
        too late (the lazy check re-arms a timer that fires early)."""
        self.timeout = timeout
        due = self.loop.time() + timeout
        if due < self._due:
            self._handle.cancel()
            self._due = due
            self._handle = self.loop.call_at(due, self._check)

    def _check(self) -> None:
        now = self.loop.time()
        idle = now - self.since if self.waiting else 0.0
        if idle >= self.timeout:
            self.fired = True
            if self.task is not None:
                self.task.cancel()
        else:
            self._due = now + self.timeout - idle
            self._handle = self.loop.call_at(self._due, self._check)

    def ours(self) -> bool:
        """On a CancelledError: True when the watchdog's timer caused it (and nobody else
        cancelled the task meanwhile); the cancellation is then withdrawn, as
        `asyncio.timeout` does before raising TimeoutError."""
        if not self.fired or self.task is None:
            return False
        return self.task.uncancel() <= self.cancelling

    def stop(self) -> None:
        self._handle.cancel()


def has_body(request: web.Request) -> bool:
    return request.method not in _METHODS_WITHOUT_BODY and bool(
        request.content_length or request.body_exists
    )


class _BodyTooLarge(Exception):
    """The client's streamed body went past `gateway.max_request_body`."""


async def _body_stream(ctx: RequestContext, limit: int, timeout: float) -> AsyncIterator[bytes]:
    """The client's body as it arrives, stopped before the byte that would pass `limit`: a
    chunked body of unknown size is never forwarded past it. A client that stops sending
    for `timeout` seconds ends it too (`gateway.body_timeout`)."""
    sent = 0
    try:
        async for chunk in body_chunks(ctx.request, timeout):
            sent += len(chunk)
            if sent > limit:
                ctx.state["body_too_large"] = True
                raise _BodyTooLarge
            yield chunk
    except ProxyError as e:
        # Raised inside aiohttp's body writer, which reports its own error to the caller;
        # kept here so the client gets this answer (408), not an upstream failure.
        ctx.state["body_error"] = e
        raise


async def open_upstream(
    ctx: RequestContext, timeout: aiohttp.ClientTimeout | None = None
) -> tuple[aiohttp.ClientResponse, IdleWatchdog]:
    """Send the request upstream and wait for its response headers (`first_byte` timeout).
    Returns the response and the idle watchdog of its body (re-armed with `idle`; the
    caller stops it). Failures raise `UpstreamError` (502 unreachable, 504 timeout).
    `timeout`: the upstream's `client_timeout`, made once per upstream by the caller."""
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
        # The body the gateway read was decoded (proxy/request_body.py): it goes as it is.
        headers.popall("Content-Encoding", None)
    elif has_body(request):
        gw = app[CONFIG].gateway
        data = _body_stream(ctx, gw.max_request_body, gw.body_timeout)
    else:
        data = None
    metrics = app[METRICS]
    # request.task is aiohttp's connection task (not this handler's): only its loop is used.
    watchdog = IdleWatchdog(up.timeouts.first_byte, waiting=True, loop=request.task.get_loop())
    t0 = time.perf_counter()
    try:
        try:
            resp = await app[SESSION].request(
                request.method,
                up.url + ctx.upstream_path,
                headers=headers,
                data=data,
                timeout=timeout or client_timeout(up),
                allow_redirects=False,
            )
            watchdog.received()
            watchdog.rearm(up.timeouts.idle)
            metrics.by_upstream_headers[ctx.route.key, up.name].observe(time.perf_counter() - t0)
            return resp, watchdog
        finally:
            if ctx.state.get("body_too_large"):
                # The upstream saw at most the limit; whatever aiohttp made of the aborted
                # body, the answer is the client's 413.
                watchdog.stop()
                raise gateway.body_too_large(app[CONFIG].gateway.max_request_body) from None
            if (body_error := ctx.state.get("body_error")) is not None:
                # Likewise for a body the client stopped sending: its 408.
                watchdog.stop()
                raise body_error from None
    except (asyncio.CancelledError, TimeoutError) as e:
        watchdog.stop()
        if isinstance(e, asyncio.CancelledError) and not watchdog.ours():
            raise
        # Also aiohttp's ConnectionTimeoutError (a TimeoutError), as under the
        # `asyncio.timeout` this replaced: the branch below is only reached by what is not.
        metrics.upstream_errors.labels(ctx.route.key, "timeout").inc()
        raise gateway.upstream_timeout(
            up.name, up.timeouts.first_byte, "response headers"
        ) from None
    except aiohttp.ConnectionTimeoutError:
        watchdog.stop()
        metrics.upstream_errors.labels(ctx.route.key, "connect_timeout").inc()
        raise gateway.upstream_timeout(up.name, up.timeouts.connect, "connection") from None
    except (aiohttp.ClientError, OSError) as e:
        watchdog.stop()
        metrics.upstream_errors.labels(ctx.route.key, "connect").inc()
        # The client gets the upstream's name only: the exception text can hold internal
        # addresses and bytes the upstream sent. The log and the usage record keep it.
        cause = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
        error = gateway.upstream_unreachable(up.name, cause)
        log.warning(
            "upstream unreachable",
            extra={"upstream": up.name, "url": up.url, "error": cause},
        )
        raise error from None
    except BaseException:
        watchdog.stop()
        raise

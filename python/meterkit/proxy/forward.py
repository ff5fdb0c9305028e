"""The forwarding handler: one request in, one upstream request out, the response streamed
back through the Rust meter, a usage record at the end.

Streams are never buffered: each upstream read is fed to the meter (one Rust call) and what
it releases is written at once. When the client goes away, aiohttp cancels this handler
(`handler_cancellation=True`); the `finally` closes the upstream response, which closes its
connection, so the upstream stops generating (and billing) tokens right away.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from meterkit import FeedResult, StreamMeter, detect_format
from meterkit.observability.logs import request_id_var
from meterkit.proxy import problems
from meterkit.proxy.context import RequestContext
from meterkit.proxy.headers import client_response_headers, upstream_request_headers
from meterkit.proxy.keys import CONFIG, METRICS, ROUTER, SESSION, SINK, STAGES, TASKS
from meterkit.proxy.problems import ProxyError, problem_response
from meterkit.proxy.routing import upstream_path
from meterkit.proxy.usage import finish_record, usage_from_json

log = logging.getLogger("meterkit.proxy")

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
# A non-streamed JSON response is forwarded as it arrives; a copy of up to this many bytes is
# kept to read its usage at the end (bigger bodies pass without usage extraction).
_JSON_CAPTURE_LIMIT = 8 * 1024 * 1024
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


def _request_id(request: web.Request) -> str:
    given = request.headers.get("X-Request-Id")
    if given and _REQUEST_ID.match(given):
        return given
    return uuid.uuid4().hex


async def handle(request: web.Request) -> web.StreamResponse:
    rid = _request_id(request)
    token = request_id_var.set(rid)
    try:
        return await _handle(request, rid)
    except ProxyError as e:
        return problem_response(e, rid)
    except Exception:
        # A bug or an operator hook failing: log it, answer problem details, keep serving.
        log.exception("unhandled error", extra={"path": request.path})
        return problem_response(
            ProxyError(500, "internal-error", "Internal error", "the gateway failed; see its logs"),
            rid,
        )
    finally:
        request_id_var.reset(token)


async def _read_capped(request: web.Request, limit: int) -> bytes:
    if request.content_length is not None and request.content_length > limit:
        raise problems.body_too_large(limit)
    buf = bytearray()
    async for chunk in request.content.iter_any():
        buf += chunk
        if len(buf) > limit:
            raise problems.body_too_large(limit)
    return bytes(buf)


async def _body_stream(request: web.Request) -> Any:
    async for chunk in request.content.iter_any():
        yield chunk


def _context(request: web.Request, rid: str) -> RequestContext:
    app = request.app
    match, path_known = app[ROUTER].match(request.method, request.raw_path)
    if match is None:
        if path_known:
            raise problems.method_not_allowed(request.method, request.path)
        raise problems.not_found(request.method, request.path)
    route = match.route
    upstream = app[CONFIG].upstreams[route.upstream]
    path = upstream_path(
        route, match.params, request.raw_path.split("?", 1)[0], request.query, request.query_string
    )
    if route.format == "none":
        fmt = None
    elif route.format == "auto":
        fmt = detect_format(path) or detect_format(request.path)
    else:
        fmt = route.format
    return RequestContext(
        request=request,
        request_id=rid,
        route=route,
        params=dict(match.params),
        upstream=upstream,
        upstream_path=path,
        format=fmt,
    )


async def _read_llm_body(ctx: RequestContext) -> None:
    request = ctx.request
    ctx.body = await _read_capped(request, request.app[CONFIG].gateway.max_request_body)
    if not ctx.body:
        return
    try:
        parsed = orjson.loads(ctx.body)
    except orjson.JSONDecodeError as e:
        raise problems.bad_json(f"the request body is not valid JSON: {e}") from None
    if not isinstance(parsed, dict):
        raise problems.bad_json("the request body must be a JSON object")
    ctx.json = parsed
    model = parsed.get("model")
    ctx.model = model if isinstance(model, str) else None
    accept = request.headers.get("Accept", "")
    ctx.stream = parsed.get("stream") is True or "text/event-stream" in accept


async def _handle(request: web.Request, rid: str) -> web.StreamResponse:
    ctx = _context(request, rid)
    has_body = request.method not in _METHODS_WITHOUT_BODY and (
        request.content_length or request.body_exists
    )
    if ctx.format is not None and has_body:
        await _read_llm_body(ctx)
    stages = request.app[STAGES]
    ran: list[Any] = []
    try:
        for stage in stages:
            answer = await stage.on_request(ctx)
            ran.append(stage)
            if answer is not None:
                await _abort(ctx, ran[:-1])
                return answer
        # Every stage admitted the request: the moment to commit (e.g. settle a payment).
        for stage in stages:
            hook = getattr(stage, "before_upstream", None)
            committed: web.StreamResponse | None = await hook(ctx) if hook is not None else None
            if committed is not None:
                await _abort(ctx, stages)
                return committed
    except ProxyError:
        await _abort(ctx, ran)
        raise
    try:
        return await _forward(ctx, has_body=bool(has_body))
    except ProxyError as e:
        for stage in stages:
            hook = getattr(stage, "on_upstream_failure", None)
            if hook is not None:
                await hook(ctx, e)
        return problem_response(e, ctx.request_id, dict(ctx.response_headers))


async def _abort(ctx: RequestContext, stages: Any) -> None:
    """A later stage answered instead of the upstream: earlier stages undo what they took."""
    for stage in stages:
        hook = getattr(stage, "on_abort", None)
        if hook is not None:
            try:
                await hook(ctx)
            except Exception:
                log.exception("stage on_abort failed", extra={"stage": getattr(stage, "name", "?")})


async def _open_upstream(ctx: RequestContext, has_body: bool) -> aiohttp.ClientResponse:
    request = ctx.request
    app = request.app
    up = ctx.upstream
    peer = request.remote
    headers = upstream_request_headers(
        request.headers,
        up.headers,
        client_ip=peer,
        scheme=request.scheme,
        host=request.host,
        request_id=ctx.request_id,
        metered=ctx.format is not None,
    )
    if ctx.body is not None:
        data: Any = orjson.dumps(ctx.json) if ctx.body_changed else ctx.body
    elif has_body:
        data = _body_stream(request)
    else:
        data = None
    timeout = aiohttp.ClientTimeout(
        total=None, connect=up.timeouts.connect, sock_connect=up.timeouts.connect
    )
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
        app[METRICS].upstream_errors.labels(ctx.route.key, "timeout").inc()
        raise problems.upstream_timeout(
            up.name, up.timeouts.first_byte, "response headers"
        ) from None
    except aiohttp.ConnectionTimeoutError:
        app[METRICS].upstream_errors.labels(ctx.route.key, "connect_timeout").inc()
        raise problems.upstream_timeout(up.name, up.timeouts.connect, "connection") from None
    except (aiohttp.ClientError, OSError) as e:
        app[METRICS].upstream_errors.labels(ctx.route.key, "connect").inc()
        raise problems.upstream_unreachable(up.name, str(e) or type(e).__name__) from None


async def _forward(ctx: RequestContext, has_body: bool) -> web.StreamResponse:
    resp = await _open_upstream(ctx, has_body)
    try:
        for stage in ctx.request.app[STAGES]:
            hook = getattr(stage, "on_upstream_response", None)
            answer: web.StreamResponse | None = (
                await hook(ctx, resp.status) if hook is not None else None
            )
            if answer is not None:
                # Answered instead (e.g. the payment could not settle): drop the upstream.
                return answer
        event_stream = resp.headers.get("Content-Type", "").startswith("text/event-stream")
        if event_stream:
            return await _stream_events(ctx, resp)
        return await _pass_through(ctx, resp)
    finally:
        # Closing (not releasing) an unfinished response drops its connection: this is what
        # stops the upstream when the client left or the stream was cut.
        resp.close()


class _StreamRun:
    """The state of one metered stream: what went out, and how it ended."""

    def __init__(self, ctx: RequestContext, out: web.StreamResponse, meter: StreamMeter) -> None:
        self.ctx = ctx
        self.out = out
        self.meter = meter
        self.metrics = ctx.request.app[METRICS]
        self.outcome = "completed"
        self.error: str | None = None
        self.ttft: float | None = None
        self.sent = 0

    async def emit(self, data: bytes) -> None:
        if not data:
            return
        if self.ttft is None:
            self.ttft = time.monotonic() - self.ctx.started
            self.metrics.ttft.labels(self.ctx.route.key).observe(self.ttft)
        await self.out.write(data)
        self.sent += len(data)

    async def settle(self, r: FeedResult) -> bool:
        """Write what a meter result releases; while the meter waits for credit, get more
        (or end the stream when there is none). False when the stream is over."""
        await self.emit(r.forward)
        while r.paused or self.meter.state == "paused":
            source = self.ctx.credit_source
            granted = await source() if source is not None else 0
            if granted is None:
                r = self.meter.clear_credit()
            elif granted > 0:
                r = self.meter.grant(granted)
            else:
                await self.emit(self.meter.truncate("the token budget is exhausted"))
                self.outcome = "truncated"
                return False
            await self.emit(r.forward)
        if r.truncated:
            self.outcome = "truncated"
            return False
        if r.state == "failed":
            self.outcome, self.error = (
                "upstream_error",
                "the upstream stream broke the event size limit",
            )
            return False
        return True


async def _stream_events(ctx: RequestContext, resp: aiohttp.ClientResponse) -> web.StreamResponse:
    request = ctx.request
    metrics = request.app[METRICS]
    route = ctx.route.key
    settings = ctx.meter
    meter = StreamMeter(
        ctx.format or "auto",
        ctx.model,
        path=ctx.upstream_path,
        limit=settings.limit,
        shadow=settings.shadow,
        ending=settings.ending,
        credit=settings.credit,
        prompt_tokens=ctx.prompt_tokens,
        strip_usage=settings.strip_usage,
        partial_usage=settings.partial_usage,
    )
    out = web.StreamResponse(
        status=resp.status,
        headers=client_response_headers(resp.headers, event_stream=True, request_id=ctx.request_id),
    )
    for k, v in ctx.response_headers.items():
        out.headers[k] = v
    await out.prepare(request)
    metrics.active_streams.labels(route).inc()
    watchdog = IdleWatchdog(ctx.upstream.timeouts.idle)
    run = _StreamRun(ctx, out, meter)
    try:
        while True:
            try:
                chunk = await resp.content.readany()
            except (aiohttp.ClientError, OSError) as e:
                run.outcome, run.error = (
                    "upstream_error",
                    f"upstream stream failed: {e or type(e).__name__}",
                )
                break
            if not chunk:
                break
            watchdog.touch()
            if not await run.settle(meter.feed(chunk)):
                break
        if run.outcome == "completed" and await run.settle(meter.close()):
            if meter.state == "streaming" and meter.format is not None:
                # The upstream ended without its end-of-stream marker.
                run.outcome, run.error = (
                    "upstream_error",
                    "the upstream closed the stream before its end",
                )
        if run.outcome == "upstream_error":
            metrics.upstream_errors.labels(route, "stream").inc()
            await run.emit(meter.fail(run.error or "upstream error"))
        await out.write_eof()
    except asyncio.CancelledError:
        if watchdog.fired:
            # Idle upstream: end the client's stream properly and carry on.
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            run.outcome, run.error = (
                "upstream_error",
                f"upstream idle for {ctx.upstream.timeouts.idle:g} s",
            )
            metrics.upstream_errors.labels(route, "idle_timeout").inc()
            try:
                await run.emit(meter.fail(run.error))
                await out.write_eof()
            except (ConnectionResetError, RuntimeError):
                pass
        else:
            run.outcome = "client_cancelled"
            metrics.cancellations.labels(route).inc()
            raise
    except (ConnectionResetError, RuntimeError) as e:
        # RuntimeError: aiohttp refuses writes to a closed transport in some versions.
        run.outcome, run.error = "client_cancelled", str(e) or type(e).__name__
        metrics.cancellations.labels(route).inc()
    finally:
        watchdog.stop()
        # Closing the response drops the upstream connection: this is the abort on
        # truncation and on client disconnect.
        resp.close()
        metrics.active_streams.labels(route).dec()
        _record(ctx, resp.status, run.outcome, run.error, run.ttft, run.sent, meter=meter)
    return out


async def _pass_through(ctx: RequestContext, resp: aiohttp.ClientResponse) -> web.StreamResponse:
    request = ctx.request
    metrics = request.app[METRICS]
    out = web.StreamResponse(
        status=resp.status,
        headers=client_response_headers(
            resp.headers, event_stream=False, request_id=ctx.request_id
        ),
    )
    for k, v in ctx.response_headers.items():
        out.headers[k] = v
    capture: bytearray | None = None
    if ctx.format is not None and "json" in resp.headers.get("Content-Type", ""):
        capture = bytearray()
    await out.prepare(request)
    watchdog = IdleWatchdog(ctx.upstream.timeouts.idle)
    outcome = "upstream_error" if resp.status >= 500 else "completed"
    error = f"upstream answered {resp.status}" if resp.status >= 500 else None
    ttft: float | None = None
    sent = 0
    try:
        async for chunk in resp.content.iter_any():
            watchdog.touch()
            if ttft is None:
                ttft = time.monotonic() - ctx.started
                metrics.ttft.labels(ctx.route.key).observe(ttft)
            await out.write(chunk)
            sent += len(chunk)
            if capture is not None:
                if len(capture) + len(chunk) <= _JSON_CAPTURE_LIMIT:
                    capture += chunk
                else:
                    capture = None
        await out.write_eof()
    except asyncio.CancelledError:
        if not watchdog.fired:
            metrics.cancellations.labels(ctx.route.key).inc()
            _record(ctx, resp.status, "client_cancelled", None, ttft, sent)
            raise
        task = asyncio.current_task()
        if task is not None:
            task.uncancel()
        outcome, error, capture = (
            "upstream_error",
            f"upstream idle for {ctx.upstream.timeouts.idle:g} s",
            None,
        )
        # A body with a length cannot be ended cleanly mid-way: drop the connection.
        if request.transport is not None:
            request.transport.close()
    except (aiohttp.ClientError, OSError) as e:
        outcome, error, capture = (
            "upstream_error",
            f"upstream body failed: {e or type(e).__name__}",
            None,
        )
        if request.transport is not None:
            request.transport.close()
    finally:
        watchdog.stop()
    parsed = None
    if capture:
        try:
            parsed = orjson.loads(bytes(capture))
        except orjson.JSONDecodeError:
            parsed = None
    _record(ctx, resp.status, outcome, error, ttft, sent, json_body=parsed)
    return out


def _record(
    ctx: RequestContext,
    status: int,
    outcome: str,
    error: str | None,
    ttft: float | None,
    sent: int,
    *,
    meter: StreamMeter | None = None,
    json_body: Any = None,
) -> None:
    """Finish the usage record in a task of its own: it may need to count the prompt (CPU,
    off the loop for big prompts) and it must complete even while this handler is being
    cancelled."""
    app = ctx.request.app
    duration = time.monotonic() - ctx.started
    json_usage = usage_from_json(ctx.format, json_body) if json_body is not None else None

    async def run() -> None:
        record = await finish_record(
            ctx,
            status=status,
            outcome=outcome,
            error=error,
            ttft=ttft,
            duration=duration,
            response_bytes=sent,
            meter=meter,
            json_usage=json_usage,
        )
        for stage in app[STAGES]:
            try:
                await stage.on_complete(ctx, record)
            except Exception:
                log.exception(
                    "stage on_complete failed", extra={"stage": getattr(stage, "name", "?")}
                )
        _observe(app, record)
        app[SINK].submit(record)

    app[TASKS].spawn(run())


def _observe(app: web.Application, record: Any) -> None:
    m = app[METRICS]
    m.requests.labels(record.route, str(record.status), record.outcome).inc()
    model = record.model or "unknown"
    if record.prompt_tokens is not None:
        m.tokens.labels(record.route, model, "prompt", record.prompt_provenance or "estimated").inc(
            record.prompt_tokens
        )
    if record.completion_tokens is not None:
        m.tokens.labels(
            record.route, model, "completion", record.completion_provenance or "estimated"
        ).inc(record.completion_tokens)
    for kind in record.anomalies:
        m.anomalies.labels(record.route, kind).inc()

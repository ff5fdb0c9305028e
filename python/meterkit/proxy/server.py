"""The listening side: aiohttp's HTTP/1.1 server with the limits a public gateway needs.

aiohttp's defaults hold stalled connections for an hour (`keepalive_timeout=3630`, and no
limit at all on a request head that never ends), accept until the process runs out of
descriptors, and log a full traceback at error level for every malformed request head.
Here:

- **Request-head timeout** (`gateway.header_timeout`, nginx's `client_header_timeout`): a
  head must be complete this long after its first byte, or the connection is closed.
- **Keep-alive idle timeout** (`gateway.keepalive_timeout`): a connection with no request in
  progress (fresh, or after a response) is closed after this long.
  Both ride on aiohttp's own keep-alive timer (one timer per connection, no extra task): it
  closes the connection when it fires while the protocol waits for a request, so the head
  timeout only has to move that timer's deadline when a head starts.
- **Request-body timeout** (`gateway.body_timeout`, nginx's `client_body_timeout`): once a
  handler runs, the keep-alive timer is off, so a client that sends a head and then stalls
  in its body would hold the connection and the handler for ever. Every read of a body goes
  through `body_chunks`, which gives up when one read waited this long for the client (the
  silence between two reads, not a deadline for the whole body; time the gateway spends
  not reading, e.g. while the upstream takes the body slowly, does not count): a 408
  problem, and the connection is closed right after it instead of aiohttp's lingering read
  of the rest of the body. Timed where the body is read rather than in `data_received`,
  because only the reader knows whether it is waiting for the client.
- **Connection cap** (`gateway.max_connections`): at the cap, a new connection evicts the
  connection that has waited longest without a request in progress (idle or stalled in its
  head); when every connection is busy, it gets a 503 and is closed. The default keeps half
  of the descriptors below `RLIMIT_NOFILE` (minus a reserve for listeners, stores and logs)
  for upstream connections, so a busy client connection can always open its upstream one.
- **Malformed heads** (too long, too many headers, bad syntax) get a 400 or 431 problem and
  at most one warning per `_WARN_INTERVAL` seconds, never a traceback.
- **Descriptor exhaustion at accept**: asyncio logs one error with a traceback per failed
  `accept()` (up to `backlog` per second); `quiet_accept_errors` turns them into one
  rate-limited warning. uvloop (libuv) already accepts and drops connections at EMFILE
  without a callback, and the cap keeps client connections below the limit anyway.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError, LineTooLong
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from meterkit.pipeline.problems import problem_response
from meterkit.problems import ProxyError

log = logging.getLogger("meterkit.server")

# Descriptors kept out of the client connection budget: listeners, the usage and ledger
# stores, log files, the budget store's pool, DNS.
FD_RESERVE = 128
_WARN_INTERVAL = 10.0
_BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nRetry-After: 1\r\n"
    b"Content-Type: text/plain\r\nContent-Length: 30\r\n\r\ntoo many connections; retry.\r\n"
)


class StartupError(Exception):
    """A resource the proxy needs did not open (a store, a data path, an operator hook);
    `cause` is the original exception."""

    def __init__(self, cause: BaseException, what: str | None = None) -> None:
        super().__init__(str(cause))
        self.cause = cause
        # Which resource, for the one-line message ("usage store (PostgreSQL)").
        self.what = what


class RateLimitedWarning:
    """At most one warning per `interval` seconds; the next one says how many were dropped."""

    def __init__(self, logger: logging.Logger, interval: float = _WARN_INTERVAL) -> None:
        self.logger = logger
        self.interval = interval
        self.next_at = 0.0
        self.suppressed = 0

    def warn(self, msg: str, **extra: Any) -> bool:
        now = time.monotonic()
        if now < self.next_at:
            self.suppressed += 1
            return False
        self.next_at = now + self.interval
        if self.suppressed:
            extra["suppressed"] = self.suppressed
        self.suppressed = 0
        self.logger.warning(msg, extra=extra)
        return True


def descriptor_limit() -> int:
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def connection_cap(configured: int | None, fd_limit: int | None = None) -> int:
    """The client connection cap: `configured`, or what the descriptor limit leaves for one
    client and one upstream descriptor per connection, whichever is lower."""
    limit = descriptor_limit() if fd_limit is None else fd_limit
    if limit == resource.RLIM_INFINITY or limit <= 0:
        allowed = 1 << 20
    else:
        allowed = max(16, (limit - FD_RESERVE) // 2)
    return allowed if configured is None else min(configured, allowed)


@dataclass(frozen=True)
class ServerLimits:
    header_timeout: float = 60.0
    keepalive_timeout: float = 60.0
    max_connections: int = 1 << 20


def body_timeout(seconds: float) -> ProxyError:
    return ProxyError(
        408,
        "request-body-timeout",
        "Request body timeout",
        f"no byte of the request body arrived for {seconds:g} s",
        timeout=seconds,
    )


async def body_chunks(request: web.BaseRequest, timeout: float) -> AsyncIterator[bytes]:
    """The request body as it arrives. A read that waits `timeout` seconds for the client
    raises `body_timeout` (a ProxyError, 408) and marks the connection to close right after
    its response: the rest of the body is never read, so the connection cannot be reused."""
    payload = request.content
    while True:
        try:
            async with asyncio.timeout(timeout):
                chunk = await payload.readany()
        except TimeoutError:
            protocol = request.protocol
            if isinstance(protocol, GatewayProtocol):
                protocol.close_after_response()
            raise body_timeout(timeout) from None
        if not chunk:
            return
        yield chunk


class GatewayProtocol(RequestHandler):
    """aiohttp's request handler with a request-head deadline and quiet head errors."""

    __slots__ = ("_close_after_response", "_head_started", "_waiting_since")

    def __init__(self, manager: GatewayServer, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._head_started: float | None = None
        self._waiting_since = self._loop.time()
        self._close_after_response = False

    def close_after_response(self) -> None:
        """Close the connection once the current response is sent (`Connection: close`),
        without first reading what is left of the request body: aiohttp would otherwise
        linger up to 10 s reading a body the client stopped sending."""
        self._close_after_response = True
        self._lingering_time = 0.0

    async def finish_response(
        self, request: BaseRequest, resp: web.StreamResponse, start_time: float | None
    ) -> tuple[web.StreamResponse, bool]:
        if self._close_after_response:
            resp.force_close()
        return await super().finish_response(request, resp, start_time)

    @property
    def gateway(self) -> GatewayServer:
        manager = self._manager
        assert isinstance(manager, GatewayServer)
        return manager

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if not self.gateway.admit(self):
            t = self.transport
            if t is not None:
                t.write(_BUSY)
            self.force_close()

    @property
    def waiting(self) -> bool:
        """No request in progress: idle between requests, or still reading a head."""
        return not self._request_in_progress and not self._messages

    def data_received(self, data: bytes) -> None:
        waiting = self.waiting
        super().data_received(data)
        if not waiting or not data:
            return
        if self._messages:
            # A complete head: the handler runs, then aiohttp re-arms the keep-alive timer.
            self._head_started = None
            self._waiting_since = self._loop.time()
        elif self._head_started is None:
            # The first byte of a head: it now has `header_timeout`, whatever the keep-alive
            # timer said (a later deadline only needs the timer to reschedule itself when
            # it fires; an earlier one needs it re-armed).
            now = self._loop.time()
            self._head_started = now
            deadline = now + self.gateway.limits.header_timeout
            rearm = deadline < self._next_keepalive_close_time
            self._next_keepalive_close_time = deadline
            if rearm and self._keepalive_handle is not None:
                self._keepalive_handle.cancel()
                self._keepalive_handle = None
            if self._keepalive_handle is None:
                self._keepalive_handle = self._loop.call_at(deadline, self._process_keepalive)

    async def _handle_request(
        self,
        request: BaseRequest,
        start_time: float | None,
        request_handler: Callable[[BaseRequest], Awaitable[web.StreamResponse]],
    ) -> tuple[web.StreamResponse, bool]:
        # A request runs: whatever arrives now is its body, not the start of a head.
        self._head_started = None
        try:
            return await super()._handle_request(request, start_time, request_handler)
        finally:
            self._waiting_since = self._loop.time()

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if not isinstance(exc, HttpProcessingError):
            return super().handle_error(request, status, exc, message)
        # A malformed head: the client's mistake (or an attack), not ours. No traceback.
        too_large = isinstance(exc, LineTooLong) or "Too many headers" in str(exc.message)
        if too_large:
            error = ProxyError(
                431,
                "request-header-too-large",
                "Request header fields too large",
                "a request line or header field, or the number of headers, is over the limit",
            )
        else:
            error = ProxyError(
                400, "malformed-request", "Malformed request", "the request head is not valid HTTP"
            )
        self.gateway.malformed.warn(
            "malformed request head",
            status=error.status,
            peer=str(request.remote),
            error=type(exc).__name__,
        )
        resp = problem_response(error, None)
        resp.force_close()
        return resp


class GatewayServer(web.Server):
    """aiohttp's connection manager with the connection cap."""

    limits: ServerLimits
    malformed: RateLimitedWarning
    refused: RateLimitedWarning

    def configure(self, limits: ServerLimits) -> None:
        self.limits = limits
        self.malformed = RateLimitedWarning(log)
        self.refused = RateLimitedWarning(log)

    def __call__(self) -> RequestHandler:
        return GatewayProtocol(self, loop=self._loop, **self._kwargs)

    def admit(self, protocol: GatewayProtocol) -> bool:
        """Called when `protocol` connected (already counted): make room at the cap by
        closing the connection that waited longest without a request, or refuse."""
        if len(self._connections) <= self.limits.max_connections:
            return True
        oldest: GatewayProtocol | None = None
        for conn in self._connections:
            if conn is protocol or not isinstance(conn, GatewayProtocol) or not conn.waiting:
                continue
            if oldest is None or conn._waiting_since < oldest._waiting_since:
                oldest = conn
        if oldest is not None:
            oldest.force_close()
            # Not yet removed: aiohttp forgets it in `connection_lost`, on the next turn.
            self._connections.pop(oldest, None)
            return True
        self.refused.warn(
            "connection cap reached; refusing connections",
            max_connections=self.limits.max_connections,
        )
        return False


class GatewayRunner(web.AppRunner):
    def __init__(self, app: web.Application, limits: ServerLimits, **kwargs: Any) -> None:
        # keepalive_timeout is aiohttp's idle timer; the head timeout moves its deadline.
        super().__init__(app, keepalive_timeout=limits.keepalive_timeout, **kwargs)
        self._limits = limits

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        # aiohttp builds its Server inside `Application._make_handler`; switching the class
        # of that instance keeps every argument aiohttp passes without copying its logic.
        server.__class__ = GatewayServer
        assert isinstance(server, GatewayServer)
        server.configure(self._limits)
        return server


_accept_warning = RateLimitedWarning(log)


def quiet_accept_errors(loop: asyncio.AbstractEventLoop) -> None:
    """Turn asyncio's per-`accept()` EMFILE tracebacks into one rate-limited warning; every
    other loop error goes to the handler that was there before."""
    previous = loop.get_exception_handler()
    if getattr(previous, "meterkit_quiet", False):
        return

    def handler(lp: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        message = str(context.get("message", ""))
        if message.startswith("socket.accept() out of system resource"):
            exc = context.get("exception")
            _accept_warning.warn(
                "cannot accept connections: out of descriptors (retrying)",
                error=str(exc) if exc else message,
            )
            return
        if previous is not None:
            previous(lp, context)
        else:
            lp.default_exception_handler(context)

    handler.meterkit_quiet = True  # type: ignore[attr-defined]
    loop.set_exception_handler(handler)

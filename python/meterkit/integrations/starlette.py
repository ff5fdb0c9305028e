"""Sell a Starlette (or FastAPI) endpoint's SSE stream per delivered token over MPP session
channels. Needs Starlette, which meterkit does not depend on: this module is the only one
that imports it.

    meter = SessionMeter.build(store, price="$0.00001", pay_to=PAY_TO, secret=SECRET)

    @paid_stream(meter)
    async def complete(request: Request) -> Completion:
        body = await request.json()
        prompt = meterkit.count_chat_prompt(body["messages"], "gpt-4o")
        return Completion(my_model(body), format="openai-chat", model="gpt-4o",
                          prompt_tokens=prompt)

    app = Starlette(routes=[Route("/v1/chat/completions", complete, methods=["POST"])],
                    lifespan=lifespan(meter))

Answers as `meterkit.integrations.aiohttp` does: the 402 with session challenges, 204 +
`Payment-Receipt` for a voucher or close (POST, no body), problem details for a refusal,
the metered stream for a paid request. The stream's response watches for the client's
disconnect itself, so a client that leaves while its stream waits for a voucher is charged
what it was sent at once, on any ASGI server.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

try:
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.types import Receive, Scope, Send
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError(
        "meterkit.integrations.starlette needs Starlette: pip install starlette"
    ) from e

from meterkit.problems import Rendered
from meterkit.sessions.meter import CHANNEL_HINT, SessionMeter
from meterkit.sessions.stream import Completion, PaidStream

__all__ = ["Completion", "PaidStreamingResponse", "admit", "lifespan", "paid_stream", "stream"]

Endpoint = Callable[[Request], Awaitable[Response]]


def _response(r: Rendered) -> Response:
    """A rendered answer as a Starlette response (`WWW-Authenticate` repeated per challenge)."""
    resp = Response(content=r.body, status_code=r.status)
    for name, value in r.headers:
        if name.lower() == "www-authenticate":
            resp.headers.append(name, value)
        else:
            resp.headers[name] = value
    return resp


async def admit(request: Request, meter: SessionMeter) -> PaidStream | Response:
    """The request's session admission: a `PaidStream` to `stream`, or the response to
    send instead (the 402, a 204 receipt for a voucher or close, a refusal)."""
    body = await request.body()  # cached: the endpoint can still read it
    out = await meter.answer(
        request.headers,
        method=request.method,
        has_body=bool(body),
        now=time.time(),
        host=request.url.hostname,
    )
    return _response(out) if isinstance(out, Rendered) else out


class PaidStreamingResponse(Response):
    """A paid stream's response. Unlike `StreamingResponse` it always closes the relay
    (which settles the stream) and always watches for the client's disconnect, also while
    nothing is written — a stream paused for a voucher writes nothing."""

    media_type = "text/event-stream"

    def __init__(
        self, paid: PaidStream, relay: AsyncGenerator[bytes, None], headers: Mapping[str, str]
    ) -> None:
        self.paid = paid
        self.relay = relay
        self.status_code = 200
        self.background = None
        self.init_headers(headers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def write() -> None:
            await send(
                {
                    "type": "http.response.start",
                    "status": self.status_code,
                    "headers": self.raw_headers,
                }
            )
            async for chunk in self.relay:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})

        async def gone() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass

        writing = asyncio.ensure_future(write())
        watching = asyncio.ensure_future(gone())
        try:
            await asyncio.wait((writing, watching), return_when=asyncio.FIRST_COMPLETED)
        finally:
            try:
                # A client gone mid-stream cancels the writer: inside the relay (waiting for
                # a voucher) that ends it; anywhere else, closing it below does.
                for task in (watching, writing):
                    task.cancel()
                await asyncio.gather(writing, watching, return_exceptions=True)
            finally:
                await self.relay.aclose()
                await self.paid.release()  # the hold, if the relay never started
        if not writing.cancelled():
            error = writing.exception()
            if error is not None and not isinstance(error, OSError):
                raise error


async def stream(request: Request, paid: PaidStream, completion: Completion) -> Response:
    """Charge the prompt, then the completion metered and paid (`PaidStream.relay`). A
    channel without credit for the prompt and one token gets its problem instead, and the
    completion is never read."""
    refused = await paid.begin(
        completion, host=request.url.hostname, channel_hint=request.headers.get(CHANNEL_HINT)
    )
    if refused is not None:
        return _response(refused)
    relay = paid.relay(
        completion.chunks, format=completion.format, model=completion.model, path=completion.path
    )
    return PaidStreamingResponse(
        paid, relay, {"Cache-Control": "no-cache", **completion.headers, **paid.headers}
    )


def paid_stream(
    meter: SessionMeter,
) -> Callable[[Callable[[Request], Awaitable[Completion]]], Endpoint]:
    """Wrap an endpoint that returns a `Completion` into one that sells it per token."""

    def wrap(fn: Callable[[Request], Awaitable[Completion]]) -> Endpoint:
        @functools.wraps(fn)
        async def endpoint(request: Request) -> Response:
            admitted = await admit(request, meter)
            if not isinstance(admitted, PaidStream):
                return admitted
            return await stream(request, admitted, await fn(request))

        return endpoint

    return wrap


def lifespan(meter: SessionMeter) -> Callable[[Any], contextlib.AbstractAsyncContextManager[None]]:
    """For `Starlette(lifespan=…)`: open the meter's store with the app, close it after."""

    @contextlib.asynccontextmanager
    async def span(app: Any) -> AsyncIterator[None]:
        async with meter:
            yield

    return span

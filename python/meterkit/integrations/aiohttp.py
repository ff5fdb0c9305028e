"""Sell an aiohttp handler's SSE stream per delivered token over MPP session channels.

    meter = SessionMeter.build(store, price="$0.00001", pay_to=PAY_TO, secret=SECRET)

    @paid_stream(meter)
    async def complete(request: web.Request) -> Completion:
        body = await request.json()
        prompt = meterkit.count_chat_prompt(body["messages"], "gpt-4o")
        return Completion(my_model(body), format="openai-chat", model="gpt-4o",
                          prompt_tokens=prompt)

    app = web.Application()
    app.cleanup_ctx.append(cleanup_ctx(meter))       # opens and closes the store
    app.router.add_post("/v1/chat/completions", complete)
    web.run_app(app, handler_cancellation=True)

The wrapped handler answers a request without a session credential with the 402 (session
challenges), a voucher or close (POST, no body) with 204 + `Payment-Receipt`, a refused
credential with its problem details, and a paid one with the metered stream. Serve with
`handler_cancellation=True` so a client that leaves while its stream waits for a voucher
is noticed at once (it is charged the same either way: what it was sent).

`admit` and `stream` are the two halves, for a handler that does more between them.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web
from multidict import CIMultiDict

from meterkit.problems import Rendered
from meterkit.sessions.meter import CHANNEL_HINT, SessionMeter
from meterkit.sessions.stream import Completion, PaidStream

__all__ = ["Completion", "admit", "cleanup_ctx", "paid_stream", "stream"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _response(r: Rendered) -> web.Response:
    return web.Response(status=r.status, headers=CIMultiDict(r.headers), body=r.body or None)


async def admit(request: web.Request, meter: SessionMeter) -> PaidStream | web.Response:
    """The request's session admission: a `PaidStream` to `stream`, or the response to
    send instead (the 402, a 204 receipt for a voucher or close, a refusal)."""
    body = await request.read()  # cached: the handler can still read it
    out = await meter.answer(
        request.headers,
        method=request.method,
        has_body=bool(body),
        now=time.time(),
        host=request.url.host,
    )
    return _response(out) if isinstance(out, Rendered) else out


async def stream(
    request: web.Request, paid: PaidStream, completion: Completion
) -> web.StreamResponse:
    """Charge the prompt, then send the completion metered and paid (`PaidStream.relay`).
    A channel without credit for the prompt and one token gets its problem instead, and
    the completion is never read."""
    refused = await paid.begin(
        completion, host=request.url.host, channel_hint=request.headers.get(CHANNEL_HINT)
    )
    if refused is not None:
        return _response(refused)
    resp = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            **completion.headers,
            **paid.headers,
        }
    )
    try:
        await resp.prepare(request)
        relay = paid.relay(
            completion.chunks,
            format=completion.format,
            model=completion.model,
            path=completion.path,
        )
        # Closed however the loop ends: the relay settles what was sent and stops the model.
        async with contextlib.aclosing(relay) as out:
            async for data in out:
                await resp.write(data)
        await resp.write_eof()
    except ConnectionResetError:
        pass  # the client left; it is charged what it was sent
    finally:
        await paid.release()  # the hold, if the client left before the relay started
    return resp


def paid_stream(
    meter: SessionMeter,
) -> Callable[[Callable[[web.Request], Awaitable[Completion]]], Handler]:
    """Wrap a handler that returns a `Completion` into one that sells it per token."""

    def wrap(fn: Callable[[web.Request], Awaitable[Completion]]) -> Handler:
        @functools.wraps(fn)
        async def handler(request: web.Request) -> web.StreamResponse:
            admitted = await admit(request, meter)
            if not isinstance(admitted, PaidStream):
                return admitted
            return await stream(request, admitted, await fn(request))

        return handler

    return wrap


def cleanup_ctx(meter: SessionMeter) -> Callable[[web.Application], AsyncIterator[None]]:
    """For `app.cleanup_ctx`: open the meter's store with the app, close it after."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        async with meter:
            yield

    return ctx

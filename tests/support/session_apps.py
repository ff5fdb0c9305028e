"""A service of its own selling its stream per token with the session meter, without the
proxy: the same small completion endpoint as an aiohttp app and as a Starlette app (served
by uvicorn in this event loop), each over a real loopback socket.

Its "model" streams meterkit's sample text as OpenAI chat chunks, one event per read; each
stream records when the relay closed it (`Served.closed`), which is after the stream was
settled, so a test can wait for that instead of for time."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from meterkit import count_chat_prompt, synth
from meterkit.sessions.channels import Channel
from meterkit.sessions.meter import Completion, SessionMeter
from meterkit.sessions.store import SessionStore
from support.payments import PAY_TO, SECRET

CHAT = "/v1/chat/completions"
# $0.00001 a completion token = 10 base units of USDC (6 decimals).
PRICE = 10
TEXT = synth.SAMPLE_TEXT
FRAMEWORKS = ("aiohttp", "starlette")


@dataclass
class Served:
    url: str
    meter: SessionMeter
    # One event per stream the model started, set once the relay closed it.
    closed: list[asyncio.Event] = field(default_factory=list)

    async def channel(self, cid: str) -> Channel:
        c = await self.meter.store.get(cid)
        assert c is not None
        return c

    async def stream_closed(self) -> None:
        for _ in range(1000):
            if self.closed:
                break
            await asyncio.sleep(0.01)
        await asyncio.wait_for(self.closed[-1].wait(), 30)


def make_meter(db: Path, **terms: Any) -> SessionMeter:
    return SessionMeter.build(
        SessionStore(db),
        price="$0.00001",
        pay_to=PAY_TO,
        secret=SECRET,
        **{"voucher_timeout": 30.0, **terms},
    )


def _model(served: Served) -> AsyncIterator[bytes]:
    closed = asyncio.Event()
    served.closed.append(closed)

    async def reads() -> AsyncIterator[bytes]:
        try:
            for event in synth.chat_events(synth.split_deltas(TEXT), model="gpt-4o"):
                await asyncio.sleep(0)
                yield event
        finally:
            closed.set()

    return reads()


def _completion(served: Served, body: dict[str, Any]) -> Completion:
    return Completion(
        _model(served),
        format="openai-chat",
        model="gpt-4o",
        prompt_tokens=count_chat_prompt(body["messages"], "gpt-4o"),
    )


def _socket() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    return sock


@asynccontextmanager
async def _aiohttp(meter: SessionMeter) -> AsyncIterator[Served]:
    from aiohttp import web

    from meterkit.integrations.aiohttp import cleanup_ctx, paid_stream

    sock = _socket()
    served = Served(f"http://127.0.0.1:{sock.getsockname()[1]}", meter)

    @paid_stream(meter)
    async def complete(request: web.Request) -> Completion:
        return _completion(served, await request.json())

    app = web.Application()
    app.cleanup_ctx.append(cleanup_ctx(meter))
    app.router.add_post(CHAT, complete)
    # handler_cancellation: a client that leaves cancels its handler at once.
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
    await runner.setup()
    await web.SockSite(runner, sock).start()
    try:
        yield served
    finally:
        await runner.cleanup()


@asynccontextmanager
async def _starlette(meter: SessionMeter) -> AsyncIterator[Served]:
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.routing import Route

    from meterkit.integrations.starlette import lifespan, paid_stream

    sock = _socket()
    served = Served(f"http://127.0.0.1:{sock.getsockname()[1]}", meter)

    @paid_stream(meter)
    async def complete(request: Request) -> Completion:
        return _completion(served, await request.json())

    app = Starlette(routes=[Route(CHAT, complete, methods=["POST"])], lifespan=lifespan(meter))
    server = uvicorn.Server(
        uvicorn.Config(app, log_level="warning", ws="none", http="h11", lifespan="on")
    )
    task = asyncio.get_running_loop().create_task(server.serve(sockets=[sock]))
    for _ in range(1000):
        if server.started or task.done():
            break
        await asyncio.sleep(0.01)
    assert server.started, "uvicorn did not start"
    try:
        yield served
    finally:
        server.should_exit = True
        await task
        sock.close()


def serve(framework: str, meter: SessionMeter) -> Any:
    """`async with serve("aiohttp" | "starlette", meter) as served:` the app on loopback."""
    return _aiohttp(meter) if framework == "aiohttp" else _starlette(meter)

"""A small misbehaving upstream on loopback, in the test's own event loop: it counts the
request bytes it was sent, answers gzip-compressed event streams despite
`Accept-Encoding: identity`, streams faster than a client reads, and breaks its responses
in ways whose bytes must stay out of what the client sees.

Behaviours by path (any method):
  /sink                 read the body, answer {"received": n} (n also kept in `received`)
  /gzip/<format>        a complete event stream of that format, gzip-compressed
  /gzip-json            a gzip-compressed JSON chat completion
  /flood/<format>       `flood_events` events of ~1 KiB each, as fast as the socket takes
  /coded/<coding>       an event stream in a content coding the proxy cannot meter
  /garbage              a status line that is not HTTP, with a secret in it
  /broken-chunk         one event, then a chunk header that is not hex, with a secret
  /stall                headers, then nothing (bounded by `stall_seconds`)
  /oversized/<format>/<blank|noblank>
                        `blank`: two events, one of `oversized_bytes` with its blank line, then
                        the rest of the stream; `noblank`: only `oversized_bytes` of one
                        event that never ends
  /mid-event/<format>   the stream's events without their ending, then ~1 MiB of `data:`
                        lines of an event that never ends, then close
  /deviant/<format>     a complete stream whose unbilled fields deviate from the schema
                        (`created` as a float, `id` as a number, extra members)
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import orjson
from aiohttp import web

SECRET = "internal-db-password-7f3a"


# Unbilled members that deviate from the schema, for `deviant` streams (issue 12 #7).
DEVIANT = {"x_extra": {"nested": [1, 2.5, None]}, "created": 1700000000.25}


def sse_events(fmt: str, texts: list[str], model: str = "gpt-4o", deviant: bool = False) -> bytes:
    """A complete stream of `fmt` carrying `texts` as deltas, with its end marker; with
    `deviant`, ids are numbers, `created` a float, and every object has an extra member."""
    out = b""
    extra: dict[str, object] = DEVIANT if deviant else {}
    if fmt == "openai-chat":
        head: dict[str, object] = {
            "id": 12345 if deviant else "c1",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": model,
        }
        for t in texts:
            chunk = {
                **head,
                "choices": [{"index": 0, "delta": {"content": t}, "finish_reason": None}],
                **extra,
            }
            out += b"data: " + orjson.dumps(chunk) + b"\n\n"
        end = {
            **head,
            "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
            **extra,
        }
        return out + b"data: " + orjson.dumps(end) + b"\n\ndata: [DONE]\n\n"
    if fmt == "anthropic":

        def ev(name: str, data: dict[str, object]) -> bytes:
            data = {**data, **extra}
            return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"

        out += ev(
            "message_start",
            {
                "type": "message_start",
                "message": {
                    "id": 42 if deviant else "m1",
                    "type": "message",
                    "role": "assistant",
                    "model": "claude-sonnet-4-6",
                    "content": [],
                    "stop_reason": None,
                    "usage": {"input_tokens": 5, "output_tokens": 1},
                },
            },
        )
        out += ev(
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
        )
        for t in texts:
            out += ev(
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {"type": "text_delta", "text": t},
                },
            )
        out += ev("content_block_stop", {"type": "content_block_stop", "index": 0})
        out += ev(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn"},
                "usage": {"output_tokens": len(texts)},
            },
        )
        return out + ev("message_stop", {"type": "message_stop"})
    raise ValueError(f"no generator for {fmt}")


WORDS = [" hello", " world", " again"] * 10


@dataclass
class HostileUpstream:
    url: str = ""
    received: list[int] = field(default_factory=list)
    accept_encodings: list[str] = field(default_factory=list)
    flood_events: int = 4000
    oversized_bytes: int = 17 << 20
    stall_seconds: float = 30.0
    flood_done: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.accept_encodings.append(request.headers.get("Accept-Encoding", ""))
        path = request.path
        if path == "/sink":
            n = 0
            with contextlib.suppress(Exception):
                async for chunk in request.content.iter_any():
                    n += len(chunk)
            self.received.append(n)
            return web.json_response({"received": n})
        await request.read()
        if path.startswith("/gzip/"):
            fmt = path.split("/", 2)[2]
            return web.Response(
                body=gzip.compress(sse_events(fmt, WORDS)),
                headers={"Content-Type": "text/event-stream", "Content-Encoding": "gzip"},
            )
        if path == "/gzip-json":
            body = {
                "id": "c1",
                "object": "chat.completion",
                "model": "gpt-4o",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "hi"},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
            }
            return web.Response(
                body=gzip.compress(orjson.dumps(body)),
                headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
            )
        if path.startswith("/flood/"):
            fmt = path.split("/", 2)[2]
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await resp.prepare(request)
            word = " " + "lorem ipsum " * 80
            try:
                block = sse_events(fmt, [word] * 50).split(b"\n\n")
                events = [e + b"\n\n" for e in block if e]
                body_events = events[:-1] if fmt == "openai-chat" else events
                # Repeat the delta events, then end the stream properly.
                head, deltas, tail = _split(fmt, body_events)
                await resp.write(b"".join(head))
                for i in range(self.flood_events):
                    await resp.write(deltas[i % len(deltas)])
                await resp.write(b"".join(tail))
                await resp.write_eof()
            finally:
                self.flood_done.set()
            return resp
        if path == "/garbage":
            transport = request.transport
            if transport is not None:
                transport.write(f"HTTX/9 BROKEN {SECRET} at http://10.1.2.3:5432/\r\n\r\n".encode())
                transport.close()
            await asyncio.sleep(0.1)
            return web.Response()
        if path.startswith("/coded/"):
            return web.Response(
                body=b"\x8b\x02\x80opaque compressed bytes",
                headers={"Content-Type": "text/event-stream", "Content-Encoding": path[7:]},
            )
        if path == "/broken-chunk":
            transport = request.transport
            if transport is not None:
                event = sse_events("openai-chat", [" hi"]).split(b"\n\n")[0] + b"\n\n"
                transport.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                    b"Transfer-Encoding: chunked\r\n\r\n" + b"%x\r\n%s\r\n" % (len(event), event)
                )
                # Separate reads: the headers and the first event reach the client first.
                await asyncio.sleep(0.2)
                transport.write(f"zz-{SECRET}\r\n".encode())
                transport.close()
            await asyncio.sleep(0.1)
            return web.Response()
        if path.startswith(("/oversized/", "/mid-event/", "/deviant/")):
            _, kind, fmt, *rest = path.split("/")
            events = [e + b"\n\n" for e in sse_events(fmt, WORDS[:3]).split(b"\n\n") if e]
            ending = 1 if fmt == "openai-chat" else 3
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await resp.prepare(request)
            if kind == "deviant":
                await resp.write(sse_events(fmt, WORDS, deviant=True))
            elif kind == "mid-event":
                await resp.write(b"".join(events[:-ending]))
                await resp.write(b"data: x\n" * (1 << 17))
            elif rest == ["blank"]:
                await resp.write(b"".join(events[:2]))
                await resp.write(b"data: " + b"x" * self.oversized_bytes + b"\n\n")
                await resp.write(b"".join(events[2:]))
            else:
                await resp.write(b"data: " + b"x" * self.oversized_bytes)
            await resp.write_eof()
            return resp
        if path == "/stall":
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await resp.prepare(request)
            await asyncio.sleep(self.stall_seconds)
            return resp
        return web.Response(status=404)


def _split(fmt: str, events: list[bytes]) -> tuple[list[bytes], list[bytes], list[bytes]]:
    if fmt == "openai-chat":
        # events: deltas..., finish chunk, [DONE]
        return [], events[:-1], [events[-1], b"data: [DONE]\n\n"]
    # anthropic: start, block start, deltas..., block stop, message delta, stop
    return events[:2], events[2:-3], events[-3:]


@contextlib.asynccontextmanager
async def hostile_upstream() -> AsyncIterator[HostileUpstream]:
    up = HostileUpstream()
    app = web.Application(client_max_size=1 << 30)
    app.router.add_route("*", "/{tail:.*}", up.handle)
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    up.url = f"http://127.0.0.1:{port}"
    try:
        yield up
    finally:
        await runner.cleanup()

"""Request bodies in a content coding (issue 19 #8): a metered route decodes gzip and
deflate and forwards the plain body without the coding's header; a coding it cannot decode
is a 415 problem, a body that does not decode or decodes past the limit a 400 / 413; an
empty LLM request is a 400 before the upstream. A pass-through route forwards the body as
it came, coding and header alike."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import zlib
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from aiohttp import web

from meterkit.runtime import serve_app
from support.inproc import chat, gateway, llm_config

CHAT = "/v1/chat/completions"
BODY = orjson.dumps(chat(stream=False))


@contextlib.asynccontextmanager
async def recorder() -> AsyncIterator[tuple[str, list[tuple[dict[str, str], bytes]]]]:
    """An upstream that keeps each request's headers and raw body bytes."""
    seen: list[tuple[dict[str, str], bytes]] = []

    async def handle(request: web.Request) -> web.Response:
        seen.append(({k.lower(): v for k, v in request.headers.items()}, await request.read()))
        return web.json_response(
            {
                "id": "c",
                "object": "chat.completion",
                "created": 1,
                "model": "gpt-4o",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}}],
            }
        )

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app, auto_decompress=False)
    await runner.setup()
    runner, port = await serve_app(runner, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{port}", seen
    finally:
        await runner.cleanup()


def tree(url: str) -> dict[str, Any]:
    t = llm_config(url)
    t["routes"] = {
        f"POST {CHAT}": {"upstream": "mock"},
        "POST /raw": {"upstream": "mock", "format": "none"},
    }
    return t


@pytest.mark.parametrize(
    ("coding", "data"),
    [("gzip", gzip.compress(BODY)), ("deflate", zlib.compress(BODY)), ("identity", BODY)],
)
def test_a_metered_body_is_decoded_and_forwarded_plain(coding: str, data: bytes) -> None:
    async def go() -> None:
        async with recorder() as (url, seen), gateway(tree(url)) as g:
            h = {"Content-Encoding": coding}
            status, _, out = await g.post(CHAT, data=data, headers=h)
            assert status == 200, out
            ((headers, raw),) = seen
            assert "content-encoding" not in headers
            assert orjson.loads(raw) == orjson.loads(BODY)
            (r,) = await g.records(1)
            assert r.prompt_tokens and r.completion_tokens == 1

    asyncio.run(go())


@pytest.mark.parametrize(
    ("coding", "data", "status", "code"),
    [
        ("br", b"\x0b\x02\x80", 415, "unsupported-content-encoding"),
        ("zstd", b"(\xb5/\xfd", 415, "unsupported-content-encoding"),
        ("gzip, gzip", gzip.compress(gzip.compress(BODY)), 415, "unsupported-content-encoding"),
        ("gzip", b"not gzip at all", 400, "invalid-content-encoding"),
        ("gzip", gzip.compress(BODY)[:-12], 400, "invalid-content-encoding"),
        ("gzip", gzip.compress(b" " * (5 * 1024 * 1024)), 413, "request-too-large"),
        ("identity", b"", 400, "body-required"),
    ],
    ids=["br", "zstd", "two-codings", "not-gzip", "cut-short", "bomb", "empty"],
)
def test_what_cannot_be_read_is_a_clear_problem_and_never_reaches_the_upstream(
    coding: str, data: bytes, status: int, code: str
) -> None:
    async def go() -> None:
        async with recorder() as (url, seen), gateway(tree(url)) as g:
            got, _, out = await g.post(CHAT, data=data, headers={"Content-Encoding": coding})
            assert got == status, out
            assert orjson.loads(out)["type"].endswith("/" + code)
            assert seen == []
            (r,) = await g.records(1)
            assert r.outcome == "rejected" and r.status == status

    asyncio.run(go())


def test_a_pass_through_body_goes_as_it_came() -> None:
    async def go() -> None:
        data = gzip.compress(b"opaque bytes the gateway does not read")
        async with recorder() as (url, seen), gateway(tree(url)) as g:
            status, _, _ = await g.post("/raw", data=data, headers={"Content-Encoding": "gzip"})
            assert status == 200
            ((headers, raw),) = seen
            assert headers["content-encoding"] == "gzip" and raw == data

    asyncio.run(go())

"""An upstream that lies about usage (issue 19 #6, #7), in process: a loopback upstream
whose `usage` says 0, -3, 10^12 or garbage, behind a budgeted route. What was forwarded is
counted and billed at least that; an absurd figure is bounded; nothing an upstream sends
costs the record."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from aiohttp import web

from meterkit import count_tokens
from meterkit.budgets import MemoryBackend
from meterkit.runtime import serve_app
from support.inproc import chat, gateway, llm_config

CHAT = "/v1/chat/completions"
WORDS = ["Hello", " there", ",", " friend", "!"]
TEXT = "".join(WORDS)


def sse(usage: Any) -> bytes:
    base = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o"}
    out = b""
    for w in WORDS:
        chunk = {**base, "choices": [{"index": 0, "delta": {"content": w}, "finish_reason": None}]}
        out += b"data: " + orjson.dumps(chunk) + b"\n\n"
    end = {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
    out += b"data: " + orjson.dumps(end) + b"\n\n"
    out += b"data: " + orjson.dumps({**base, "choices": [], "usage": usage}) + b"\n\n"
    return out + b"data: [DONE]\n\n"


def json_body(usage: Any) -> bytes:
    return orjson.dumps(
        {
            "id": "c1",
            "object": "chat.completion",
            "created": 1,
            "model": "gpt-4o",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": TEXT},
                    "finish_reason": "stop",
                }
            ],
            "usage": usage,
        }
    )


@contextlib.asynccontextmanager
async def liar(usage: Any, stream: bytes | None = None) -> AsyncIterator[str]:
    async def handle(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        if body.get("stream"):
            data = stream if stream is not None else sse(usage)
            return web.Response(body=data, content_type="text/event-stream")
        return web.Response(body=json_body(usage), content_type="application/json")

    app = web.Application()
    app.router.add_post(CHAT, handle)
    runner, port = await serve_app(app, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def tree(url: str, **upstream: Any) -> dict[str, Any]:
    t = llm_config(url)
    t["upstreams"]["mock"].update(upstream)
    t["budgets"] = {"b": {"key": "ip", "tokens_per_day": 200, "max_completion_tokens": 50}}
    t["routes"] = {f"POST {CHAT}": {"upstream": "mock", "budget": "b"}}
    return t


COUNTED = count_tokens(TEXT, "gpt-4o")


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "json"])
def test_a_provider_reporting_zero_pays_the_budget_what_was_delivered(stream: bool) -> None:
    """Before: `completion_tokens: 0` was believed, a 200-token budget served 40 of 40."""

    async def go() -> None:
        usage = {"prompt_tokens": 9, "completion_tokens": 0, "total_tokens": 9}
        backend = MemoryBackend()
        async with liar(usage) as url, gateway(tree(url), budget_backend=backend) as g:
            served = 0
            for _ in range(40):
                status, _, _ = await g.post(CHAT, chat(stream=stream))
                served += status == 200
            records = [r for r in await g.records(40) if r.status == 200]
            assert all(r.completion_tokens == COUNTED for r in records)
            assert all(r.usage_discrepancy is not None for r in records)
            assert records[0].usage_discrepancy == {
                "kind": "below_counted",
                "reported": 0,
                "counted": COUNTED,
                "billed": COUNTED,
            }
            # Each served request costs the budget 9 + what it delivered (old: 9; 40 of 40).
            assert sum(d.used for d in backend.days.values()) == served * (9 + COUNTED)
            assert served < 40
            kind = {"route": f"POST {CHAT}", "kind": "below_counted"}
            assert g.metric("meterkit_usage_discrepancies_total", **kind) == served

    asyncio.run(go())


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "json"])
@pytest.mark.parametrize(
    "usage",
    [
        {"prompt_tokens": 9, "completion_tokens": -3},
        {"prompt_tokens": -9, "completion_tokens": 10**12},
        {"prompt_tokens": 9, "completion_tokens": 10**15},
        {"prompt_tokens": 9, "completion_tokens": 1.5},
        {"prompt_tokens": "9", "completion_tokens": "x"},
    ],
    ids=["negative", "trillion", "absurd", "float", "strings"],
)
def test_nothing_the_upstream_reports_costs_the_record_or_bills_an_absurd_figure(
    stream: bool, usage: dict[str, Any]
) -> None:
    """Before: -3 made the metrics observer raise and the record was lost (89 of 90); 10^12
    was recorded for 5 delivered tokens."""

    async def go() -> None:
        async with liar(usage) as url, gateway(tree(url, usage_source="max")) as g:
            for _ in range(3):
                status, _, _ = await g.post(CHAT, chat(stream=stream))
                assert status == 200
            records = await g.records(3)
            assert len(records) == 3
            for r in records:
                assert r.completion_tokens == COUNTED
                assert r.prompt_tokens is not None and 0 <= r.prompt_tokens < 10**6
            assert g.metric_total("meterkit_tokens_total") < 10**6

    asyncio.run(go())


def test_usage_source_provider_keeps_the_old_behaviour_but_records_the_discrepancy() -> None:
    async def go() -> None:
        usage = {"prompt_tokens": 9, "completion_tokens": 0}
        async with liar(usage) as url, gateway(tree(url, usage_source="provider")) as g:
            assert (await g.post(CHAT, chat(stream=False)))[0] == 200
            (r,) = await g.records(1)
            assert r.completion_tokens == 0 and r.usage_discrepancy is not None

    asyncio.run(go())


@pytest.mark.parametrize(
    "extra",
    [
        '"usage":[1]',
        '"usage":true',
        '"usage":-1',
        '"usage":"x"',
        '"usage":{"completion_tokens":1.5}',
        '"usage":{"completion_tokens":-1}',
        '"usage":{"completion_tokens_details":[1]}',
    ],
)
def test_chunks_with_an_unusable_billed_field_are_still_counted_and_cut(extra: str) -> None:
    """Issue 19 #5: on a 5-token cap, 10 of 10 such chunks went through and the record said
    0 tokens. Now the content is counted, the stream is cut at the cap, the field flagged."""
    chunk = (
        '{"id":"c1","object":"chat.completion.chunk","created":1,"model":"gpt-4o",'
        '"choices":[{"index":0,"delta":{"content":" Hello","refusal":7}}],' + extra + "}"
    )
    stream = b"".join(b"data: " + chunk.encode() + b"\n\n" for _ in range(10))
    stream += b"data: [DONE]\n\n"

    async def go() -> None:
        async with liar(None, stream) as url:
            t = tree(url)
            t["budgets"]["b"]["max_completion_tokens"] = 5
            t["budgets"]["b"]["tokens_per_day"] = 100_000
            async with gateway(t) as g:
                status, _, body = await g.post(CHAT, chat())
                assert status == 200
                assert body.count(b" Hello") == 5
                (r,) = await g.records(1)
                assert (r.completion_tokens, r.outcome, r.truncation) == (5, "truncated", "limit")
                assert "unusable_field" in r.anomalies

    asyncio.run(go())

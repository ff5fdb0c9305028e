"""Budget × session across two instances (issue 18): two real gateways behind a round-robin
TCP relay, their budget in one Redis and their channels in one PostgreSQL. Streams paid per
token on both instances share one budget: together they stay within it, and each payer
pays exactly what reached it."""

from __future__ import annotations

import asyncio
import uuid
from contextlib import AsyncExitStack
from decimal import Decimal
from typing import Any

import aiohttp

from meterkit import count_tokens
from meterkit.budgets import RedisBackend
from meterkit.budgets.backends import Identity
from meterkit.budgets.policy import Limits
from meterkit.client.session import SessionClient
from meterkit.config import config_from_dict
from meterkit.sessions import make_store
from support.http import texts
from support.inproc import chat, gateway, llm_config
from support.payments import key, paid
from support.sessions import credit_prepaid
from support.tcpproxy import relay

CHAT = "/v1/chat/completions"
PRICE = 10
BUDGET = 600


def tree(postgres_url: str, redis_url: str, schema: str, prefix: str) -> dict[str, Any]:
    t = llm_config("{mock}")
    t["budgets"] = {
        "b": {
            "key": "ip",
            "tokens_per_day": BUDGET,
            "max_completion_tokens": 150,
            "streaming": {"buffer_tokens": 20},
        }
    }
    t["budget_store"] = {"type": "redis", "url": redis_url, "prefix": prefix}
    t["routes"] = {
        f"POST {CHAT}": {
            "upstream": "mock",
            "budget": "b",
            "session": {"price": "$0.00001", "voucher_timeout": "3s"},
        }
    }
    t = paid(t, "unused")
    t["ledger"] = {"type": "postgres", "url": postgres_url, "schema": schema}
    t["payments"] = {**t["payments"], "realm": "meterkit.test"}
    return t


def test_session_streams_on_two_instances_share_one_budget(
    postgres_url: str, redis_url: str
) -> None:
    schema = f"s_{uuid.uuid4().hex[:12]}"
    prefix = f"mk-test-{uuid.uuid4().hex}:"
    t = tree(postgres_url, redis_url, schema, prefix)

    async def go() -> None:
        t["upstreams"]["mock"]["url"] = "http://127.0.0.1:9"
        store = make_store(config_from_dict(t).ledger)
        await store.open()
        payers = [key() for _ in range(8)]
        channels = [await credit_prepaid(store, k, 1_000_000, salt=i) for i, k in enumerate(payers)]
        t["upstreams"]["mock"]["url"] = "{mock}"
        async with AsyncExitStack() as stack:
            a = await stack.enter_async_context(gateway(dict(t)))
            b = await stack.enter_async_context(gateway(dict(t)))
            ports = [int(g.url.rsplit(":", 1)[1]) for g in (a, b)]
            lb = await stack.enter_async_context(
                relay("127.0.0.1", ports[0], ("127.0.0.1", ports[1]))
            )
            url = f"http://127.0.0.1:{lb.port}"
            h = {"x-mock-length": "300", "x-mock-tps": "0", "x-mock-ignore-max": "1"}

            async def one(k: bytes, cid: str) -> tuple[Any, str]:
                async with (
                    aiohttp.ClientSession() as http,
                    SessionClient(
                        k, cid, max_total=Decimal("1"), initial=PRICE * 30, session=http
                    ) as client,
                ):
                    r = await client.stream("POST", url + CHAT, json=chat(), headers=h)
                    return r, cid

            results = await asyncio.gather(
                *(one(k, c) for k, c in zip(payers, channels, strict=True))
            )
            await asyncio.sleep(0.3)
            served = [r for g in (a, b) for r in g.sink.records if r.status == 200 and r.stream]
            # Both instances served some of them.
            assert {id(g) for g in (a, b) for r in g.sink.records if r.stream} == {id(a), id(b)}
            used = sum((r.prompt_tokens or 0) + (r.completion_tokens or 0) for r in served)
            assert served and used <= BUDGET * 1.05, used
            # What the shared budget holds is what was delivered, on both instances.
            backend = RedisBackend(redis_url, prefix=prefix)
            try:
                (who,) = {r.budget["key"] for r in served if r.budget}
                standing = await backend.standing(Identity("b", who), Limits(None, BUDGET, None))
            finally:
                await backend.close()
            assert standing.tpd_used == used
            for result, cid in results:
                channel = await store.get(cid)
                assert channel is not None
                if result.status != 200:
                    assert result.status == 429 and channel.spent == 0
                    continue
                tokens = count_tokens(texts("openai-chat", result.body), "gpt-4o")
                assert result.receipt is not None
                assert int(result.receipt["spent"]) == channel.spent == tokens * PRICE
        await store.close()

    asyncio.run(go())

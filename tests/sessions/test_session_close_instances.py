"""A close that reaches another instance than the stream (issue 19 #4, across instances):
two gateways sharing one PostgreSQL session store; the stream runs on A, the close lands on
B. B tells A through the store's notification, A ends its stream with the format's ending
and settles it, and B captures exactly what was delivered."""

from __future__ import annotations

import asyncio
import uuid
from contextlib import AsyncExitStack
from decimal import Decimal
from typing import Any

from meterkit import count_tokens
from meterkit.client.session import SessionClient
from meterkit.config import config_from_dict
from meterkit.sessions import make_store
from support.http import texts
from support.inproc import chat, gateway, llm_config
from support.payments import key, paid
from support.sessions import credit_prepaid, evm_challenges

CHAT = "/v1/chat/completions"
PRICE = 10


def tree(postgres_url: str, schema: str) -> dict[str, Any]:
    t = llm_config("{mock}")
    t["routes"] = {
        f"POST {CHAT}": {
            "upstream": "mock",
            "session": {"price": "$0.00001", "voucher_timeout": "2s"},
        }
    }
    t = paid(t, "unused")
    t["ledger"] = {"type": "postgres", "url": postgres_url, "schema": schema}
    t["payments"] = {**t["payments"], "realm": "meterkit.test"}
    return t


def test_a_close_on_another_instance_ends_the_stream_and_settles_it(postgres_url: str) -> None:
    schema = f"s_{uuid.uuid4().hex[:12]}"

    async def go() -> None:
        t = tree(postgres_url, schema)
        t["upstreams"]["mock"]["url"] = "http://127.0.0.1:9"
        store = make_store(config_from_dict(t).ledger)
        await store.open()
        payer = key()
        cid = await credit_prepaid(store, payer, 1_000_000)
        async with AsyncExitStack() as stack:
            a = await stack.enter_async_context(gateway(tree(postgres_url, schema)))
            b = await stack.enter_async_context(gateway(tree(postgres_url, schema)))
            status, headers, _ = await b.post(CHAT, chat())
            assert status == 402
            (ch,) = evm_challenges(headers)
            async with SessionClient(
                payer, cid, max_total=Decimal("1"), initial=PRICE * 1000, session=a.session
            ) as client:
                h = {"x-mock-length": "200", "x-mock-tps": "40"}
                running = asyncio.create_task(
                    client.stream("POST", a.url + CHAT, json=chat(), headers=h)
                )
                await asyncio.sleep(1.0)
                closed = await client.close(b.url + CHAT, ch)
                result = await asyncio.wait_for(running, 10)
            assert result.status == 200
            delivered = count_tokens(texts("openai-chat", result.body), "gpt-4o")
            assert 0 < delivered < 200
            assert closed is not None
            assert closed["settled"] == closed["spent"] == str(delivered * PRICE)
        c = await store.get(cid)
        await store.close()
        assert c is not None and c.finalized
        assert c.spent == c.settled == delivered * PRICE

    asyncio.run(go())

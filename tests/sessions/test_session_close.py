"""Closing a channel while its streams run (issue 19 #4): before, tokens delivered after the
close were charged to `spent` and never settled (up to a hold, 2,048 tokens, per stream).
Now the close ends the channel's running streams first — each with its format's ending and
its receipt — and settles exactly what they delivered."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from pathlib import Path
from typing import Any

from meterkit import count_tokens
from meterkit.client.session import SessionClient
from meterkit.sessions.store import SessionStore
from support.http import texts
from support.inproc import chat, gateway, llm_config
from support.payments import key, paid
from support.sessions import credit_prepaid, evm_challenges

CHAT = "/v1/chat/completions"
PRICE = 10


def tree(db: Path) -> dict[str, Any]:
    t = llm_config("{mock}")
    t["routes"] = {
        f"POST {CHAT}": {
            "upstream": "mock",
            "session": {"price": "$0.00001", "voucher_timeout": "2s"},
        }
    }
    return paid(t, str(db))


def test_a_close_ends_the_running_stream_and_settles_what_it_delivered(tmp_path: Path) -> None:
    db = tmp_path / "ledger.sqlite3"

    async def go() -> None:
        payer = key()
        store = SessionStore(db)
        await store.open()
        cid = await credit_prepaid(store, payer, 1_000_000)
        await store.close()
        async with gateway(tree(db)) as g:
            status, headers, _ = await g.post(CHAT, chat())
            assert status == 402
            (ch,) = evm_challenges(headers)
            async with SessionClient(
                payer, cid, max_total=Decimal("1"), initial=PRICE * 1000, session=g.session
            ) as client:
                # 200 tokens at 40 a second: still streaming when the close comes.
                h = {"x-mock-length": "200", "x-mock-tps": "40"}
                running = asyncio.create_task(
                    client.stream("POST", g.url + CHAT, json=chat(), headers=h)
                )
                await asyncio.sleep(1.0)
                closed = await client.close(g.url + CHAT, ch)
                result = await asyncio.wait_for(running, 10)
            assert result.status == 200
            delivered = count_tokens(texts("openai-chat", result.body), "gpt-4o")
            assert 0 < delivered < 200  # ended by the close, not by its end
            assert result.receipt is not None
            assert result.receipt["spent"] == str(delivered * PRICE)
            assert closed is not None
            assert closed["settled"] == closed["spent"] == str(delivered * PRICE)
            records = [r for r in await g.records(3) if r.stream and r.status == 200]
            (record,) = records
            assert (record.outcome, record.truncation) == ("truncated", "payment")
        store = SessionStore(db)
        await store.open()
        try:
            c = await store.get(cid)
            assert c is not None and c.finalized
            # Nothing charged after the close: what was spent is what was settled.
            assert c.spent == c.settled == delivered * PRICE
        finally:
            await store.close()

    asyncio.run(go())

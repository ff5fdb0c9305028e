"""Session credentials with a wrong value anywhere — in the payload, in the echoed
challenge, at the top — through the proxy, as a paid request and as a voucher POST: never
a response ≥ 500."""

from __future__ import annotations

import asyncio
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson

from meterkit.client.session import SessionClient
from meterkit.payments import mpp
from meterkit.sessions.store import SessionStore
from support.inproc import chat, gateway, llm_config
from support.payment_values import WRONG_VALUES, paths, replace
from support.payments import key, paid
from support.sessions import credit_prepaid, evm_challenges

CHAT = "/v1/chat/completions"


def test_no_malformed_session_credential_gets_a_5xx(tmp_path: Path) -> None:
    db = tmp_path / "ledger.sqlite3"
    t = llm_config("{mock}")
    t["routes"] = {f"POST {CHAT}": {"upstream": "mock", "session": {"price": "$0.00001"}}}
    t = paid(t, str(db))

    async def go() -> list[tuple[int, str]]:
        k = key()
        store = SessionStore(db)
        await store.open()
        cid = await credit_prepaid(store, k, 10**9)
        await store.close()
        bad: list[tuple[int, str]] = []
        sent = 0
        async with gateway(t) as g:
            _, headers, _ = await g.post(CHAT, chat())
            ch = evm_challenges(headers)[0]
            client = SessionClient(k, cid, max_total=Decimal("1"), session=g.session)
            token = client.authorization(ch, 1000)["Authorization"].removeprefix("Payment ")
            base: dict[str, Any] = orjson.loads(mpp.b64url_decode(token))
            for p in paths(base)[1:]:
                for v in WRONG_VALUES:
                    raw = json.dumps(replace(base, p, v)).encode()
                    if len(raw) > 6000:
                        continue  # past a request head's field limit: the HTTP parser's case
                    h = {"Authorization": "Payment " + mpp.b64url(raw)}
                    # As a paid request, and as a voucher POST (no body).
                    for paid_request in (True, False):
                        if paid_request:
                            status, rh, _ = await g.post(CHAT, chat(), h)
                        else:
                            async with g.session.post(g.url + CHAT, headers=h) as r:
                                status, rh = r.status, r.headers
                                await r.read()
                        sent += 1
                        problem = rh.get("Content-Type", "").startswith("application/problem")
                        if status >= 500 or (status >= 400 and not problem):
                            bad.append((status, f"{'.'.join(map(str, p))}={str(v)[:12]!r}"))
        assert sent >= 300
        return bad

    assert asyncio.run(go()) == []

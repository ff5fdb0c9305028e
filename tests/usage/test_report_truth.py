"""What the operator bills by (issue 20 #1, #2), in process: per-token revenue is revenue —
in the record, the report and the metrics, equal to the receipts — and a refused request
costs nothing, counts no tokens the upstream never saw, and is attributed to the identity
that was refused."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from pathlib import Path
from typing import Any

from meterkit.budgets.identity import unregistered_key
from meterkit.budgets.registry import key_sha256
from meterkit.client import PayingClient
from meterkit.client.session import SessionClient
from meterkit.config import config_from_dict
from meterkit.sessions.store import SessionStore
from meterkit.usage.cost import assets
from meterkit.usage.report import aggregate
from support.inproc import chat, gateway, llm_config
from support.payments import key, paid
from support.sessions import credit_prepaid

CHAT = "/v1/chat/completions"
ALICE = "sk-alice-0123456789"


def rows_by(records: list[Any], tree: dict[str, Any], by: str) -> dict[str, Any]:
    config = config_from_dict(tree)
    paid_routes = frozenset(r.key for r in config.routes if r.payment.type != "free")
    out = aggregate(
        [r.as_dict() for r in records],
        {},
        config.prices,
        paid_routes,
        (by,),
        aliases=config.keys is not None,
        known=assets(config.accepts),
    )
    return {row.group[0]: row for row in out}


def test_per_token_revenue_is_in_the_report_and_the_metrics(tmp_path: Path) -> None:
    db = tmp_path / "ledger.sqlite3"

    async def go() -> None:
        t = llm_config("{mock}")
        t["routes"] = {f"POST {CHAT}": {"upstream": "mock", "session": {"price": "$0.00001"}}}
        t = paid(t, str(db))
        payer = key()
        store = SessionStore(db)
        await store.open()
        cid = await credit_prepaid(store, payer, 1_000_000)
        await store.close()
        async with gateway(t) as g:
            async with SessionClient(
                payer, cid, max_total=Decimal("1"), initial=100, session=g.session
            ) as client:
                h = {"x-mock-length": "48", "x-mock-tps": "0"}
                result = await client.stream("POST", g.url + CHAT, json=chat(), headers=h)
            assert result.receipt is not None
            spent = int(result.receipt["spent"])
            assert spent == 480
            records = await g.records(2 + len(result.vouchers))
            route = rows_by(records, t, "route")[f"POST {CHAT}"]
            # Before: paid $0 while the receipts said 480 base units.
            assert route.paid == Decimal("0.00048")
            assert g.metric("meterkit_revenue_total", asset="USDC") == float(Decimal("0.00048"))
            assert g.metric_total("meterkit_spend_dollars_total") == float(Decimal("0.00048"))

    asyncio.run(go())


def test_refusals_cost_nothing_count_nothing_and_name_who_was_refused(tmp_path: Path) -> None:
    db = tmp_path / "ledger.sqlite3"

    async def go() -> None:
        t = llm_config("{mock}")
        t["keys"] = {"entries": {"alice": {"sha256": key_sha256(ALICE)}}}
        t["budgets"] = {"b": {"key": "api_key", "tokens_per_day": 30, "max_completion_tokens": 10}}
        t["prices"] = {"default": {"input": "$1", "output": "$2", "per": 1_000_000}}
        t["routes"] = {
            f"POST {CHAT}": {"upstream": "mock", "budget": "b"},
            "POST /paid": {"upstream": "mock", "path": CHAT, "price": "$0.001"},
        }
        t = paid(t, str(db))
        async with gateway(t) as g:
            assert (await g.post(CHAT, chat(), {"x-api-key": "sk-unknown-00000000"}))[0] == 401
            alice = {"x-api-key": ALICE, "x-mock-length": "10"}
            statuses = [(await g.post(CHAT, chat(), alice))[0] for _ in range(3)]
            assert 429 in statuses and 200 in statuses
            async with PayingClient(key(), max_total=Decimal("1"), session=g.session) as c:
                r = await c.request("POST", g.url + "/paid", json=chat(stream=False))
                assert r.status == 200
            records = await g.records(6)
            refused = [r for r in records if r.outcome == "rejected"]
            assert {r.status for r in refused} == {401, 429, 402}
            # The upstream never saw them: no tokens, no cost.
            assert all(r.prompt_tokens is None for r in refused)
            by_key = rows_by(records, t, "key")
            assert by_key[unregistered_key("sk-unknown-00000000")].requests == 1
            assert by_key[unregistered_key("sk-unknown-00000000")].cost == 0
            alice_row = by_key["alice"]
            assert alice_row.requests == 3  # its 429 is its own, not `-`'s
            served = [r for r in records if r.status == 200]
            # Prompt tokens counted once per request the upstream saw (before: the 402 and
            # its paid retry counted the prompt twice).
            total_prompt = g.metric_total("meterkit_tokens_total") - sum(
                r.completion_tokens or 0 for r in served
            )
            assert total_prompt == sum(r.prompt_tokens or 0 for r in served)

    asyncio.run(go())

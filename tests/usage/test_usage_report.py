"""`meterkit usage report` (issue 13): tokens and cost per key, model, route and day, paid
routes from the ledger and the others from the `prices:` table, exactly."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml

from meterkit.cli import main
from meterkit.client import PayingClient
from meterkit.config.payments import TokenRates
from meterkit.usage import SqliteSink
from meterkit.usage.report import Payment, aggregate, parse_time, total
from support.inproc import chat, gateway, llm_config
from support.payments import key, paid

MILLION = Decimal(1_000_000)
RATES = {"gpt-4o": TokenRates(Decimal("2.50") / MILLION, Decimal("10.00") / MILLION)}


def rec(rid: str, key: str | None, prompt: int, completion: int, **extra: Any) -> dict[str, Any]:
    return {
        "request_id": rid,
        "started_at": 86_400 * 20_000 + 3600,  # 2024-10-04 01:00 UTC
        "route": "POST /v1/chat/completions",
        "model": "gpt-4o",
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "budget": {"key": key} if key else None,
        "payment": None,
        **extra,
    }


def test_priced_routes_cost_their_tokens_at_the_price_table() -> None:
    rows = aggregate(
        [rec("a", "key_alice", 1000, 500), rec("b", "key_alice", 3, 7), rec("c", "ak_x", 10, 0)],
        {},
        RATES,
        frozenset(),
        ["key"],
        aliases=True,
    )
    by = {r.group: r for r in rows}
    # 1000 × $2.50/M + 500 × $10/M = 0.0025 + 0.005; 3 × 2.5/M + 7 × 10/M = 0.0000775.
    assert by[("alice",)].priced == Decimal("0.0075775")
    assert by[("alice",)].requests == 2 and by[("alice",)].prompt_tokens == 1003
    assert by[("ak_x",)].cost == Decimal("0.000025")
    assert [r.group for r in rows] == [("alice",), ("ak_x",)]  # most expensive first
    assert total(rows).cost == Decimal("0.0076025")


def test_paid_routes_cost_what_the_ledger_settled_and_nothing_else() -> None:
    paid_route = "POST /paid"
    records = [
        rec("p1", None, 100, 100, route=paid_route, payment={"payer": "0xAB", "settled": True}),
        # A redelivery: same authorization, served again, no claim of its own.
        rec("p2", None, 100, 100, route=paid_route, payment={"payer": "0xAB", "redelivery": True}),
        # Refused with a 402: a paid route, no claim, no price-table cost either.
        rec("p3", None, 50, 0, route=paid_route),
    ]
    payments = {"p1": Payment("USDC", Decimal("0.01")), "elsewhere": Payment("USDC", Decimal(5))}
    rows = aggregate(records, payments, RATES, frozenset({paid_route}), ["key", "route"])
    assert [(r.group, r.paid, r.priced, r.requests) for r in rows] == [
        (("payer_0xab", paid_route), Decimal("0.01"), Decimal(0), 2),
        (("-", paid_route), Decimal(0), Decimal(0), 1),
    ]


def test_key_filter_and_day_grouping() -> None:
    later = rec("d2", "key_bob", 1, 1, started_at=86_400 * 20_001 + 5)
    rows = aggregate(
        [rec("d1", "key_bob", 1, 1), later, rec("x", "key_eve", 1, 1)],
        {},
        RATES,
        frozenset(),
        ["day", "model"],
        aliases=True,
        key="bob",
    )
    assert sorted(r.group for r in rows) == [("2024-10-04", "gpt-4o"), ("2024-10-05", "gpt-4o")]
    with pytest.raises(ValueError, match="cannot group by"):
        aggregate([], {}, RATES, frozenset(), ["colour"])


def test_report_times() -> None:
    now = 86_400 * 20_000 + 7200.0
    assert parse_time("today", now) == 86_400 * 20_000
    assert parse_time("yesterday", now) == 86_400 * 19_999
    assert parse_time("2h", now) == 86_400 * 20_000
    assert parse_time("2024-10-04", now) == 86_400 * 20_000
    assert parse_time("2024-10-04T02:00+02:00", now) == 86_400 * 20_000
    with pytest.raises(ValueError, match="not a time"):
        parse_time("last tuesday", now)


def test_report_over_a_real_proxy_matches_the_ledger(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Free requests priced by the table, paid ones by the ledger's claims: the report's
    figures are the ledger's amounts and the records' tokens, to the last digit."""
    usage_db, ledger_db = tmp_path / "usage.sqlite3", tmp_path / "ledger.sqlite3"
    tree = llm_config("{mock}")
    tree["budgets"] = {"default": {"key": "api_key", "tokens_per_day": 1_000_000}}
    tree["routes"] = {
        "POST /v1/chat/completions": {"upstream": "mock", "budget": "default"},
        "POST /paid/chat": {"upstream": "mock", "path": "/v1/chat/completions", "price": "$0.01"},
    }
    tree["prices"] = {"gpt-4o": {"input": "$2.50", "output": "$10.00"}}
    tree["usage"] = {"sink": "sqlite", "path": str(usage_db)}
    tree = paid(tree, str(ledger_db))

    async def go() -> None:
        async with gateway(tree, sink=SqliteSink(usage_db)) as g:
            for token, n in (("sk-one", 2), ("sk-two", 1)):
                for _ in range(n):
                    status, _, _ = await g.post(
                        "/v1/chat/completions",
                        chat(),
                        {"Authorization": f"Bearer {token}", "x-mock-length": "20"},
                    )
                    assert status == 200
            async with PayingClient(key(), max_total=Decimal("1")) as client:
                for _ in range(2):
                    r = await client.request("POST", g.url + "/paid/chat", json=chat())
                    assert r.status == 200 and r.paid

    asyncio.run(go())
    with sqlite3.connect(ledger_db) as conn:
        claims = conn.execute(
            "SELECT amount FROM payment_claims WHERE status IN ('settled', 'queued')"
        ).fetchall()
    with sqlite3.connect(usage_db) as conn:
        free = [
            json.loads(r[0])
            for r in conn.execute(
                "SELECT record FROM usage_records WHERE route = 'POST /v1/chat/completions'"
            )
        ]
    assert len(claims) == 2 and len(free) == 3
    ledger_total = sum(Decimal(a) for (a,) in claims) / MILLION  # USDC: 6 decimals
    assert ledger_total == Decimal("0.02")
    table_total = sum(
        Decimal(r["prompt_tokens"]) * Decimal("2.50") / MILLION
        + Decimal(r["completion_tokens"]) * Decimal("10.00") / MILLION
        for r in free
    )
    assert table_total > 0

    config_file = tmp_path / "meterkit.yaml"
    config_file.write_text(yaml.safe_dump(tree))
    assert main(["usage", "report", "--config", str(config_file), "--by", "route", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    by_route = {r["route"]: r for r in out["rows"]}
    assert Decimal(by_route["POST /paid/chat"]["paid"]) == ledger_total
    assert Decimal(by_route["POST /paid/chat"]["priced"]) == 0
    assert Decimal(by_route["POST /v1/chat/completions"]["priced"]) == table_total
    assert Decimal(out["total"]["cost"]) == ledger_total + table_total
    assert out["total"]["requests"] == 7  # each paid request was first answered 402

    assert main(["usage", "report", "--config", str(config_file), "--by", "key", "--csv"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "key,requests,prompt_tokens,completion_tokens,paid,priced,cost"
    counts = sorted(int(line.split(",")[1]) for line in lines[1:])
    # Two API keys (2 and 1 requests), one payer (2) and the two 402s, which have no key.
    assert counts == [1, 2, 2, 2]

    assert main(["usage", "report", "--config", str(config_file), "--by", "colour"]) == 2

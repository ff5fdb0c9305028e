"""A settlement's outcome and its audit row are one transaction (issue 19 #3), on SQLite
and PostgreSQL: when the audit row cannot be written, the claim's status does not change
either, so a crash between the two can no longer keep the one and lose the other."""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from pathlib import Path
from typing import Any

import pytest

from meterkit.payments.ledger import Ledger, PostgresLedger, SqliteLedger
from support.claims import claim_row


@pytest.fixture(params=["sqlite", "postgres"])
def ledger(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    if request.param == "sqlite":
        return SqliteLedger(tmp_path / "l.sqlite3")
    url = request.getfixturevalue("postgres_url")
    return PostgresLedger(url, f"s_{uuid.uuid4().hex[:12]}")


async def audit_rows(ledger: Ledger, key: str) -> list[tuple[str, str]]:
    if isinstance(ledger, SqliteLedger):
        with sqlite3.connect(ledger.path) as c:
            return list(
                c.execute("SELECT settler, outcome FROM settlements WHERE claim_key = ?", (key,))
            )
    rows = await ledger._pool.fetch(  # type: ignore[attr-defined]
        "SELECT settler, outcome FROM settlements WHERE claim_key = $1", key
    )
    return [(r["settler"], r["outcome"]) for r in rows]


async def break_audit(ledger: Ledger) -> None:
    """Make the next audit insert fail, as a crash between the two writes would."""
    if isinstance(ledger, SqliteLedger):
        with sqlite3.connect(ledger.path) as c:
            c.execute("ALTER TABLE settlements RENAME TO settlements_away")
        return
    await ledger._pool.execute("ALTER TABLE settlements RENAME TO settlements_away")  # type: ignore[attr-defined]


def test_the_outcome_and_its_audit_row_are_written_together(ledger: Ledger) -> None:
    async def go() -> None:
        await ledger.open()
        try:
            await ledger.claim(claim_row(1, "settling"))
            await ledger.finish_claim("k1", "settled", "0xtx", None, "onchain")
            assert (await ledger.get_claim("k1")).status == "settled"  # type: ignore[union-attr]
            assert await audit_rows(ledger, "k1") == [("onchain", "settled")]
            assert await ledger.transition("k1", ("settled",), "failed", None, "x", "reconcile")
            assert not await ledger.transition("k1", ("queued",), "settled", "0x", None, "again")
            assert await audit_rows(ledger, "k1") == [
                ("onchain", "settled"),
                ("reconcile", "failed"),
            ]
            await ledger.claim(claim_row(2, "settling"))
            await break_audit(ledger)
            with pytest.raises(Exception):  # noqa: B017 - whatever the driver raises
                await ledger.finish_claim("k2", "settled", "0xtx", None, "onchain")
            with pytest.raises(Exception):  # noqa: B017
                await ledger.transition("k2", ("settling",), "settled", "0xtx", None, "onchain")
            # Neither write happened: the claim still says what it said.
            assert (await ledger.get_claim("k2")).status == "settling"  # type: ignore[union-attr]
        finally:
            await ledger.close()

    asyncio.run(go())

"""The ledger views `meterkit ledger settle` works from, on SQLite and PostgreSQL alike:
settleable queued rows (exported or not), stale unsettled claims, conditional transitions
(two settlers racing on a row cannot both record it) and the journal of sent transactions."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

from meterkit.payments.ledger import Claim, Ledger, PostgresLedger, SqliteLedger, journal
from support.claims import claim_row

NOW = int(time.time())


def claim(n: int, status: str, valid_before: int = NOW + 3600) -> Claim:
    return claim_row(n, status, valid_before)


async def views(ledger: Ledger) -> dict[str, object]:
    await ledger.open()
    try:
        await ledger.claim(claim(1, "queued"))
        await ledger.claim(claim(2, "queued", valid_before=NOW - 1))  # expired
        await ledger.claim(claim(3, "queued"))
        await ledger.export_queued(mark=True, now=NOW)  # exported rows stay settleable
        await ledger.claim(claim(4, "pending"))
        await ledger.claim(claim(5, "unknown"))
        await ledger.claim(claim(6, "settled"))
        write = journal(ledger)
        await write("k4", "0xaa")
        await write("k4", "0xbb")
        queued = [c.claim_key for c in await ledger.queued(NOW)]
        stale = [c.claim_key for c in await ledger.unsettled(("pending", "unknown"), time.time())]
        fresh = await ledger.unsettled(("pending", "unknown"), NOW - 3600)
        moved = await ledger.transition("k1", ("queued",), "settled", "0xtx", None)
        raced = await ledger.transition("k1", ("queued",), "failed", None, "late")
        row = await ledger.get_claim("k1")
        assert row is not None
        return {
            "queued": queued,
            "stale": stale,
            "fresh": fresh,
            "moved": moved,
            "raced": raced,
            "k1": (row.status, row.reference),
            "sent": await ledger.sent_transactions("k4"),
            "none_sent": await ledger.sent_transactions("k5"),
        }
    finally:
        await ledger.close()


EXPECTED = {
    "queued": ["k1", "k3"],
    "stale": ["k4", "k5"],
    "fresh": [],
    "moved": True,
    "raced": False,
    "k1": ("settled", "0xtx"),
    "sent": ["0xaa", "0xbb"],
    "none_sent": [],
}


def test_sqlite_settle_views(tmp_path: Path) -> None:
    assert asyncio.run(views(SqliteLedger(tmp_path / "l.sqlite3"))) == EXPECTED


def test_postgres_settle_views(postgres_url: str) -> None:
    schema = f"mk_{uuid.uuid4().hex[:10]}"
    assert asyncio.run(views(PostgresLedger(postgres_url, schema))) == EXPECTED

"""The payment ledger: claimed authorizations (never settle one twice), settlement attempts,
receipts and usage records of paid requests. SQLite (WAL, synchronous=FULL) on one machine,
PostgreSQL for several instances; every write is committed before the caller goes on, so a
success response never leaves ahead of the money state behind it.

A claim is the durable, atomic "this authorization is mine to settle": a unique key
(chain, token, payer, nonce) inserted before settlement. Whoever inserts it settles; anyone
else sees the row and its outcome. Claims are kept (a restart never forgets a used nonce).

A claim's life: `pending` (claimed, nothing sent to the settler) → `settling` (sent; the
outcome is not known yet) → `settled` / `queued` (paid), `unknown` (the settler's answer
was lost) or released (deleted: nothing was settled). A paid claim also says whether its
response reached the client (`delivery`: NULL while the request runs, `delivered`, or
`undelivered`); an undelivered one may be taken over once by a retry with the same
credential, which is served without a second charge. `recover` resolves claims whose
request died with its process.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import orjson

from meterkit.pgpool import open_pool
from meterkit.sqlite_thread import SqliteThread

T = TypeVar("T")

_MIGRATIONS: list[tuple[int, list[str]]] = [
    (
        1,
        [
            """CREATE TABLE payment_claims (
            claim_key TEXT PRIMARY KEY,
            status TEXT NOT NULL,
            protocol TEXT NOT NULL,
            network TEXT NOT NULL,
            asset TEXT NOT NULL,
            payer TEXT NOT NULL,
            pay_to TEXT NOT NULL,
            amount TEXT NOT NULL,
            nonce TEXT NOT NULL,
            valid_before BIGINT NOT NULL,
            route TEXT NOT NULL,
            request_id TEXT NOT NULL,
            challenge_id TEXT,
            reference TEXT,
            error TEXT,
            authorization_json TEXT NOT NULL,
            created_at DOUBLE PRECISION NOT NULL,
            updated_at DOUBLE PRECISION NOT NULL,
            exported_at DOUBLE PRECISION
        )""",
            "CREATE INDEX payment_claims_status ON payment_claims (status, created_at)",
            """CREATE TABLE settlements (
            claim_key TEXT NOT NULL,
            settler TEXT NOT NULL,
            outcome TEXT NOT NULL,
            reference TEXT,
            error TEXT,
            at DOUBLE PRECISION NOT NULL
        )""",
            "CREATE INDEX settlements_claim ON settlements (claim_key)",
            """CREATE TABLE receipts (
            request_id TEXT PRIMARY KEY,
            claim_key TEXT NOT NULL,
            receipt_json TEXT NOT NULL,
            created_at DOUBLE PRECISION NOT NULL
        )""",
            """CREATE TABLE usage_records (
            request_id TEXT PRIMARY KEY,
            started_at DOUBLE PRECISION NOT NULL,
            route TEXT NOT NULL,
            outcome TEXT NOT NULL,
            record_json TEXT NOT NULL
        )""",
        ],
    ),
    (
        2,
        [
            # NULL while the paying request runs; delivered | undelivered once it ended.
            "ALTER TABLE payment_claims ADD COLUMN delivery TEXT",
        ],
    ),
]


@dataclass
class Claim:
    claim_key: str
    # pending | settled | queued | unknown | expired (queued, never settled in time) | failed
    # (`ledger settle`: the chain refused it, or reconciliation found it never settled)
    status: str
    protocol: str
    network: str
    asset: str
    payer: str
    pay_to: str
    amount: str
    nonce: str
    valid_before: int
    route: str
    request_id: str
    challenge_id: str | None
    authorization_json: str
    reference: str | None = None
    error: str | None = None
    created_at: float = 0.0
    updated_at: float = 0.0
    exported_at: float | None = None
    delivery: str | None = None


_CLAIM_COLUMNS = [f for f in Claim.__dataclass_fields__]
_EXPIRED = "the authorization expired before it was exported for settlement"
_LOST = "the gateway stopped while settling: reconcile against the chain"


def _valid_after(now: float | None) -> int:
    """The `valid_before` bound of settleable rows (-1: every row)."""
    return -1 if now is None else int(now)


# Column order of the receipts and usage_records tables, shared by both ledgers.
def _receipt_row(request_id: str, key: str, receipt: dict[str, Any]) -> tuple[Any, ...]:
    return (request_id, key, orjson.dumps(receipt).decode(), time.time())


def _usage_row(record: dict[str, Any]) -> tuple[Any, ...]:
    return (
        record["request_id"],
        record["started_at"],
        record["route"],
        record["outcome"],
        orjson.dumps(record, default=str).decode(),
    )


class Ledger(Protocol):
    name: str

    async def open(self) -> None: ...
    async def close(self) -> None: ...
    async def claim(self, claim: Claim) -> tuple[bool, Claim | None]:
        """Insert the claim if its key is new: (True, None); else (False, the existing row)."""

    async def get_claim(self, key: str) -> Claim | None: ...
    async def finish_claim(
        self, key: str, status: str, reference: str | None, error: str | None
    ) -> None: ...
    async def release_claim(self, key: str, error: str) -> None:
        """Delete a claim whose settlement certainly did not happen, so the payer can retry."""

    async def record_settlement(
        self, key: str, settler: str, outcome: str, reference: str | None, error: str | None
    ) -> None: ...
    async def save_receipt(self, request_id: str, key: str, receipt: dict[str, Any]) -> None: ...
    async def save_usage(self, record: dict[str, Any]) -> None: ...
    async def export_queued(self, mark: bool, now: float | None = None) -> list[dict[str, Any]]:
        """Queued (deferred) claims not yet exported, oldest first; with `now`, only those
        still valid then (`valid_before > now`: settleable). `mark` records the export."""

    async def expire_queued(self, now: float, mark: bool) -> list[dict[str, Any]]:
        """Queued claims whose authorization expired by `now` (never settleable any more);
        `mark` moves them to status `expired`, out of the queue."""

    async def queued(self, now: float) -> list[Claim]:
        """Queued (deferred) claims still settleable at `now` (`valid_before > now`), exported
        or not, oldest first: what `meterkit ledger settle` submits."""

    async def unsettled(self, statuses: tuple[str, ...], before: float) -> list[Claim]:
        """Claims in one of `statuses` last updated at or before `before`, oldest first:
        what `ledger settle` reconciles against the chain (a live proxy may still be settling
        newer ones)."""

    async def transition(
        self,
        key: str,
        from_statuses: tuple[str, ...],
        status: str,
        reference: str | None,
        error: str | None,
    ) -> bool:
        """Move a claim to `status` only if it is in one of `from_statuses` (True if it
        moved): two settlers racing on one row cannot both record an outcome."""

    async def sent_transactions(self, key: str) -> list[str]:
        """Hashes of the transactions journaled for a claim (`settlements` rows with outcome
        `sent`, written before each broadcast), oldest first."""

    async def receipts(self) -> list[dict[str, Any]]: ...
    async def schema_version(self) -> int: ...

    async def set_delivery(self, key: str, request_id: str, delivery: str) -> None:
        """Whether the paid response of `request_id` reached its client (`delivered`) or
        not (`undelivered`, so a retry may be served without a second charge)."""

    async def take_redelivery(self, key: str, request_id: str, now: float) -> bool:
        """Take over an undelivered paid claim for `request_id`, once, while its
        authorization is still valid at `now`. True when this request won it."""

    async def recover(self, older_than: float | None, local: bool) -> dict[str, int]:
        """Resolve claims whose request died with its process, last touched before
        `older_than` (None: all of them; only safe with one process on the ledger):
        pending ones are released, settling ones released when settlement is `local` (it
        never left this machine) or marked `unknown`, paid ones without a delivery outcome
        marked `undelivered`. Returns the counts by what was done."""


def journal(ledger: Ledger, settler: str = "onchain") -> Callable[[str, str], Awaitable[None]]:
    """The on-chain settler's journal: a `sent` settlements row per transaction, committed
    before the transaction is broadcast."""

    async def write(key: str, tx_hash: str) -> None:
        await ledger.record_settlement(key, settler, "sent", tx_hash, None)

    return write


class SqliteLedger:
    name = "sqlite"

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._db = SqliteThread(self.path, "ledger")
        self._run = self._db.run

    async def open(self) -> None:
        def migrate(conn: sqlite3.Connection) -> None:
            conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            conn.execute("BEGIN IMMEDIATE")
            try:
                row = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()
                current = row[0] or 0
                for version, statements in _MIGRATIONS:
                    if version > current:
                        for stmt in statements:
                            conn.execute(stmt)
                        conn.execute("INSERT INTO schema_version VALUES (?)", (version,))
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

        await self._db.open(migrate)

    async def close(self) -> None:
        await self._db.close()

    async def schema_version(self) -> int:
        return int(
            await self._run(
                lambda c: c.execute("SELECT MAX(version) FROM schema_version").fetchone()[0]
            )
        )

    async def claim(self, claim: Claim) -> tuple[bool, Claim | None]:
        now = time.time()
        claim.created_at = claim.updated_at = now
        row = asdict(claim)

        def go(c: sqlite3.Connection) -> tuple[bool, Claim | None]:
            cols = ", ".join(_CLAIM_COLUMNS)
            marks = ", ".join("?" for _ in _CLAIM_COLUMNS)
            cur = c.execute(
                f"INSERT OR IGNORE INTO payment_claims ({cols}) VALUES ({marks})",
                [row[k] for k in _CLAIM_COLUMNS],
            )
            if cur.rowcount == 1:
                return True, None
            return False, self._get(c, claim.claim_key)

        return await self._run(go)

    @staticmethod
    def _get(c: sqlite3.Connection, key: str) -> Claim | None:
        cur = c.execute(
            f"SELECT {', '.join(_CLAIM_COLUMNS)} FROM payment_claims WHERE claim_key = ?", (key,)
        )
        r = cur.fetchone()
        return Claim(**dict(zip(_CLAIM_COLUMNS, r, strict=True))) if r else None

    async def get_claim(self, key: str) -> Claim | None:
        return await self._run(lambda c: self._get(c, key))

    async def finish_claim(
        self, key: str, status: str, reference: str | None, error: str | None
    ) -> None:
        await self._run(
            lambda c: c.execute(
                "UPDATE payment_claims SET status = ?, reference = ?, error = ?, updated_at = ? WHERE claim_key = ?",
                (status, reference, error, time.time(), key),
            )
        )

    async def release_claim(self, key: str, error: str) -> None:
        def go(c: sqlite3.Connection) -> None:
            c.execute("BEGIN IMMEDIATE")
            c.execute(
                "INSERT INTO settlements VALUES (?, ?, ?, ?, ?, ?)",
                (key, "-", "released", None, error, time.time()),
            )
            c.execute(
                "DELETE FROM payment_claims WHERE claim_key = ? AND status IN ('pending', 'settling')",
                (key,),
            )
            c.execute("COMMIT")

        await self._run(go)

    async def set_delivery(self, key: str, request_id: str, delivery: str) -> None:
        await self._run(
            lambda c: c.execute(
                "UPDATE payment_claims SET delivery = ?, updated_at = ? "
                "WHERE claim_key = ? AND request_id = ?",
                (delivery, time.time(), key, request_id),
            )
        )

    async def take_redelivery(self, key: str, request_id: str, now: float) -> bool:
        cur = await self._run(
            lambda c: c.execute(
                "UPDATE payment_claims SET delivery = NULL, request_id = ?, updated_at = ? "
                "WHERE claim_key = ? AND delivery = 'undelivered' "
                "AND status IN ('settled', 'queued') AND valid_before > ?",
                (request_id, time.time(), key, int(now)),
            )
        )
        return bool(cur.rowcount == 1)

    async def recover(self, older_than: float | None, local: bool) -> dict[str, int]:
        cutoff = float("inf") if older_than is None else older_than

        def go(c: sqlite3.Connection) -> dict[str, int]:
            c.execute("BEGIN IMMEDIATE")
            now = time.time()
            gone = ("pending", "settling") if local else ("pending",)
            released = c.execute(
                "SELECT claim_key FROM payment_claims "
                f"WHERE status IN ({', '.join('?' * len(gone))}) AND updated_at < ?",
                (*gone, cutoff),
            ).fetchall()
            c.executemany(
                "INSERT INTO settlements VALUES (?, '-', 'released', NULL, ?, ?)",
                [(k, "released after a restart: never settled", now) for (k,) in released],
            )
            c.executemany("DELETE FROM payment_claims WHERE claim_key = ?", released)
            unknown = 0
            if not local:
                unknown = c.execute(
                    "UPDATE payment_claims SET status = 'unknown', error = ?, updated_at = ? "
                    "WHERE status = 'settling' AND updated_at < ?",
                    (_LOST, now, cutoff),
                ).rowcount
            undelivered = c.execute(
                "UPDATE payment_claims SET delivery = 'undelivered', updated_at = ? "
                "WHERE status IN ('settled', 'queued') AND delivery IS NULL AND updated_at < ?",
                (now, cutoff),
            ).rowcount
            c.execute("COMMIT")
            return {"released": len(released), "unknown": unknown, "undelivered": undelivered}

        return await self._run(go)

    async def record_settlement(
        self, key: str, settler: str, outcome: str, reference: str | None, error: str | None
    ) -> None:
        await self._run(
            lambda c: c.execute(
                "INSERT INTO settlements VALUES (?, ?, ?, ?, ?, ?)",
                (key, settler, outcome, reference, error, time.time()),
            )
        )

    async def save_receipt(self, request_id: str, key: str, receipt: dict[str, Any]) -> None:
        await self._run(
            lambda c: c.execute(
                "INSERT OR REPLACE INTO receipts VALUES (?, ?, ?, ?)",
                _receipt_row(request_id, key, receipt),
            )
        )

    async def save_usage(self, record: dict[str, Any]) -> None:
        await self._run(
            lambda c: c.execute(
                "INSERT OR REPLACE INTO usage_records VALUES (?, ?, ?, ?, ?)",
                _usage_row(record),
            )
        )

    async def export_queued(self, mark: bool, now: float | None = None) -> list[dict[str, Any]]:
        def go(c: sqlite3.Connection) -> list[dict[str, Any]]:
            c.execute("BEGIN IMMEDIATE")
            rows = c.execute(
                f"SELECT {', '.join(_CLAIM_COLUMNS)} FROM payment_claims "
                "WHERE status = 'queued' AND exported_at IS NULL AND valid_before > ? "
                "ORDER BY created_at",
                (_valid_after(now),),
            ).fetchall()
            out = [dict(zip(_CLAIM_COLUMNS, r, strict=True)) for r in rows]
            if mark and out:
                c.executemany(
                    "UPDATE payment_claims SET exported_at = ? WHERE claim_key = ?",
                    [(time.time(), r["claim_key"]) for r in out],
                )
            c.execute("COMMIT")
            return out

        return await self._run(go)

    async def expire_queued(self, now: float, mark: bool) -> list[dict[str, Any]]:
        def go(c: sqlite3.Connection) -> list[dict[str, Any]]:
            c.execute("BEGIN IMMEDIATE")
            rows = c.execute(
                f"SELECT {', '.join(_CLAIM_COLUMNS)} FROM payment_claims "
                "WHERE status = 'queued' AND valid_before <= ? ORDER BY created_at",
                (int(now),),
            ).fetchall()
            out = [dict(zip(_CLAIM_COLUMNS, r, strict=True)) for r in rows]
            if mark and out:
                c.executemany(
                    "UPDATE payment_claims SET status = 'expired', error = ?, updated_at = ? "
                    "WHERE claim_key = ? AND status = 'queued'",
                    [(_EXPIRED, time.time(), r["claim_key"]) for r in out],
                )
            c.execute("COMMIT")
            return out

        return await self._run(go)

    def _claims(self, c: sqlite3.Connection, where: str, args: tuple[Any, ...]) -> list[Claim]:
        rows = c.execute(
            f"SELECT {', '.join(_CLAIM_COLUMNS)} FROM payment_claims WHERE {where} "
            "ORDER BY created_at",
            args,
        ).fetchall()
        return [Claim(**dict(zip(_CLAIM_COLUMNS, r, strict=True))) for r in rows]

    async def queued(self, now: float) -> list[Claim]:
        return await self._run(
            lambda c: self._claims(c, "status = 'queued' AND valid_before > ?", (int(now),))
        )

    async def unsettled(self, statuses: tuple[str, ...], before: float) -> list[Claim]:
        marks = ", ".join("?" for _ in statuses)
        return await self._run(
            lambda c: self._claims(
                c, f"status IN ({marks}) AND updated_at <= ?", (*statuses, before)
            )
        )

    async def transition(
        self,
        key: str,
        from_statuses: tuple[str, ...],
        status: str,
        reference: str | None,
        error: str | None,
    ) -> bool:
        marks = ", ".join("?" for _ in from_statuses)

        def go(c: sqlite3.Connection) -> bool:
            cur = c.execute(
                "UPDATE payment_claims SET status = ?, reference = ?, error = ?, updated_at = ? "
                f"WHERE claim_key = ? AND status IN ({marks})",
                (status, reference, error, time.time(), key, *from_statuses),
            )
            return cur.rowcount == 1

        return await self._run(go)

    async def sent_transactions(self, key: str) -> list[str]:
        rows = await self._run(
            lambda c: c.execute(
                "SELECT reference FROM settlements WHERE claim_key = ? AND outcome = 'sent' "
                "ORDER BY at",
                (key,),
            ).fetchall()
        )
        return [str(r[0]) for r in rows]

    async def receipts(self) -> list[dict[str, Any]]:
        rows = await self._run(
            lambda c: c.execute(
                "SELECT request_id, claim_key, receipt_json, created_at FROM receipts ORDER BY created_at"
            ).fetchall()
        )
        return [
            {
                "request_id": r[0],
                "claim_key": r[1],
                "receipt": orjson.loads(r[2]),
                "created_at": r[3],
            }
            for r in rows
        ]


class PostgresLedger:
    """The ledger in PostgreSQL (asyncpg): shared by several proxy instances."""

    name = "postgres"

    def __init__(self, url: str, schema: str | None = None, timeout: float = 5.0) -> None:
        self.url = url
        self.schema = schema
        # Bounds every statement and every wait for a connection: a frozen server costs
        # a request this long, not forever.
        self.timeout = timeout
        self._pool: Any = None

    async def open(self) -> None:
        self._pool = await open_pool(self.url, self.schema, self.timeout)
        async with self._pool.acquire() as c, c.transaction():
            # One instance migrates at a time.
            await c.execute("SELECT pg_advisory_xact_lock(7236218)")
            await c.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            current = await c.fetchval("SELECT COALESCE(MAX(version), 0) FROM schema_version")
            for version, statements in _MIGRATIONS:
                if version > current:
                    for stmt in statements:
                        await c.execute(stmt)
                    await c.execute("INSERT INTO schema_version VALUES ($1)", version)

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()

    async def schema_version(self) -> int:
        return int(await self._pool.fetchval("SELECT MAX(version) FROM schema_version"))

    async def claim(self, claim: Claim) -> tuple[bool, Claim | None]:
        now = time.time()
        claim.created_at = claim.updated_at = now
        row = asdict(claim)
        cols = ", ".join(_CLAIM_COLUMNS)
        marks = ", ".join(f"${i + 1}" for i in range(len(_CLAIM_COLUMNS)))
        got = await self._pool.fetchval(
            f"INSERT INTO payment_claims ({cols}) VALUES ({marks}) ON CONFLICT (claim_key) DO NOTHING "
            "RETURNING claim_key",
            *[row[k] for k in _CLAIM_COLUMNS],
        )
        if got is not None:
            return True, None
        return False, await self.get_claim(claim.claim_key)

    async def get_claim(self, key: str) -> Claim | None:
        r = await self._pool.fetchrow(
            f"SELECT {', '.join(_CLAIM_COLUMNS)} FROM payment_claims WHERE claim_key = $1", key
        )
        return Claim(**dict(r)) if r else None

    async def finish_claim(
        self, key: str, status: str, reference: str | None, error: str | None
    ) -> None:
        await self._pool.execute(
            "UPDATE payment_claims SET status = $1, reference = $2, error = $3, updated_at = $4 WHERE claim_key = $5",
            status,
            reference,
            error,
            time.time(),
            key,
        )

    async def release_claim(self, key: str, error: str) -> None:
        async with self._pool.acquire() as c, c.transaction():
            await c.execute(
                "INSERT INTO settlements VALUES ($1, '-', 'released', NULL, $2, $3)",
                key,
                error,
                time.time(),
            )
            await c.execute(
                "DELETE FROM payment_claims WHERE claim_key = $1 "
                "AND status IN ('pending', 'settling')",
                key,
            )

    async def set_delivery(self, key: str, request_id: str, delivery: str) -> None:
        await self._pool.execute(
            "UPDATE payment_claims SET delivery = $1, updated_at = $2 "
            "WHERE claim_key = $3 AND request_id = $4",
            delivery,
            time.time(),
            key,
            request_id,
        )

    async def take_redelivery(self, key: str, request_id: str, now: float) -> bool:
        got = await self._pool.fetchval(
            "UPDATE payment_claims SET delivery = NULL, request_id = $1, updated_at = $2 "
            "WHERE claim_key = $3 AND delivery = 'undelivered' "
            "AND status IN ('settled', 'queued') AND valid_before > $4 RETURNING claim_key",
            request_id,
            time.time(),
            key,
            int(now),
        )
        return got is not None

    async def recover(self, older_than: float | None, local: bool) -> dict[str, int]:
        cutoff = float("inf") if older_than is None else older_than
        gone = ["pending", "settling"] if local else ["pending"]
        now = time.time()
        async with self._pool.acquire() as c, c.transaction():
            released = await c.fetch(
                "DELETE FROM payment_claims WHERE status = ANY($1::text[]) AND updated_at < $2 "
                "RETURNING claim_key",
                gone,
                cutoff,
            )
            await c.executemany(
                "INSERT INTO settlements VALUES ($1, '-', 'released', NULL, $2, $3)",
                [(r[0], "released after a restart: never settled", now) for r in released],
            )
            unknown = 0
            if not local:
                unknown = _count(
                    await c.execute(
                        "UPDATE payment_claims SET status = 'unknown', error = $1, updated_at = $2 "
                        "WHERE status = 'settling' AND updated_at < $3",
                        _LOST,
                        now,
                        cutoff,
                    )
                )
            undelivered = _count(
                await c.execute(
                    "UPDATE payment_claims SET delivery = 'undelivered', updated_at = $1 "
                    "WHERE status IN ('settled', 'queued') AND delivery IS NULL "
                    "AND updated_at < $2",
                    now,
                    cutoff,
                )
            )
        return {"released": len(released), "unknown": unknown, "undelivered": undelivered}

    async def record_settlement(
        self, key: str, settler: str, outcome: str, reference: str | None, error: str | None
    ) -> None:
        await self._pool.execute(
            "INSERT INTO settlements VALUES ($1, $2, $3, $4, $5, $6)",
            key,
            settler,
            outcome,
            reference,
            error,
            time.time(),
        )

    async def save_receipt(self, request_id: str, key: str, receipt: dict[str, Any]) -> None:
        await self._pool.execute(
            "INSERT INTO receipts VALUES ($1, $2, $3, $4) ON CONFLICT (request_id) DO UPDATE SET receipt_json = $3",
            *_receipt_row(request_id, key, receipt),
        )

    async def save_usage(self, record: dict[str, Any]) -> None:
        await self._pool.execute(
            "INSERT INTO usage_records VALUES ($1, $2, $3, $4, $5) ON CONFLICT (request_id) DO UPDATE SET record_json = $5",
            *_usage_row(record),
        )

    async def export_queued(self, mark: bool, now: float | None = None) -> list[dict[str, Any]]:
        async with self._pool.acquire() as c, c.transaction():
            rows = await c.fetch(
                f"SELECT {', '.join(_CLAIM_COLUMNS)} FROM payment_claims "
                "WHERE status = 'queued' AND exported_at IS NULL AND valid_before > $1 "
                "ORDER BY created_at FOR UPDATE",
                _valid_after(now),
            )
            out = [dict(r) for r in rows]
            if mark and out:
                await c.executemany(
                    "UPDATE payment_claims SET exported_at = $1 WHERE claim_key = $2",
                    [(time.time(), r["claim_key"]) for r in out],
                )
            return out

    async def expire_queued(self, now: float, mark: bool) -> list[dict[str, Any]]:
        async with self._pool.acquire() as c, c.transaction():
            rows = await c.fetch(
                f"SELECT {', '.join(_CLAIM_COLUMNS)} FROM payment_claims "
                "WHERE status = 'queued' AND valid_before <= $1 ORDER BY created_at FOR UPDATE",
                int(now),
            )
            out = [dict(r) for r in rows]
            if mark and out:
                await c.executemany(
                    "UPDATE payment_claims SET status = 'expired', error = $1, updated_at = $2 "
                    "WHERE claim_key = $3 AND status = 'queued'",
                    [(_EXPIRED, time.time(), r["claim_key"]) for r in out],
                )
            return out

    async def _claims(self, where: str, *args: Any) -> list[Claim]:
        rows = await self._pool.fetch(
            f"SELECT {', '.join(_CLAIM_COLUMNS)} FROM payment_claims WHERE {where} "
            "ORDER BY created_at",
            *args,
        )
        return [Claim(**dict(r)) for r in rows]

    async def queued(self, now: float) -> list[Claim]:
        return await self._claims("status = 'queued' AND valid_before > $1", int(now))

    async def unsettled(self, statuses: tuple[str, ...], before: float) -> list[Claim]:
        return await self._claims(
            "status = ANY($1::text[]) AND updated_at <= $2", list(statuses), before
        )

    async def transition(
        self,
        key: str,
        from_statuses: tuple[str, ...],
        status: str,
        reference: str | None,
        error: str | None,
    ) -> bool:
        got = await self._pool.fetchval(
            "UPDATE payment_claims SET status = $1, reference = $2, error = $3, updated_at = $4 "
            "WHERE claim_key = $5 AND status = ANY($6::text[]) RETURNING claim_key",
            status,
            reference,
            error,
            time.time(),
            key,
            list(from_statuses),
        )
        return got is not None

    async def sent_transactions(self, key: str) -> list[str]:
        rows = await self._pool.fetch(
            "SELECT reference FROM settlements WHERE claim_key = $1 AND outcome = 'sent' "
            "ORDER BY at",
            key,
        )
        return [str(r[0]) for r in rows]

    async def receipts(self) -> list[dict[str, Any]]:
        rows = await self._pool.fetch(
            "SELECT request_id, claim_key, receipt_json, created_at FROM receipts ORDER BY created_at"
        )
        return [
            {
                "request_id": r[0],
                "claim_key": r[1],
                "receipt": orjson.loads(r[2]),
                "created_at": r[3],
            }
            for r in rows
        ]


def _count(status: str) -> int:
    """Rows touched, from an asyncpg command status such as "UPDATE 3"."""
    return int(status.rsplit(" ", 1)[-1])


def make_ledger(
    kind: str, path: str, url: str | None, schema: str | None = None, timeout: float = 5.0
) -> Ledger:
    if kind == "postgres":
        assert url is not None
        return PostgresLedger(url, schema, timeout)
    return SqliteLedger(path)

"""The ledger in one SQLite file (WAL, synchronous=FULL), for one machine: every write is
committed, on the ledger's own thread, before the caller goes on."""

from __future__ import annotations

import sqlite3
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import orjson

from meterkit.payments.ledger.base import (
    CLAIM_COLUMNS,
    EXPIRED,
    LOST,
    MIGRATIONS,
    ORPHANED,
    Claim,
    receipt_row,
    usage_row,
    valid_after,
)
from meterkit.sqlite_thread import SqliteThread


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
                for version, statements in MIGRATIONS:
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
            cols = ", ".join(CLAIM_COLUMNS)
            marks = ", ".join("?" for _ in CLAIM_COLUMNS)
            cur = c.execute(
                f"INSERT OR IGNORE INTO payment_claims ({cols}) VALUES ({marks})",
                [row[k] for k in CLAIM_COLUMNS],
            )
            if cur.rowcount == 1:
                return True, None
            return False, self._get(c, claim.claim_key)

        return await self._run(go)

    @staticmethod
    def _get(c: sqlite3.Connection, key: str) -> Claim | None:
        cur = c.execute(
            f"SELECT {', '.join(CLAIM_COLUMNS)} FROM payment_claims WHERE claim_key = ?", (key,)
        )
        r = cur.fetchone()
        return Claim(**dict(zip(CLAIM_COLUMNS, r, strict=True))) if r else None

    async def get_claim(self, key: str) -> Claim | None:
        return await self._run(lambda c: self._get(c, key))

    async def finish_claim(
        self,
        key: str,
        status: str,
        reference: str | None,
        error: str | None,
        settler: str | None = None,
    ) -> None:
        await self._run(lambda c: self._move(c, key, None, status, reference, error, settler))

    @staticmethod
    def _move(
        c: sqlite3.Connection,
        key: str,
        from_statuses: tuple[str, ...] | None,
        status: str,
        reference: str | None,
        error: str | None,
        settler: str | None,
    ) -> bool:
        """The status change and its audit row, in one transaction."""
        now = time.time()
        where = "claim_key = ?"
        args: tuple[object, ...] = (status, reference, error, now, key)
        if from_statuses is not None:
            where += f" AND status IN ({', '.join('?' for _ in from_statuses)})"
            args += from_statuses
        c.execute("BEGIN IMMEDIATE")
        try:
            cur = c.execute(
                "UPDATE payment_claims SET status = ?, reference = ?, error = ?, updated_at = ? "
                f"WHERE {where}",
                args,
            )
            moved = cur.rowcount == 1
            if moved and settler is not None:
                c.execute(
                    "INSERT INTO settlements VALUES (?, ?, ?, ?, ?, ?)",
                    (key, settler, status, reference, error, now),
                )
        except BaseException:
            c.execute("ROLLBACK")
            raise
        c.execute("COMMIT")
        return moved

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

    async def take_redelivery(self, key: str, request_id: str, holder: str | None = None) -> bool:
        cur = await self._run(
            lambda c: c.execute(
                "UPDATE payment_claims SET delivery = NULL, request_id = ?, holder = ?, "
                "updated_at = ? WHERE claim_key = ? AND delivery = 'undelivered' "
                "AND status IN ('settled', 'queued')",
                (request_id, holder, time.time(), key),
            )
        )
        return bool(cur.rowcount == 1)

    async def renew(self, holder: str, until: float) -> None:
        await self._run(
            lambda c: c.execute(
                "INSERT INTO ledger_holders VALUES (?, ?) "
                "ON CONFLICT (holder) DO UPDATE SET lease_until = excluded.lease_until",
                (holder, until),
            )
        )

    async def drop_holder(self, holder: str) -> None:
        await self._run(
            lambda c: c.execute("DELETE FROM ledger_holders WHERE holder = ?", (holder,))
        )

    async def holder_alive(self, holder: str, now: float) -> bool:
        row = await self._db.read(
            lambda c: c.execute(
                "SELECT 1 FROM ledger_holders WHERE holder = ? AND lease_until >= ?", (holder, now)
            ).fetchone()
        )
        return row is not None

    async def recover(self, older_than: float | None, local: bool) -> dict[str, int]:
        def go(c: sqlite3.Connection) -> dict[str, int]:
            c.execute("BEGIN IMMEDIATE")
            now = time.time()
            args: tuple[float, ...] = ()
            if older_than is None:
                orphan = "1 = 1"
            else:
                orphan, args = ORPHANED, (older_than, now)
            gone = ("pending", "settling") if local else ("pending",)
            released = c.execute(
                "SELECT claim_key FROM payment_claims "
                f"WHERE status IN ({', '.join('?' * len(gone))}) AND {orphan}",
                (*gone, *args),
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
                    f"WHERE status = 'settling' AND {orphan}",
                    (LOST, now, *args),
                ).rowcount
            undelivered = c.execute(
                "UPDATE payment_claims SET delivery = 'undelivered', updated_at = ? "
                f"WHERE status IN ('settled', 'queued') AND delivery IS NULL AND {orphan}",
                (now, *args),
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
                receipt_row(request_id, key, receipt),
            )
        )

    async def save_usage(self, record: dict[str, Any]) -> None:
        await self._run(
            lambda c: c.execute(
                "INSERT OR REPLACE INTO usage_records VALUES (?, ?, ?, ?, ?)",
                usage_row(record),
            )
        )

    async def export_queued(self, mark: bool, now: float | None = None) -> list[dict[str, Any]]:
        def go(c: sqlite3.Connection) -> list[dict[str, Any]]:
            c.execute("BEGIN IMMEDIATE")
            rows = c.execute(
                f"SELECT {', '.join(CLAIM_COLUMNS)} FROM payment_claims "
                "WHERE status = 'queued' AND exported_at IS NULL AND valid_before > ? "
                "ORDER BY created_at",
                (valid_after(now),),
            ).fetchall()
            out = [dict(zip(CLAIM_COLUMNS, r, strict=True)) for r in rows]
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
                f"SELECT {', '.join(CLAIM_COLUMNS)} FROM payment_claims "
                "WHERE status = 'queued' AND valid_before <= ? ORDER BY created_at",
                (int(now),),
            ).fetchall()
            out = [dict(zip(CLAIM_COLUMNS, r, strict=True)) for r in rows]
            if mark and out:
                c.executemany(
                    "UPDATE payment_claims SET status = 'expired', error = ?, updated_at = ? "
                    "WHERE claim_key = ? AND status = 'queued'",
                    [(EXPIRED, time.time(), r["claim_key"]) for r in out],
                )
            c.execute("COMMIT")
            return out

        return await self._run(go)

    def _claims(self, c: sqlite3.Connection, where: str, args: tuple[Any, ...]) -> list[Claim]:
        rows = c.execute(
            f"SELECT {', '.join(CLAIM_COLUMNS)} FROM payment_claims WHERE {where} "
            "ORDER BY created_at",
            args,
        ).fetchall()
        return [Claim(**dict(zip(CLAIM_COLUMNS, r, strict=True))) for r in rows]

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
        settler: str | None = None,
    ) -> bool:
        return await self._run(
            lambda c: self._move(c, key, from_statuses, status, reference, error, settler)
        )

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

"""The ledger in PostgreSQL (asyncpg), shared by several proxy instances."""

from __future__ import annotations

import time
from dataclasses import asdict
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
from meterkit.pgpool import open_pool


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
            for version, statements in MIGRATIONS:
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
        cols = ", ".join(CLAIM_COLUMNS)
        marks = ", ".join(f"${i + 1}" for i in range(len(CLAIM_COLUMNS)))
        got = await self._pool.fetchval(
            f"INSERT INTO payment_claims ({cols}) VALUES ({marks}) ON CONFLICT (claim_key) DO NOTHING "
            "RETURNING claim_key",
            *[row[k] for k in CLAIM_COLUMNS],
        )
        if got is not None:
            return True, None
        return False, await self.get_claim(claim.claim_key)

    async def get_claim(self, key: str) -> Claim | None:
        r = await self._pool.fetchrow(
            f"SELECT {', '.join(CLAIM_COLUMNS)} FROM payment_claims WHERE claim_key = $1", key
        )
        return Claim(**dict(r)) if r else None

    async def finish_claim(
        self,
        key: str,
        status: str,
        reference: str | None,
        error: str | None,
        settler: str | None = None,
    ) -> None:
        await self._move(key, None, status, reference, error, settler)

    async def _move(
        self,
        key: str,
        from_statuses: tuple[str, ...] | None,
        status: str,
        reference: str | None,
        error: str | None,
        settler: str | None,
    ) -> bool:
        """The status change and its audit row, in one transaction."""
        now = time.time()
        sql = (
            "UPDATE payment_claims SET status = $1, reference = $2, error = $3, updated_at = $4 "
            "WHERE claim_key = $5"
        )
        args: list[object] = [status, reference, error, now, key]
        if from_statuses is not None:
            sql += " AND status = ANY($6::text[])"
            args.append(list(from_statuses))
        async with self._pool.acquire() as c, c.transaction():
            moved = await c.fetchval(sql + " RETURNING claim_key", *args) is not None
            if moved and settler is not None:
                await c.execute(
                    "INSERT INTO settlements VALUES ($1, $2, $3, $4, $5, $6)",
                    key,
                    settler,
                    status,
                    reference,
                    error,
                    now,
                )
        return moved

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

    async def take_redelivery(self, key: str, request_id: str, holder: str | None = None) -> bool:
        got = await self._pool.fetchval(
            "UPDATE payment_claims SET delivery = NULL, request_id = $1, holder = $2, "
            "updated_at = $3 WHERE claim_key = $4 AND delivery = 'undelivered' "
            "AND status IN ('settled', 'queued') RETURNING claim_key",
            request_id,
            holder,
            time.time(),
            key,
        )
        return got is not None

    async def renew(self, holder: str, until: float) -> None:
        await self._pool.execute(
            "INSERT INTO ledger_holders VALUES ($1, $2) "
            "ON CONFLICT (holder) DO UPDATE SET lease_until = EXCLUDED.lease_until",
            holder,
            until,
        )

    async def drop_holder(self, holder: str) -> None:
        await self._pool.execute("DELETE FROM ledger_holders WHERE holder = $1", holder)

    async def holder_alive(self, holder: str, now: float) -> bool:
        got = await self._pool.fetchval(
            "SELECT 1 FROM ledger_holders WHERE holder = $1 AND lease_until >= $2", holder, now
        )
        return got is not None

    async def recover(self, older_than: float | None, local: bool) -> dict[str, int]:
        now = time.time()
        gone = ["pending", "settling"] if local else ["pending"]
        if older_than is None:
            orphan, args = "TRUE", []
        else:
            # The shared condition with numbered placeholders after the statement's own.
            orphan, args = ORPHANED, [older_than, now]

        def numbered(sql: str, start: int) -> str:
            parts = sql.split("?")
            out = parts[0]
            for n, part in enumerate(parts[1:]):
                out += f"${start + n}" + part
            return out

        async with self._pool.acquire() as c, c.transaction():
            released = await c.fetch(
                "DELETE FROM payment_claims WHERE status = ANY($1::text[]) AND "
                + numbered(orphan, 2)
                + " RETURNING claim_key",
                gone,
                *args,
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
                        "WHERE status = 'settling' AND " + numbered(orphan, 3),
                        LOST,
                        now,
                        *args,
                    )
                )
            undelivered = _count(
                await c.execute(
                    "UPDATE payment_claims SET delivery = 'undelivered', updated_at = $1 "
                    "WHERE status IN ('settled', 'queued') AND delivery IS NULL AND "
                    + numbered(orphan, 2),
                    now,
                    *args,
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
            *receipt_row(request_id, key, receipt),
        )

    async def save_usage(self, record: dict[str, Any]) -> None:
        await self._pool.execute(
            "INSERT INTO usage_records VALUES ($1, $2, $3, $4, $5) ON CONFLICT (request_id) DO UPDATE SET record_json = $5",
            *usage_row(record),
        )

    async def export_queued(self, mark: bool, now: float | None = None) -> list[dict[str, Any]]:
        async with self._pool.acquire() as c, c.transaction():
            rows = await c.fetch(
                f"SELECT {', '.join(CLAIM_COLUMNS)} FROM payment_claims "
                "WHERE status = 'queued' AND exported_at IS NULL AND valid_before > $1 "
                "ORDER BY created_at FOR UPDATE",
                valid_after(now),
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
                f"SELECT {', '.join(CLAIM_COLUMNS)} FROM payment_claims "
                "WHERE status = 'queued' AND valid_before <= $1 ORDER BY created_at FOR UPDATE",
                int(now),
            )
            out = [dict(r) for r in rows]
            if mark and out:
                await c.executemany(
                    "UPDATE payment_claims SET status = 'expired', error = $1, updated_at = $2 "
                    "WHERE claim_key = $3 AND status = 'queued'",
                    [(EXPIRED, time.time(), r["claim_key"]) for r in out],
                )
            return out

    async def _claims(self, where: str, *args: Any) -> list[Claim]:
        rows = await self._pool.fetch(
            f"SELECT {', '.join(CLAIM_COLUMNS)} FROM payment_claims WHERE {where} "
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
        settler: str | None = None,
    ) -> bool:
        return await self._move(key, from_statuses, status, reference, error, settler)

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

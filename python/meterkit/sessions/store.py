"""Durable session state: channels (prepaid deposits credited by the operator, or an
escrow's view), the highest accepted voucher, and what was spent. Every change is committed
before the caller answers: a restart keeps each accepted voucher and can still settle it.

SQLite in the ledger's file (its own table, its own connection thread)."""

from __future__ import annotations

import sqlite3
import time
from dataclasses import fields
from pathlib import Path
from typing import TypeVar

from meterkit.sessions.channels import Channel
from meterkit.sqlite_thread import SqliteThread

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS session_channels (
    channel_id TEXT PRIMARY KEY,
    payer TEXT NOT NULL,
    payee TEXT NOT NULL,
    token TEXT NOT NULL,
    authorized_signer TEXT NOT NULL,
    chain_id INTEGER NOT NULL,
    escrow TEXT NOT NULL,
    deposit TEXT NOT NULL,
    settled TEXT NOT NULL,
    finalized INTEGER NOT NULL,
    close_requested INTEGER NOT NULL,
    accepted TEXT NOT NULL,
    signature TEXT,
    spent TEXT NOT NULL,
    units INTEGER NOT NULL,
    updated_at REAL NOT NULL
)
"""
# Amounts are uint128: stored as decimal text (SQLite integers stop at 2^63).
_AMOUNTS = ("deposit", "settled", "accepted", "spent")
_COLUMNS = [f.name for f in fields(Channel)]


def _row(c: Channel) -> tuple[object, ...]:
    return tuple(
        str(getattr(c, k))
        if k in _AMOUNTS
        else int(getattr(c, k))
        if k in ("finalized", "close_requested")
        else getattr(c, k)
        for k in _COLUMNS
    )


def _channel(r: tuple[object, ...]) -> Channel:
    d = dict(zip(_COLUMNS, r, strict=False))
    for k in _AMOUNTS:
        d[k] = int(str(d[k]))
    d["finalized"], d["close_requested"] = bool(d["finalized"]), bool(d["close_requested"])
    return Channel(**d)  # type: ignore[arg-type]


class SessionStore:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._db = SqliteThread(self.path, "sessions")
        self._run = self._db.run

    async def open(self) -> None:
        def schema(conn: sqlite3.Connection) -> None:
            conn.execute(_SCHEMA)

        await self._db.open(schema)

    async def close(self) -> None:
        await self._db.close()

    async def get(self, channel_id: str) -> Channel | None:
        def go(c: sqlite3.Connection) -> Channel | None:
            r = c.execute(
                f"SELECT {', '.join(_COLUMNS)} FROM session_channels WHERE channel_id = ?",
                (channel_id.lower(),),
            ).fetchone()
            return _channel(r) if r else None

        return await self._run(go)

    async def list(self) -> list[Channel]:
        rows = await self._run(
            lambda c: c.execute(
                f"SELECT {', '.join(_COLUMNS)} FROM session_channels ORDER BY updated_at"
            ).fetchall()
        )
        return [_channel(r) for r in rows]

    async def credit(self, channel: Channel, amount: int) -> Channel:
        """A prepaid deposit: create the channel, or add `amount` to its deposit."""

        def go(c: sqlite3.Connection) -> Channel:
            c.execute("BEGIN IMMEDIATE")
            r = c.execute(
                "SELECT deposit, finalized FROM session_channels WHERE channel_id = ?",
                (channel.channel_id,),
            ).fetchone()
            if r is None:
                new = Channel(**{**channel.__dict__, "deposit": amount})
                c.execute(
                    f"INSERT INTO session_channels ({', '.join(_COLUMNS)}, updated_at) "
                    f"VALUES ({', '.join('?' * (len(_COLUMNS) + 1))})",
                    (*_row(new), time.time()),
                )
            else:
                if r[1]:
                    c.execute("ROLLBACK")
                    raise ValueError(f"channel {channel.channel_id} is closed")
                c.execute(
                    "UPDATE session_channels SET deposit = ?, updated_at = ? WHERE channel_id = ?",
                    (str(int(r[0]) + amount), time.time(), channel.channel_id),
                )
            out = c.execute(
                f"SELECT {', '.join(_COLUMNS)} FROM session_channels WHERE channel_id = ?",
                (channel.channel_id,),
            ).fetchone()
            c.execute("COMMIT")
            return _channel(out)

        return await self._run(go)

    async def accept(self, channel_id: str, amount: int, signature: str) -> bool:
        """Raise the highest accepted voucher to `amount` (only upwards, atomically)."""

        def go(c: sqlite3.Connection) -> bool:
            c.execute("BEGIN IMMEDIATE")
            r = c.execute(
                "SELECT accepted FROM session_channels WHERE channel_id = ? AND finalized = 0",
                (channel_id,),
            ).fetchone()
            if r is None or int(r[0]) >= amount:
                c.execute("ROLLBACK")
                return False
            c.execute(
                "UPDATE session_channels SET accepted = ?, signature = ?, updated_at = ? "
                "WHERE channel_id = ?",
                (str(amount), signature, time.time(), channel_id),
            )
            c.execute("COMMIT")
            return True

        return await self._run(go)

    async def charge(self, channel_id: str, amount: int, units: int) -> bool:
        """Move `amount` (for `units` tokens) into `spent`, never past what was accepted."""

        def go(c: sqlite3.Connection) -> bool:
            c.execute("BEGIN IMMEDIATE")
            r = c.execute(
                "SELECT accepted, spent, units FROM session_channels WHERE channel_id = ?",
                (channel_id,),
            ).fetchone()
            if r is None or int(r[1]) + amount > int(r[0]):
                c.execute("ROLLBACK")
                return False
            c.execute(
                "UPDATE session_channels SET spent = ?, units = ?, updated_at = ? "
                "WHERE channel_id = ?",
                (str(int(r[1]) + amount), int(r[2]) + units, time.time(), channel_id),
            )
            c.execute("COMMIT")
            return True

        return await self._run(go)

    async def finalize(self, channel_id: str, settled: int) -> None:
        await self._run(
            lambda c: c.execute(
                "UPDATE session_channels SET settled = ?, finalized = 1, updated_at = ? "
                "WHERE channel_id = ?",
                (str(settled), time.time(), channel_id),
            )
        )

    async def track(self, view: Channel) -> Channel:
        """An escrow's channel as the store knows it: the row is created on first sight
        from the escrow's view (nothing accepted or spent yet); later, the escrow's fields
        (deposit, close request) follow the chain while `settled` and `finalized` only ever
        grow (a close this gateway made stays made while a cached view lags behind). The
        session's fields (accepted, spent, units) are the store's. Written only when
        something changed."""

        def go(c: sqlite3.Connection) -> Channel:
            cols = ", ".join(_COLUMNS)
            r = c.execute(
                f"SELECT {cols} FROM session_channels WHERE channel_id = ?", (view.channel_id,)
            ).fetchone()
            if r is None:
                c.execute(
                    f"INSERT OR IGNORE INTO session_channels ({cols}, updated_at) "
                    f"VALUES ({', '.join('?' * (len(_COLUMNS) + 1))})",
                    (*_row(view), time.time()),
                )
                return view
            have = _channel(r)
            want = Channel(
                **{
                    **have.__dict__,
                    "deposit": view.deposit,
                    "settled": max(have.settled, view.settled),
                    "finalized": have.finalized or view.finalized,
                    "close_requested": view.close_requested,
                }
            )
            if want != have:
                c.execute(
                    "UPDATE session_channels SET deposit = ?, settled = ?, finalized = ?, "
                    "close_requested = ?, updated_at = ? WHERE channel_id = ?",
                    (
                        str(want.deposit),
                        str(want.settled),
                        int(want.finalized),
                        int(want.close_requested),
                        time.time(),
                        view.channel_id,
                    ),
                )
            return want

        return await self._run(go)

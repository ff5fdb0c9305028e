"""Durable session state: channels (prepaid deposits credited by the operator, or an
escrow's view), the highest accepted voucher, what was spent, and the credit each running
stream holds (`channels.draw`). Every change is committed before the caller answers: a
restart keeps each accepted voucher and can still settle it.

Two stores with one interface (`ChannelStore`): SQLite in the ledger's file (its own tables,
its own connection thread; instances on one machine — `serve --workers N` — share it), and
PostgreSQL (`sessions/postgres.py`) when the ledger is there, for instances on several
machines. The rules live in `channels.py`; a store reads, locks and writes.

Waking a paused stream when a voucher lands in another process: PostgreSQL notifies every
instance (LISTEN/NOTIFY, sent in the voucher's own transaction); SQLite has no such channel,
so a process with paused streams polls the file's change counter (`PRAGMA data_version`,
no disk read when nothing changed) and re-reads their vouchers only when it moved.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterable
from dataclasses import fields
from pathlib import Path
from typing import Protocol

from meterkit.sessions.channels import Channel, Draw, Drawn, credited, draw, follow_escrow
from meterkit.sqlite_thread import SqliteThread


class ChannelStore(Protocol):
    # Seconds between two checks for vouchers accepted by other processes while streams
    # wait for one (a safety net where notifications exist).
    poll_interval: float

    async def open(self) -> None: ...
    async def close(self) -> None: ...
    async def get(self, channel_id: str) -> Channel | None: ...
    async def list(self) -> list[Channel]: ...

    async def credit(self, channel: Channel, amount: int) -> Channel:
        """A prepaid deposit: create the channel, or add `amount` to its deposit."""
        ...

    async def accept(self, channel_id: str, amount: int, signature: str) -> bool:
        """Raise the highest accepted voucher to `amount` (only upwards, atomically), and
        tell the other instances."""
        ...

    async def draw(self, channel_id: str, hold_id: str, d: Draw, now: float) -> Drawn | None:
        """Apply one stream's step atomically (None: no such channel)."""
        ...

    async def finalize(self, channel_id: str, settled: int) -> None: ...

    async def track(self, view: Channel) -> Channel:
        """An escrow's channel as the store knows it: created on first sight from the
        escrow's view, then `channels.follow_escrow`. Written only when something changed."""
        ...

    async def accepted(self, channel_ids: Iterable[str], force: bool = False) -> dict[str, int]:
        """The accepted totals of these channels when the store may have changed since the
        last call (other processes wrote) or `force`; else {}."""
        ...

    def on_voucher(self, callback: Callable[[str], None]) -> None:
        """Call `callback(channel_id)` when another instance accepts a voucher, where the
        store can tell at once; `callback("close:" + channel_id)` when another instance is
        closing the channel (`announce_close`)."""
        ...

    async def announce_close(self, channel_id: str) -> None:
        """Tell the other instances sharing the store that the channel is being closed:
        their streams on it end (where the store can notify; else they see it at their next
        draw)."""
        ...

    async def holding(self, channel_id: str, now: float) -> int:
        """How many live stream holds the channel has at `now` (streams still running)."""
        ...


_CHANNELS = """
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
_HOLDS = """
CREATE TABLE IF NOT EXISTS session_holds (
    channel_id TEXT NOT NULL,
    hold_id TEXT NOT NULL,
    amount TEXT NOT NULL,
    expires_at REAL NOT NULL,
    PRIMARY KEY (channel_id, hold_id)
)
"""
# Amounts are uint128: stored as decimal text (SQLite integers stop at 2^63).
AMOUNTS = ("deposit", "settled", "accepted", "spent")
COLUMNS = [f.name for f in fields(Channel)]
_SELECT = f"SELECT {', '.join(COLUMNS)} FROM session_channels"


def _row(c: Channel) -> tuple[object, ...]:
    return tuple(
        str(getattr(c, k))
        if k in AMOUNTS
        else int(getattr(c, k))
        if k in ("finalized", "close_requested")
        else getattr(c, k)
        for k in COLUMNS
    )


def _channel(r: Iterable[object]) -> Channel:
    d = dict(zip(COLUMNS, r, strict=False))
    for k in AMOUNTS:
        d[k] = int(str(d[k]))
    d["finalized"], d["close_requested"] = bool(d["finalized"]), bool(d["close_requested"])
    return Channel(**d)  # type: ignore[arg-type]


class SessionStore:
    """The session store in SQLite (WAL, synchronous=FULL), beside the ledger."""

    # 50 ms: what a voucher accepted by another worker adds to a pause, at one PRAGMA
    # per tick per process while any stream is paused.
    poll_interval = 0.05

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._db = SqliteThread(self.path, "sessions")
        self._run = self._db.run
        self._version: int | None = None

    async def open(self) -> None:
        def schema(conn: sqlite3.Connection) -> None:
            conn.execute(_CHANNELS)
            conn.execute(_HOLDS)

        await self._db.open(schema)

    async def close(self) -> None:
        await self._db.close()

    async def get(self, channel_id: str) -> Channel | None:
        def go(c: sqlite3.Connection) -> Channel | None:
            r = c.execute(f"{_SELECT} WHERE channel_id = ?", (channel_id.lower(),)).fetchone()
            return _channel(r) if r else None

        return await self._db.read(go)

    async def list(self) -> list[Channel]:
        rows = await self._db.read(lambda c: c.execute(f"{_SELECT} ORDER BY updated_at").fetchall())
        return [_channel(r) for r in rows]

    async def credit(self, channel: Channel, amount: int) -> Channel:
        def go(c: sqlite3.Connection) -> Channel:
            c.execute("BEGIN IMMEDIATE")
            r = c.execute(
                "SELECT deposit, finalized FROM session_channels WHERE channel_id = ?",
                (channel.channel_id,),
            ).fetchone()
            if r is None:
                new = Channel(**{**channel.__dict__, "deposit": credited(0, amount)})
                c.execute(
                    f"INSERT INTO session_channels ({', '.join(COLUMNS)}, updated_at) "
                    f"VALUES ({', '.join('?' * (len(COLUMNS) + 1))})",
                    (*_row(new), time.time()),
                )
            else:
                if r[1]:
                    c.execute("ROLLBACK")
                    raise ValueError(f"channel {channel.channel_id} is closed")
                try:
                    deposit = credited(int(r[0]), amount)
                except ValueError:
                    c.execute("ROLLBACK")
                    raise
                c.execute(
                    "UPDATE session_channels SET deposit = ?, updated_at = ? WHERE channel_id = ?",
                    (str(deposit), time.time(), channel.channel_id),
                )
            out = c.execute(f"{_SELECT} WHERE channel_id = ?", (channel.channel_id,)).fetchone()
            c.execute("COMMIT")
            return _channel(out)

        return await self._db.run(go)

    async def accept(self, channel_id: str, amount: int, signature: str) -> bool:
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

    async def draw(self, channel_id: str, hold_id: str, d: Draw, now: float) -> Drawn | None:
        # A draw that moves no money (a hold taken, renewed or given back) needs no fsync of
        # its own: a hold is coordination between live streams, meaningless after a crash.
        # Skipping it takes ~0.5 ms (one fsync here) off every resume after a voucher; the
        # next commit that moves money (FULL) makes it durable with everything before it.
        money = bool(d.charge or d.upfront)

        def go(c: sqlite3.Connection) -> Drawn | None:
            if not money:
                c.execute("PRAGMA synchronous=NORMAL")
            try:
                return apply(c)
            finally:
                if not money:
                    c.execute("PRAGMA synchronous=FULL")

        def apply(c: sqlite3.Connection) -> Drawn | None:
            c.execute("BEGIN IMMEDIATE")
            try:
                r = c.execute(f"{_SELECT} WHERE channel_id = ?", (channel_id,)).fetchone()
                if r is None:
                    c.execute("ROLLBACK")
                    return None
                channel = _channel(r)
                c.execute(
                    "DELETE FROM session_holds WHERE channel_id = ? AND expires_at <= ?",
                    (channel_id, now),
                )
                held = others = 0
                for hid, amount in c.execute(
                    "SELECT hold_id, amount FROM session_holds WHERE channel_id = ?",
                    (channel_id,),
                ):
                    if hid == hold_id:
                        held = int(amount)
                    else:
                        others += int(amount)
                out = draw(channel, others, held, d)
                if (out.channel.spent, out.channel.units) != (channel.spent, channel.units):
                    c.execute(
                        "UPDATE session_channels SET spent = ?, units = ?, updated_at = ? "
                        "WHERE channel_id = ?",
                        (str(out.channel.spent), out.channel.units, now, channel_id),
                    )
                if out.held:
                    c.execute(
                        "INSERT OR REPLACE INTO session_holds VALUES (?, ?, ?, ?)",
                        (channel_id, hold_id, str(out.held), now + d.ttl),
                    )
                elif held:
                    c.execute(
                        "DELETE FROM session_holds WHERE channel_id = ? AND hold_id = ?",
                        (channel_id, hold_id),
                    )
                c.execute("COMMIT")
            except BaseException:
                c.execute("ROLLBACK")
                raise
            return out

        return await self._run(go)

    async def finalize(self, channel_id: str, settled: int) -> None:
        def go(c: sqlite3.Connection) -> None:
            c.execute("BEGIN IMMEDIATE")
            c.execute(
                "UPDATE session_channels SET settled = ?, finalized = 1, updated_at = ? "
                "WHERE channel_id = ?",
                (str(settled), time.time(), channel_id),
            )
            # A closed channel holds nothing: its streams end at their next draw.
            c.execute("DELETE FROM session_holds WHERE channel_id = ?", (channel_id,))
            c.execute("COMMIT")

        await self._run(go)

    async def track(self, view: Channel) -> Channel:
        def go(c: sqlite3.Connection) -> Channel:
            r = c.execute(f"{_SELECT} WHERE channel_id = ?", (view.channel_id,)).fetchone()
            if r is None:
                c.execute(
                    f"INSERT OR IGNORE INTO session_channels ({', '.join(COLUMNS)}, updated_at) "
                    f"VALUES ({', '.join('?' * (len(COLUMNS) + 1))})",
                    (*_row(view), time.time()),
                )
                return view
            have = _channel(r)
            want = follow_escrow(have, view)
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

    async def accepted(self, channel_ids: Iterable[str], force: bool = False) -> dict[str, int]:
        ids = list(channel_ids)

        def go(c: sqlite3.Connection) -> dict[str, int]:
            # Moves when another connection commits to the file; our own commits do not.
            version = int(c.execute("PRAGMA data_version").fetchone()[0])
            if (version == self._version and not force) or not ids:
                self._version = version
                return {}
            self._version = version
            rows = c.execute(
                "SELECT channel_id, accepted FROM session_channels WHERE channel_id IN "
                f"({', '.join('?' * len(ids))})",
                ids,
            ).fetchall()
            return {cid: int(a) for cid, a in rows}

        return await self._run(go)

    def on_voucher(self, callback: Callable[[str], None]) -> None:
        return None  # no notifications in SQLite: `accepted` is polled

    async def announce_close(self, channel_id: str) -> None:
        return None  # one process per file for sessions (serve --workers needs PostgreSQL)

    async def holding(self, channel_id: str, now: float) -> int:
        row = await self._db.read(
            lambda c: c.execute(
                "SELECT count(*) FROM session_holds WHERE channel_id = ? AND expires_at > ?",
                (channel_id, now),
            ).fetchone()
        )
        return int(row[0])

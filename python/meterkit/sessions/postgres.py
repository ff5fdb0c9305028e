"""The session store in PostgreSQL (asyncpg), for instances on several machines: the same
tables and rules as the SQLite store (`store.py`, `channels.py`), a row lock per channel
(`SELECT … FOR UPDATE`) where SQLite takes its file lock, and a notification to every
instance when a voucher is accepted (`NOTIFY`, delivered when its transaction commits), so a
stream paused on instance A resumes the moment a voucher lands on instance B.

The listening connection is one per process; when it drops it is reopened, and paused
streams re-read their channel every `poll_interval` meanwhile (a lost notification costs at
most that much of the pause, never the voucher)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from meterkit.pgpool import open_pool
from meterkit.sessions.channels import Channel, Draw, Drawn, credited, draw, follow_escrow
from meterkit.sessions.store import AMOUNTS, COLUMNS

log = logging.getLogger("meterkit.sessions")

# The notification channel: its payload is the channel id whose accepted total rose.
NOTIFY_CHANNEL = "meterkit_session_voucher"

_SCHEMA = [
    """CREATE TABLE IF NOT EXISTS session_channels (
    channel_id TEXT PRIMARY KEY,
    payer TEXT NOT NULL,
    payee TEXT NOT NULL,
    token TEXT NOT NULL,
    authorized_signer TEXT NOT NULL,
    chain_id BIGINT NOT NULL,
    escrow TEXT NOT NULL,
    deposit NUMERIC(39, 0) NOT NULL,
    settled NUMERIC(39, 0) NOT NULL,
    finalized BOOLEAN NOT NULL,
    close_requested BOOLEAN NOT NULL,
    accepted NUMERIC(39, 0) NOT NULL,
    signature TEXT,
    spent NUMERIC(39, 0) NOT NULL,
    units BIGINT NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL
)""",
    """CREATE TABLE IF NOT EXISTS session_holds (
    channel_id TEXT NOT NULL,
    hold_id TEXT NOT NULL,
    amount NUMERIC(39, 0) NOT NULL,
    expires_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (channel_id, hold_id)
)""",
]
_SELECT = f"SELECT {', '.join(COLUMNS)} FROM session_channels"
_INSERT = (
    f"INSERT INTO session_channels ({', '.join(COLUMNS)}, updated_at) "
    f"VALUES ({', '.join(f'${i + 1}' for i in range(len(COLUMNS) + 1))})"
)


def _channel(r: Any) -> Channel:
    d = dict(zip(COLUMNS, r, strict=False))
    for k in AMOUNTS:
        d[k] = int(d[k])
    return Channel(**d)


def _row(c: Channel) -> tuple[object, ...]:
    return tuple(getattr(c, k) for k in COLUMNS)


class PostgresSessionStore:
    # A safety net only: notifications wake paused streams at once.
    poll_interval = 1.0

    def __init__(self, url: str, schema: str | None = None, timeout: float = 5.0) -> None:
        self.url = url
        self.schema = schema
        self.timeout = timeout
        self._pool: Any = None
        self._listener: Any = None
        self._callbacks: list[Callable[[str], None]] = []
        self._reconnect: asyncio.Task[None] | None = None
        self._closing = False

    async def open(self) -> None:
        self._pool = await open_pool(self.url, self.schema, self.timeout)
        async with self._pool.acquire() as c, c.transaction():
            # One instance creates the tables at a time (the ledger's lock number + 1).
            await c.execute("SELECT pg_advisory_xact_lock(7236219)")
            for stmt in _SCHEMA:
                await c.execute(stmt)

    async def close(self) -> None:
        self._closing = True
        if self._reconnect is not None:
            self._reconnect.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reconnect
        if self._listener is not None:
            await self._listener.close()
            self._listener = None
        if self._pool is not None:
            await self._pool.close()

    # ---- notifications --------------------------------------------------------------------

    def on_voucher(self, callback: Callable[[str], None]) -> None:
        self._callbacks.append(callback)
        if self._reconnect is None:
            self._reconnect = asyncio.get_running_loop().create_task(self._listen())

    async def announce_close(self, channel_id: str) -> None:
        await self._pool.execute("SELECT pg_notify($1, $2)", NOTIFY_CHANNEL, "close:" + channel_id)

    async def holding(self, channel_id: str, now: float) -> int:
        return int(
            await self._pool.fetchval(
                "SELECT count(*) FROM session_holds WHERE channel_id = $1 AND expires_at > $2",
                channel_id,
                now,
            )
        )

    def _notified(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        for cb in self._callbacks:
            cb(payload)

    async def _listen(self) -> None:
        """Keep one LISTEN connection open; reopen it (with backoff) when it drops."""
        import asyncpg

        delay = 0.1
        while not self._closing:
            try:
                conn = await asyncpg.connect(self.url, timeout=self.timeout)
                lost = asyncio.Event()
                conn.add_termination_listener(lambda _c, lost=lost: lost.set())
                await conn.add_listener(NOTIFY_CHANNEL, self._notified)
                self._listener, delay = conn, 0.1
                await lost.wait()
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.warning("session notifications unavailable: %s; retrying", e)
            self._listener = None
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    # ---- state --------------------------------------------------------------------------------

    async def get(self, channel_id: str) -> Channel | None:
        r = await self._pool.fetchrow(f"{_SELECT} WHERE channel_id = $1", channel_id.lower())
        return _channel(r) if r else None

    async def list(self) -> list[Channel]:
        return [_channel(r) for r in await self._pool.fetch(f"{_SELECT} ORDER BY updated_at")]

    async def credit(self, channel: Channel, amount: int) -> Channel:
        async with self._pool.acquire() as c, c.transaction():
            r = await c.fetchrow(
                "SELECT deposit, finalized FROM session_channels WHERE channel_id = $1 FOR UPDATE",
                channel.channel_id,
            )
            if r is None:
                new = Channel(**{**channel.__dict__, "deposit": credited(0, amount)})
                # Two first credits at once: the second waits on the key, then adds.
                await c.execute(
                    _INSERT + " ON CONFLICT (channel_id) DO UPDATE "
                    "SET deposit = session_channels.deposit + EXCLUDED.deposit",
                    *_row(new),
                    time.time(),
                )
            else:
                if r["finalized"]:
                    raise ValueError(f"channel {channel.channel_id} is closed")
                await c.execute(
                    "UPDATE session_channels SET deposit = $1, updated_at = $2 "
                    "WHERE channel_id = $3",
                    credited(int(r["deposit"]), amount),
                    time.time(),
                    channel.channel_id,
                )
            out = await c.fetchrow(f"{_SELECT} WHERE channel_id = $1", channel.channel_id)
            return _channel(out)

    async def accept(self, channel_id: str, amount: int, signature: str) -> bool:
        async with self._pool.acquire() as c, c.transaction():
            done = await c.fetchval(
                "UPDATE session_channels SET accepted = $1, signature = $2, updated_at = $3 "
                "WHERE channel_id = $4 AND NOT finalized AND accepted < $1 RETURNING true",
                amount,
                signature,
                time.time(),
                channel_id,
            )
            if done:
                # Sent when this transaction commits: no instance wakes before it is durable.
                await c.execute("SELECT pg_notify($1, $2)", NOTIFY_CHANNEL, channel_id)
            return bool(done)

    async def draw(self, channel_id: str, hold_id: str, d: Draw, now: float) -> Drawn | None:
        async with self._pool.acquire() as c, c.transaction():
            if not (d.charge or d.upfront):
                # Moves no money (a hold: coordination between live streams): no need to
                # wait for the WAL flush, as in the SQLite store.
                await c.execute("SET LOCAL synchronous_commit = off")
            r = await c.fetchrow(f"{_SELECT} WHERE channel_id = $1 FOR UPDATE", channel_id)
            if r is None:
                return None
            channel = _channel(r)
            await c.execute(
                "DELETE FROM session_holds WHERE channel_id = $1 AND expires_at <= $2",
                channel_id,
                now,
            )
            held = others = 0
            for h in await c.fetch(
                "SELECT hold_id, amount FROM session_holds WHERE channel_id = $1", channel_id
            ):
                if h["hold_id"] == hold_id:
                    held = int(h["amount"])
                else:
                    others += int(h["amount"])
            out = draw(channel, others, held, d)
            if (out.channel.spent, out.channel.units) != (channel.spent, channel.units):
                await c.execute(
                    "UPDATE session_channels SET spent = $1, units = $2, updated_at = $3 "
                    "WHERE channel_id = $4",
                    out.channel.spent,
                    out.channel.units,
                    now,
                    channel_id,
                )
            if out.held:
                await c.execute(
                    "INSERT INTO session_holds VALUES ($1, $2, $3, $4) "
                    "ON CONFLICT (channel_id, hold_id) DO UPDATE "
                    "SET amount = EXCLUDED.amount, expires_at = EXCLUDED.expires_at",
                    channel_id,
                    hold_id,
                    out.held,
                    now + d.ttl,
                )
            elif held:
                await c.execute(
                    "DELETE FROM session_holds WHERE channel_id = $1 AND hold_id = $2",
                    channel_id,
                    hold_id,
                )
            return out

    async def finalize(self, channel_id: str, settled: int) -> None:
        async with self._pool.acquire() as c, c.transaction():
            await c.execute(
                "UPDATE session_channels SET settled = $1, finalized = true, updated_at = $2 "
                "WHERE channel_id = $3",
                settled,
                time.time(),
                channel_id,
            )
            await c.execute("DELETE FROM session_holds WHERE channel_id = $1", channel_id)

    async def track(self, view: Channel) -> Channel:
        async with self._pool.acquire() as c, c.transaction():
            r = await c.fetchrow(f"{_SELECT} WHERE channel_id = $1 FOR UPDATE", view.channel_id)
            if r is None:
                inserted = await c.fetchval(
                    _INSERT + " ON CONFLICT (channel_id) DO NOTHING RETURNING true",
                    *_row(view),
                    time.time(),
                )
                if inserted:
                    return view
                r = await c.fetchrow(f"{_SELECT} WHERE channel_id = $1 FOR UPDATE", view.channel_id)
            have = _channel(r)
            want = follow_escrow(have, view)
            if want != have:
                await c.execute(
                    "UPDATE session_channels SET deposit = $1, settled = $2, finalized = $3, "
                    "close_requested = $4, updated_at = $5 WHERE channel_id = $6",
                    want.deposit,
                    want.settled,
                    want.finalized,
                    want.close_requested,
                    time.time(),
                    view.channel_id,
                )
            return want

    async def accepted(self, channel_ids: Iterable[str], force: bool = False) -> dict[str, int]:
        ids = list(channel_ids)
        if not ids:
            return {}
        rows = await self._pool.fetch(
            "SELECT channel_id, accepted FROM session_channels WHERE channel_id = ANY($1)", ids
        )
        return {r["channel_id"]: int(r["accepted"]) for r in rows}

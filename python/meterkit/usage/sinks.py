"""Where usage records go. `submit` never blocks the event loop: the log sink formats one
line; the SQLite sink hands records to a writer thread, the PostgreSQL sink to a writer task,
each committing them in batches.

Nothing is dropped because the store is slow or busy: a batch the store refuses for a
transient reason (SQLite busy or locked, PostgreSQL unreachable) is retried with backoff
until it commits, and counted in `meterkit_usage_write_retries_total`. Records pile up in
memory meanwhile; past `max_pending` the proxy answers new requests 503 (`backlogged`)
instead of growing without bound. A record is keyed by its gateway-generated request id, so
a batch retried after a commit whose answer was lost is not written twice.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import sqlite3
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import orjson

from meterkit.usage.records import UsageRecord

if TYPE_CHECKING:
    from meterkit.config import UsageSinkConfig
    from meterkit.observability.metrics import ProxyMetrics

log = logging.getLogger("meterkit.usage")

# Backoff between retries of a refused batch (seconds): doubling from the first to the cap.
_RETRY_FIRST, _RETRY_CAP = 0.05, 1.0
_BATCH = 500


class UsageSink(Protocol):
    def submit(self, record: UsageRecord) -> None:
        """Hand over one record; must not block (called on the event loop, also while a
        request is being cancelled)."""

    def backlogged(self) -> int:
        """The number of records waiting when that is more than the sink will hold (the
        proxy then refuses new requests with 503), else 0."""

    async def close(self) -> None:
        """Flush and release resources."""


class NullSink:
    def submit(self, record: UsageRecord) -> None:
        pass

    def backlogged(self) -> int:
        return 0

    async def close(self) -> None:
        pass


class LogSink(NullSink):
    """Each record as one structured log line (`meterkit.usage`, level info)."""

    def submit(self, record: UsageRecord) -> None:
        log.info("usage", extra={"usage": record.as_dict()})


class MemorySink(NullSink):
    """Keeps records in a list (library use and tests)."""

    def __init__(self) -> None:
        self.records: list[UsageRecord] = []

    def submit(self, record: UsageRecord) -> None:
        self.records.append(record)


# Columns of the usage_records table, in insert order; `record` holds the whole record.
COLUMNS = (
    "request_id",
    "started_at",
    "route",
    "upstream",
    "model",
    "outcome",
    "status",
    "prompt_tokens",
    "completion_tokens",
    "completion_provenance",
    "record",
    "client_request_id",
    "reason",
)
# Added after the first release: existing files get them with ALTER TABLE.
_ADDED = ("client_request_id", "reason")


def row(r: UsageRecord) -> tuple[Any, ...]:
    return (
        r.request_id,
        r.started_at,
        r.route,
        r.upstream,
        r.model,
        r.outcome,
        r.status,
        r.prompt_tokens,
        r.completion_tokens,
        r.completion_provenance,
        # orjson serialises the dataclass itself, far cheaper than `asdict`'s deep copy.
        orjson.dumps(r).decode(),
        r.client_request_id,
        r.reason,
    )


_SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS usage_records (
    request_id TEXT PRIMARY KEY,
    started_at REAL NOT NULL,
    route TEXT NOT NULL,
    upstream TEXT NOT NULL,
    model TEXT,
    outcome TEXT NOT NULL,
    status INTEGER,
    prompt_tokens INTEGER,
    completion_tokens INTEGER,
    completion_provenance TEXT,
    record TEXT NOT NULL,
    client_request_id TEXT,
    reason TEXT
);
CREATE INDEX IF NOT EXISTS usage_records_started ON usage_records (started_at);
"""

_PG_SCHEMA = """
CREATE TABLE IF NOT EXISTS {table} (
    request_id TEXT PRIMARY KEY,
    started_at DOUBLE PRECISION NOT NULL,
    route TEXT NOT NULL,
    upstream TEXT NOT NULL,
    model TEXT,
    outcome TEXT NOT NULL,
    status INTEGER,
    prompt_tokens BIGINT,
    completion_tokens BIGINT,
    completion_provenance TEXT,
    record JSONB NOT NULL,
    client_request_id TEXT,
    reason TEXT
);
CREATE INDEX IF NOT EXISTS usage_records_started ON {table} (started_at);
"""

_STOP = object()


def _transient(e: sqlite3.Error) -> bool:
    msg = str(e).lower()
    return isinstance(e, sqlite3.OperationalError) and ("locked" in msg or "busy" in msg)


class SqliteSink:
    """Usage records in a SQLite file (WAL), written by one background thread."""

    def __init__(
        self,
        path: str | Path,
        *,
        max_pending: int = 100_000,
        metrics: ProxyMetrics | None = None,
        busy_timeout: float = 5.0,
    ) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.max_pending = max_pending
        self.metrics = metrics
        self.busy_timeout = busy_timeout
        self._queue: queue.Queue[object] = queue.Queue()
        self._inflight = 0
        # Why the last batch could not be written (None: it was), for readiness.
        self._failing: str | None = None
        # Open and migrate here so a bad path fails at startup, not on the first record.
        conn = sqlite3.connect(self.path)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.executescript(_SQLITE_SCHEMA)
        have = {r[1] for r in conn.execute("PRAGMA table_info(usage_records)")}
        for col in _ADDED:
            if col not in have:
                try:
                    conn.execute(f"ALTER TABLE usage_records ADD COLUMN {col} TEXT")
                except sqlite3.OperationalError as e:
                    # Another process (a worker of `serve --workers`) added it first.
                    if "duplicate column" not in str(e):
                        raise
        conn.commit()
        conn.close()
        if metrics is not None:
            metrics.usage_pending.set_function(lambda: self.pending)
        self._thread = threading.Thread(target=self._run, name="meterkit-usage-sqlite", daemon=True)
        self._thread.start()

    @property
    def pending(self) -> int:
        return self._queue.qsize() + self._inflight

    def submit(self, record: UsageRecord) -> None:
        self._queue.put(record)

    def backlogged(self) -> int:
        n = self.pending
        return n if n > self.max_pending else 0

    def _run(self) -> None:
        conn = sqlite3.connect(self.path, timeout=self.busy_timeout)
        sql = (
            f"INSERT OR IGNORE INTO usage_records ({', '.join(COLUMNS)}) "
            f"VALUES ({', '.join('?' * len(COLUMNS))})"
        )
        try:
            while True:
                batch = [self._queue.get()]
                while len(batch) < _BATCH:
                    try:
                        batch.append(self._queue.get_nowait())
                    except queue.Empty:
                        break
                rows = [row(r) for r in batch if isinstance(r, UsageRecord)]
                self._inflight = len(rows)
                if rows:
                    self._write(conn, sql, rows)
                self._inflight = 0
                if any(r is _STOP for r in batch):
                    return
        finally:
            conn.close()

    def _write(self, conn: sqlite3.Connection, sql: str, rows: list[tuple[Any, ...]]) -> None:
        delay, warned = _RETRY_FIRST, False
        while True:
            try:
                with conn:
                    conn.executemany(sql, rows)
                self._failing = None
                if warned:
                    log.warning("usage store writable again", extra={"count": len(rows)})
                return
            except sqlite3.Error as e:
                if not _transient(e):
                    self._failing = str(e)
                    # Not a matter of waiting (a full disk, a broken file): keep the records
                    # in the log rather than lose them.
                    log.error(
                        "could not write usage records: %s",
                        e,
                        extra={"records": [r[-3] for r in rows]},
                    )
                    if self.metrics is not None:
                        self.metrics.usage_write_failures.labels("sqlite").inc(len(rows))
                    return
                if self.metrics is not None:
                    self.metrics.usage_write_retries.labels("sqlite").inc()
                if not warned:
                    log.warning("usage store busy, retrying: %s", e, extra={"count": len(rows)})
                    warned = True
                time.sleep(delay)
                delay = min(delay * 2, _RETRY_CAP)

    async def ping(self) -> None:
        """Readiness (issue 20 #6): the file takes a write now — its write lock can be had
        within a second — and the last batch was written. Raises when not."""

        def check() -> None:
            conn = sqlite3.connect(self.path, timeout=1.0)
            try:
                conn.execute("BEGIN IMMEDIATE")
                conn.execute("ROLLBACK")
            finally:
                conn.close()

        await asyncio.to_thread(check)
        if self._failing is not None:
            raise RuntimeError(f"the last usage records could not be written: {self._failing}")

    async def close(self) -> None:
        self._queue.put(_STOP)
        await asyncio.to_thread(self._thread.join, 30)


class PostgresSink:
    """Usage records in one PostgreSQL table, so several proxy instances write one place.
    A writer task commits batches over an asyncpg pool; the table is created when missing."""

    def __init__(
        self,
        url: str,
        *,
        schema: str | None = None,
        max_pending: int = 100_000,
        metrics: ProxyMetrics | None = None,
    ) -> None:
        self.url = url
        self.table = f"{schema}.usage_records" if schema else "usage_records"
        self.schema = schema
        self.max_pending = max_pending
        self.metrics = metrics
        self._queue: asyncio.Queue[UsageRecord] = asyncio.Queue()
        self._inflight = 0
        self._task: asyncio.Task[None] | None = None
        self._pool: Any = None
        if metrics is not None:
            metrics.usage_pending.set_function(lambda: self.pending)

    @property
    def pending(self) -> int:
        return self._queue.qsize() + self._inflight

    async def ping(self) -> None:
        """Readiness: raises when PostgreSQL does not answer."""
        if self._pool is None:
            raise RuntimeError("not open")
        async with self._pool.acquire(timeout=2) as conn:
            await conn.fetchval("SELECT 1")

    async def open(self) -> None:
        """Connect and create the table (a bad URL or an unreachable server fails here)."""
        import asyncpg

        self._pool = await asyncpg.create_pool(self.url, min_size=1, max_size=2, timeout=10)
        async with self._pool.acquire() as conn:
            if self.schema:
                await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {self.schema}")
            await conn.execute(_PG_SCHEMA.format(table=self.table))
        self._task = asyncio.get_running_loop().create_task(self._run())

    def submit(self, record: UsageRecord) -> None:
        self._queue.put_nowait(record)

    def backlogged(self) -> int:
        n = self.pending
        return n if n > self.max_pending else 0

    async def _run(self) -> None:
        sql = (
            f"INSERT INTO {self.table} ({', '.join(COLUMNS)}) VALUES "
            f"({', '.join(f'${i}' for i in range(1, len(COLUMNS) + 1))}) "
            "ON CONFLICT (request_id) DO NOTHING"
        )
        while True:
            batch = [await self._queue.get()]
            while len(batch) < _BATCH and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            self._inflight = len(batch)
            rows = [row(r) for r in batch]
            delay, warned = _RETRY_FIRST, False
            while True:
                try:
                    async with self._pool.acquire(timeout=10) as conn:
                        await conn.executemany(sql, rows)
                    break
                except asyncio.CancelledError:
                    raise
                except Exception as e:
                    if self.metrics is not None:
                        self.metrics.usage_write_retries.labels("postgres").inc()
                    if not warned:
                        log.warning("usage store unavailable, retrying: %s", e)
                        warned = True
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, _RETRY_CAP)
            self._inflight = 0
            for _ in batch:
                self._queue.task_done()

    async def close(self, timeout: float = 30) -> None:
        if self._task is not None:
            try:
                await asyncio.wait_for(self._queue.join(), timeout)
            except TimeoutError:
                log.error("usage records not written at shutdown", extra={"count": self.pending})
            self._task.cancel()
        if self._pool is not None:
            await self._pool.close()


def make_sink(config: UsageSinkConfig, metrics: ProxyMetrics | None = None) -> UsageSink:
    if config.sink == "sqlite":
        return SqliteSink(config.path, max_pending=config.max_pending, metrics=metrics)
    if config.sink == "postgres":
        assert config.url is not None
        return PostgresSink(
            config.url, schema=config.schema, max_pending=config.max_pending, metrics=metrics
        )
    if config.sink == "none":
        return NullSink()
    return LogSink()

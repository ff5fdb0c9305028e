"""Where usage records go. `submit` never blocks the event loop: the log sink formats one
line; the SQLite sink hands records to a writer thread that commits them in batches."""

from __future__ import annotations

import logging
import queue
import sqlite3
import threading
from pathlib import Path
from typing import Protocol

import orjson

from meterkit.usage.records import UsageRecord

log = logging.getLogger("meterkit.usage")


class UsageSink(Protocol):
    def submit(self, record: UsageRecord) -> None:
        """Hand over one record; must not block (called on the event loop, also while a
        request is being cancelled)."""

    async def close(self) -> None:
        """Flush and release resources."""


class NullSink:
    def submit(self, record: UsageRecord) -> None:
        pass

    async def close(self) -> None:
        pass


class LogSink:
    """Each record as one structured log line (`meterkit.usage`, level info)."""

    def submit(self, record: UsageRecord) -> None:
        log.info("usage", extra={"usage": record.as_dict()})

    async def close(self) -> None:
        pass


class MemorySink:
    """Keeps records in a list (library use and tests)."""

    def __init__(self) -> None:
        self.records: list[UsageRecord] = []

    def submit(self, record: UsageRecord) -> None:
        self.records.append(record)

    async def close(self) -> None:
        pass


_SCHEMA = """
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
    record TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS usage_records_started ON usage_records (started_at);
"""

_STOP = object()


class SqliteSink:
    """Usage records in a SQLite file (WAL), written by one background thread."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._queue: queue.Queue[object] = queue.Queue()
        # Open and migrate here so a bad path fails at startup, not on the first record.
        conn = sqlite3.connect(self.path)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.executescript(_SCHEMA)
        conn.close()
        self._thread = threading.Thread(target=self._run, name="meterkit-usage-sqlite", daemon=True)
        self._thread.start()

    def submit(self, record: UsageRecord) -> None:
        self._queue.put(record)

    def _run(self) -> None:
        conn = sqlite3.connect(self.path)
        try:
            while True:
                item = self._queue.get()
                batch = [item]
                while not self._queue.empty() and len(batch) < 500:
                    batch.append(self._queue.get_nowait())
                rows = [self._row(r) for r in batch if isinstance(r, UsageRecord)]
                if rows:
                    try:
                        with conn:
                            conn.executemany(
                                "INSERT OR REPLACE INTO usage_records VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                                rows,
                            )
                    except sqlite3.Error:
                        log.exception("could not write usage records", extra={"count": len(rows)})
                if any(r is _STOP for r in batch):
                    return
        finally:
            conn.close()

    @staticmethod
    def _row(r: UsageRecord) -> tuple[object, ...]:
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
            orjson.dumps(r.as_dict()).decode(),
        )

    async def close(self) -> None:
        import asyncio

        self._queue.put(_STOP)
        await asyncio.to_thread(self._thread.join, 10)


def make_sink(kind: str, path: str) -> UsageSink:
    if kind == "sqlite":
        return SqliteSink(path)
    if kind == "none":
        return NullSink()
    return LogSink()

"""Reading usage records back from a proxy's SQLite sink (written by a background thread)."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

import orjson


def record(db: Path, request_id: str, timeout: float = 10) -> dict[str, Any]:
    """The one record of the request the client called `request_id` (its X-Request-Id), or
    of the gateway's own id."""
    found = records(db, request_id, 1, timeout)
    assert len(found) == 1, f"{len(found)} usage records for {request_id} in {db}"
    return found[0]


def records(db: Path, request_id: str, count: int, timeout: float = 10) -> list[dict[str, Any]]:
    """Every record carrying `request_id`, once at least `count` of them are written."""
    deadline = time.monotonic() + timeout
    rows: list[Any] = []
    while time.monotonic() < deadline:
        if db.exists():
            with sqlite3.connect(db) as conn:
                rows = conn.execute(
                    "SELECT record FROM usage_records WHERE request_id = ? OR client_request_id = ?",
                    (request_id, request_id),
                ).fetchall()
            if len(rows) >= count:
                return [dict(orjson.loads(r[0])) for r in rows]
        time.sleep(0.05)
    if rows:
        return [dict(orjson.loads(r[0])) for r in rows]
    raise AssertionError(f"no usage record for {request_id} in {db}")


def all_records(db: Path) -> list[dict[str, Any]]:
    with sqlite3.connect(db) as conn:
        return [dict(orjson.loads(r[0])) for r in conn.execute("SELECT record FROM usage_records")]

"""Reading usage records back from a proxy's SQLite sink (written by a background thread)."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

import orjson


def record(db: Path, request_id: str, timeout: float = 10) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if db.exists():
            with sqlite3.connect(db) as conn:
                row = conn.execute(
                    "SELECT record FROM usage_records WHERE request_id = ?", (request_id,)
                ).fetchone()
            if row:
                return dict(orjson.loads(row[0]))
        time.sleep(0.05)
    raise AssertionError(f"no usage record for {request_id} in {db}")

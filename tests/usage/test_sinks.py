"""Usage sinks lose nothing: a busy SQLite file is waited for, PostgreSQL takes records from
several instances into one table, and records are flushed before the proxy exits."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from meterkit.observability.metrics import ProxyMetrics
from meterkit.usage import PostgresSink, SqliteSink, UsageRecord
from support.processes import Process, running


def records(n: int, prefix: str = "") -> list[UsageRecord]:
    return [
        UsageRecord(f"{prefix}{uuid.uuid4().hex}", "POST /v1/x", "u", "POST", "/v1/x", time.time())
        for _ in range(n)
    ]


def count(path: Path) -> int:
    with sqlite3.connect(path) as db:
        return int(db.execute("SELECT count(*) FROM usage_records").fetchone()[0])


def hold_lock(path: Path, seconds: float, locked: threading.Event) -> threading.Thread:
    """Another writer (a backup, a VACUUM) holding the file's write lock for `seconds`."""

    def hold() -> None:
        db = sqlite3.connect(path, isolation_level=None)
        db.execute("BEGIN EXCLUSIVE")
        locked.set()
        time.sleep(seconds)
        db.execute("COMMIT")
        db.close()

    t = threading.Thread(target=hold)
    t.start()
    return t


def test_a_locked_sqlite_file_loses_no_record(tmp_path: Path) -> None:
    path = tmp_path / "usage.sqlite3"
    metrics = ProxyMetrics()
    sink = SqliteSink(path, metrics=metrics, busy_timeout=0.1, max_pending=100)
    locked = threading.Event()
    holder = hold_lock(path, 1.5, locked)
    locked.wait(5)
    for r in records(300):
        sink.submit(r)
    time.sleep(0.5)
    # Still locked: everything waits, more than the sink holds, so the proxy would say 503.
    assert sink.backlogged() == 300
    assert metrics.registry.get_sample_value("meterkit_usage_pending_records") == 300
    holder.join()
    asyncio.run(sink.close())
    assert count(path) == 300
    assert sink.backlogged() == 0
    retries = metrics.registry.get_sample_value(
        "meterkit_usage_write_retries_total", {"sink": "sqlite"}
    )
    assert retries is not None and retries >= 1


def test_a_record_written_twice_is_stored_once(tmp_path: Path) -> None:
    path = tmp_path / "usage.sqlite3"
    sink = SqliteSink(path)
    (r,) = records(1)
    sink.submit(r)
    sink.submit(r)
    asyncio.run(sink.close())
    assert count(path) == 1


def test_an_older_usage_file_gains_the_new_columns(tmp_path: Path) -> None:
    path = tmp_path / "usage.sqlite3"
    with sqlite3.connect(path) as db:
        db.execute(
            "CREATE TABLE usage_records (request_id TEXT PRIMARY KEY, started_at REAL NOT NULL,"
            " route TEXT NOT NULL, upstream TEXT NOT NULL, model TEXT, outcome TEXT NOT NULL,"
            " status INTEGER, prompt_tokens INTEGER, completion_tokens INTEGER,"
            " completion_provenance TEXT, record TEXT NOT NULL)"
        )
    sink = SqliteSink(path)
    (r,) = records(1)
    r.client_request_id = "theirs"
    sink.submit(r)
    asyncio.run(sink.close())
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT client_request_id FROM usage_records").fetchall() == [("theirs",)]


def test_several_instances_write_one_postgres_table(postgres_url: str) -> None:
    import asyncpg

    schema = f"usage_{uuid.uuid4().hex[:10]}"

    async def go() -> None:
        sinks = [PostgresSink(postgres_url, schema=schema) for _ in range(2)]
        for s in sinks:
            await s.open()
        written = records(40)
        for i, r in enumerate(written):
            sinks[i % 2].submit(r)
        sinks[0].submit(written[1])  # the same record again, from the other instance
        for s in sinks:
            await s.close()
        conn = await asyncpg.connect(postgres_url)
        try:
            n = await conn.fetchval(f"SELECT count(*) FROM {schema}.usage_records")
            kind = await conn.fetchval(
                f"SELECT record->>'route' FROM {schema}.usage_records LIMIT 1"
            )
        finally:
            await conn.execute(f"DROP SCHEMA {schema} CASCADE")
            await conn.close()
        assert n == 40 and kind == "POST /v1/x"

    asyncio.run(go())


def test_records_are_flushed_before_exit_on_sigterm(mock_llm: Process, tmp_path: Path) -> None:
    import http.client

    import orjson
    import yaml

    db = tmp_path / "usage.sqlite3"
    tree: dict[str, Any] = {
        "gateway": {"host": "127.0.0.1"},
        "upstreams": {"mock": {"url": mock_llm.url}},
        "routes": {"POST /v1/chat/completions": {"upstream": "mock"}},
        "usage": {"sink": "sqlite", "path": str(db)},
        "logging": {"level": "error"},
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(tree))
    with running(["serve", "--config", str(tmp_path / "c.yaml"), "--port", "0"]) as proxy:
        host, port = proxy.url.removeprefix("http://").split(":")
        locked = threading.Event()
        # Locked past SQLite's own 5 s busy timeout: the records wait in the proxy.
        holder = hold_lock(db, 6, locked)
        locked.wait(5)
        body = orjson.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]})
        for _ in range(20):
            c = http.client.HTTPConnection(host, int(port), timeout=10)
            c.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
            assert c.getresponse().status == 200
            c.close()
        proxy.proc.send_signal(15)
        holder.join()
        assert proxy.proc.wait(30) == 0
    assert count(db) == 20


@pytest.mark.parametrize("bad", [{"sink": "postgres"}, {"sink": "sqlite", "max_pending": 0}])
def test_usage_config_is_checked(bad: dict[str, Any]) -> None:
    from meterkit.config import ConfigError, config_from_dict

    tree = {
        "upstreams": {"u": {"url": "http://127.0.0.1:9"}},
        "routes": {"POST /x": {"upstream": "u"}},
        "usage": bad,
    }
    with pytest.raises(ConfigError) as e:
        config_from_dict(tree)
    assert "usage" in str(e.value)

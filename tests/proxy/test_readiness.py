"""`/readyz` checks the backends; `/healthz` stays liveness (issue 12 #15)."""

from __future__ import annotations

import asyncio
import socket
import sqlite3
from pathlib import Path

from meterkit.budgets.redis_backend import RedisBackend
from meterkit.usage import SqliteSink
from support.inproc import gateway, llm_config


def budgeted() -> dict[str, object]:
    tree = llm_config("{mock}")
    tree["budgets"] = {"b": {"key": "ip", "tokens_per_day": 1000}}
    tree["routes"] = {"POST /v1/chat/completions": {"upstream": "mock", "budget": "b"}}
    return tree


def test_ready_when_the_backends_answer() -> None:
    async def go() -> None:
        async with gateway(budgeted()) as g:
            async with g.session.get(g.url + "/readyz") as r:
                assert r.status == 200
                assert (await r.json())["status"] == "ready"

    asyncio.run(go())


def test_not_ready_while_redis_is_down_though_still_alive() -> None:
    async def go() -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        backend = RedisBackend(f"redis://127.0.0.1:{port}/0", timeout=0.2)
        async with gateway(budgeted(), budget_backend=backend) as g:
            async with g.session.get(g.url + "/readyz") as r:
                assert r.status == 503
                body = await r.json()
                assert body["status"] == "unavailable"
                assert body["checks"]["budget_store"].startswith("unavailable")
            async with g.session.get(g.url + "/healthz") as r:
                assert r.status == 200

    asyncio.run(go())


def test_not_ready_while_the_sqlite_usage_store_cannot_be_written(tmp_path: Path) -> None:
    """Issue 20 #6: `/readyz` answered `{"checks": {}}` while the usage file could not be
    written (here another process holds its write lock), though the README says it checks."""
    path = tmp_path / "usage.sqlite3"

    async def go() -> None:
        sink = SqliteSink(path)
        try:
            async with gateway(budgeted(), sink=sink) as g:
                async with g.session.get(g.url + "/readyz") as r:
                    assert r.status == 200
                    assert (await r.json())["checks"]["usage"] == "ok"
                blocker = sqlite3.connect(path, isolation_level=None)
                blocker.execute("BEGIN EXCLUSIVE")
                try:
                    async with g.session.get(g.url + "/readyz") as r:
                        assert r.status == 503
                        assert (await r.json())["checks"]["usage"].startswith("unavailable")
                finally:
                    blocker.execute("ROLLBACK")
                    blocker.close()
                async with g.session.get(g.url + "/readyz") as r:
                    assert r.status == 200
        finally:
            await sink.close()

    asyncio.run(go())

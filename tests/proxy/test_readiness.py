"""`/readyz` checks the backends; `/healthz` stays liveness (issue 12 #15)."""

from __future__ import annotations

import asyncio
import socket

from meterkit.budgets.redis_backend import RedisBackend
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

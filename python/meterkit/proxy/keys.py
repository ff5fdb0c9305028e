"""Typed keys of the shared state an app holds (aiohttp `AppKey`s: no module globals)."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

import aiohttp
from aiohttp import web

from meterkit.budgets.backends import BudgetBackend
from meterkit.config import Config
from meterkit.observability.metrics import ProxyMetrics
from meterkit.payments.ledger import Ledger
from meterkit.payments.settlement import Settler
from meterkit.proxy.context import Stage
from meterkit.proxy.routing import Router
from meterkit.usage import UsageSink


class BackgroundTasks:
    """Tasks that outlive their request (usage records); shutdown waits for them."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[None]] = set()

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def wait(self, timeout: float) -> None:
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=timeout)


CONFIG = web.AppKey("config", Config)
ROUTER = web.AppKey("router", Router)
SESSION = web.AppKey("session", aiohttp.ClientSession)
SINK = web.AppKey("sink", UsageSink)
METRICS = web.AppKey("metrics", ProxyMetrics)
STAGES: web.AppKey[tuple[Stage, ...]] = web.AppKey("stages", tuple)
TASKS = web.AppKey("tasks", BackgroundTasks)
BUDGET_BACKEND = web.AppKey("budget_backend", BudgetBackend)
LEDGER = web.AppKey("ledger", Ledger)
SETTLER = web.AppKey("settler", Settler)

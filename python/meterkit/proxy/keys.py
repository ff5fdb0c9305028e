"""Typed keys of the shared state an app holds (aiohttp `AppKey`s: no module globals)."""

from __future__ import annotations

import asyncio

import aiohttp
from aiohttp import web

from meterkit.config import Config
from meterkit.observability.metrics import ProxyMetrics
from meterkit.proxy.context import Stage
from meterkit.proxy.routing import Router
from meterkit.usage import UsageSink

CONFIG = web.AppKey("config", Config)
ROUTER = web.AppKey("router", Router)
SESSION = web.AppKey("session", aiohttp.ClientSession)
SINK = web.AppKey("sink", UsageSink)  # type: ignore[type-abstract]
METRICS = web.AppKey("metrics", ProxyMetrics)
STAGES: web.AppKey[tuple[Stage, ...]] = web.AppKey("stages", tuple)
# Background tasks (usage records) that shutdown waits for.
TASKS: web.AppKey[set[asyncio.Task[None]]] = web.AppKey("tasks", set)

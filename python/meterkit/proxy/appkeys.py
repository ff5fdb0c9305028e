"""Typed keys of the shared state an app holds (aiohttp `AppKey`s: no module globals)."""

from __future__ import annotations

import aiohttp
from aiohttp import web

from meterkit.budgets.backends import BudgetBackend
from meterkit.budgets.registry import KeyRegistry
from meterkit.config import Config
from meterkit.observability.metrics import ProxyMetrics
from meterkit.payments.ledger import Ledger
from meterkit.payments.settlement import Settler
from meterkit.pipeline import Pipeline
from meterkit.proxy.routing import RoutePlan, Router
from meterkit.runtime import BackgroundTasks
from meterkit.sessions import ChannelStore
from meterkit.usage import UsageSink

CONFIG = web.AppKey("config", Config)
ROUTER = web.AppKey("router", Router)
# What the requests of each route share, by route key (see `routing.RoutePlan`).
PLANS = web.AppKey("plans", dict[str, RoutePlan])
SESSION = web.AppKey("session", aiohttp.ClientSession)
SINK = web.AppKey("sink", UsageSink)
METRICS = web.AppKey("metrics", ProxyMetrics)
PIPELINE = web.AppKey("pipeline", Pipeline)
TASKS = web.AppKey("tasks", BackgroundTasks)
BUDGET_BACKEND = web.AppKey("budget_backend", BudgetBackend)
LEDGER = web.AppKey("ledger", Ledger)
SETTLER = web.AppKey("settler", Settler)
SESSION_STORE = web.AppKey("session_store", ChannelStore)
KEY_REGISTRY = web.AppKey("key_registry", KeyRegistry)

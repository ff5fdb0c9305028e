"""The proxy application: configure, then freeze. Shared resources (one pooled upstream
`ClientSession`, the usage sink, metrics) live under typed app keys and start and stop in
`cleanup_ctx`."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import aiohttp
from aiohttp import web

from meterkit.budgets import BudgetBackend, make_backend
from meterkit.config import Config
from meterkit.observability.metrics import CONTENT_TYPE_LATEST, ProxyMetrics
from meterkit.payments import discovery
from meterkit.payments.ledger import Ledger, journal, make_ledger
from meterkit.payments.settlement import Settler, make_settler
from meterkit.pipeline import Pipeline, Stage
from meterkit.proxy.handler import handle
from meterkit.proxy.keys import (
    BUDGET_BACKEND,
    CONFIG,
    LEDGER,
    METRICS,
    PIPELINE,
    ROUTER,
    SESSION,
    SETTLER,
    SINK,
    TASKS,
)
from meterkit.proxy.routing import Router
from meterkit.runtime import BackgroundTasks, bound_port
from meterkit.stages import BudgetStage, PaymentStage
from meterkit.usage import PostgresSink, UsageSink, make_sink

log = logging.getLogger("meterkit.proxy")


async def _session(app: web.Application) -> AsyncIterator[None]:
    connector = aiohttp.TCPConnector(
        limit=0, limit_per_host=0, ttl_dns_cache=300, enable_cleanup_closed=True
    )
    # auto_decompress off: non-metered bodies pass byte for byte with their Content-Encoding.
    async with aiohttp.ClientSession(
        connector=connector,
        auto_decompress=False,
        trust_env=False,
        timeout=aiohttp.ClientTimeout(total=None),
    ) as session:
        app[SESSION] = session
        yield


async def _tasks(app: web.Application) -> AsyncIterator[None]:
    sink = app[SINK]
    if isinstance(sink, PostgresSink):
        await sink.open()
    yield
    await app[TASKS].wait(timeout=10)
    await app[SINK].close()
    if BUDGET_BACKEND in app:
        await app[BUDGET_BACKEND].close()


async def _payments(app: web.Application) -> AsyncIterator[None]:
    await app[LEDGER].open()
    yield
    await app[SETTLER].close()
    await app[LEDGER].close()


def _base_url(request: web.Request) -> str:
    return f"{request.scheme}://{request.host}"


async def _well_known(request: web.Request) -> web.Response:
    return web.json_response(discovery.well_known(request.app[CONFIG], _base_url(request)))


async def _openapi(request: web.Request) -> web.Response:
    return web.json_response(discovery.openapi(request.app[CONFIG], _base_url(request)))


async def _health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def _metrics(request: web.Request) -> web.Response:
    body = request.app[METRICS].exposition()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def build_app(
    config: Config,
    *,
    sink: UsageSink | None = None,
    stages: Sequence[Stage] = (),
    budget_backend: BudgetBackend | None = None,
    ledger: Ledger | None = None,
    settler: Settler | None = None,
) -> web.Application:
    """The proxy app for `config`. The stages the config asks for run first (payments, then
    budgets, which may be keyed by the verified payer), then `stages` in order. A payment
    is verified at admission but claimed only after every stage admitted the request."""
    app = web.Application(client_max_size=config.gateway.max_request_body)
    app[CONFIG] = config
    app[ROUTER] = Router(config.routes)
    app[METRICS] = ProxyMetrics()
    app[SINK] = sink if sink is not None else make_sink(config.usage, app[METRICS])
    configured: list[Stage] = []
    if any(PaymentStage.applies(r.payment) for r in config.routes):
        base = Path(config.source).parent if Path(config.source).is_file() else None
        app[LEDGER] = ledger or make_ledger(
            config.ledger.type, config.ledger.path, config.ledger.url, config.ledger.schema
        )
        app[SETTLER] = settler or make_settler(
            config.payments.settlement, base, journal(app[LEDGER])
        )
        configured.append(PaymentStage(config, app[LEDGER], app[SETTLER], app[METRICS], base))
        app.cleanup_ctx.append(_payments)
        if config.payments.discovery and any(r.payment.priced for r in config.routes):
            app.router.add_get("/.well-known/x402", _well_known)
            app.router.add_get("/openapi.json", _openapi)
    if any(r.budget for r in config.routes):
        backend = budget_backend or make_backend(config.budget_store)
        app[BUDGET_BACKEND] = backend
        configured.append(BudgetStage(config, backend, app[METRICS]))
    app[PIPELINE] = Pipeline((*configured, *stages))
    app[TASKS] = BackgroundTasks()
    app.cleanup_ctx.append(_session)
    app.cleanup_ctx.append(_tasks)
    app.router.add_get("/healthz", _health)
    if config.metrics.enabled:
        app.router.add_get(config.metrics.path, _metrics)
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


async def start(app: web.Application, host: str, port: int) -> tuple[web.AppRunner, int]:
    """Start serving `app`; returns the runner and the bound port (useful with port 0)."""
    # handler_cancellation: aiohttp cancels a handler when its client disconnects, which is
    # how the upstream request gets aborted the moment the client leaves.
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=4096)
    await site.start()
    return runner, bound_port(site)


def serve(config: Config, host: str | None = None, port: int | None = None) -> None:
    """Run the proxy until SIGINT/SIGTERM."""
    from meterkit.observability.logs import configure_logging
    from meterkit.runtime import event_loop_name, run_forever

    configure_logging(config.logging.level, config.logging.format)
    host = host or config.gateway.host
    port = config.gateway.port if port is None else port

    async def main() -> None:
        runner, bound = await start(build_app(config), host, port)
        log.info(
            "listening",
            extra={
                "url": f"http://{host}:{bound}",
                "loop": event_loop_name(),
                "routes": len(config.routes),
            },
        )
        print(f"meterkit serving on http://{host}:{bound}", flush=True)
        try:
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()

    run_forever(main())

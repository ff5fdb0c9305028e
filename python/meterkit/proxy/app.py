"""The proxy application: configure, then freeze. Shared resources (one pooled upstream
`ClientSession`, the usage sink, metrics) live under typed app keys and start and stop in
`cleanup_ctx`."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path

import aiohttp
from aiohttp import web

from meterkit import _core
from meterkit.budgets import BudgetBackend, make_backend
from meterkit.budgets.registry import KeyRegistry, make_registry
from meterkit.config import Config
from meterkit.observability.metrics import CONTENT_TYPE_LATEST, ProxyMetrics
from meterkit.payments import discovery
from meterkit.payments.claims import STALE_CLAIM
from meterkit.payments.hooks import RouteHooks
from meterkit.payments.ledger import Ledger, SqliteLedger, journal, make_ledger
from meterkit.payments.settlement import FacilitatorSettler, Settler
from meterkit.payments.settlers import make_settler
from meterkit.pipeline import Pipeline, Stage, ordered
from meterkit.proxy.appkeys import (
    BUDGET_BACKEND,
    CONFIG,
    KEY_REGISTRY,
    LEDGER,
    METRICS,
    PIPELINE,
    PLANS,
    ROUTER,
    SESSION,
    SESSION_STORE,
    SETTLER,
    SINK,
    TASKS,
)
from meterkit.proxy.handler import handle
from meterkit.proxy.routing import Router, route_plans
from meterkit.proxy.server import (
    RateLimitedWarning,
    StartupError,
)
from meterkit.runtime import BackgroundTasks
from meterkit.sessions import make_store
from meterkit.sessions.sources import make_source
from meterkit.stages import BudgetStage, HookStage, KeyStage, PaymentStage, SessionStage
from meterkit.usage import PostgresSink, UsageSink, make_sink

log = logging.getLogger("meterkit.proxy")


async def _session(app: web.Application) -> AsyncIterator[None]:
    connector = aiohttp.TCPConnector(
        limit=0, limit_per_host=0, ttl_dns_cache=300, enable_cleanup_closed=True
    )
    # auto_decompress off: non-metered bodies pass byte for byte with their Content-Encoding.
    # No cookie jar: this one session serves every client, and aiohttp's default jar keeps
    # an upstream's Set-Cookie (from a host name, not an IP) and sends it with every later
    # request to that host, whoever makes it: one client's upstream session would go out
    # with the others' requests. Clients' own Cookie headers pass as they are, and the
    # upstream's Set-Cookie still reaches the client that got it. It also spares a jar
    # lookup per request (issue 14 item 2).
    async with aiohttp.ClientSession(
        connector=connector,
        cookie_jar=aiohttp.DummyCookieJar(),
        auto_decompress=False,
        trust_env=False,
        timeout=aiohttp.ClientTimeout(total=None),
    ) as session:
        app[SESSION] = session
        yield


async def _tasks(app: web.Application) -> AsyncIterator[None]:
    sink = app[SINK]
    if isinstance(sink, PostgresSink):
        try:
            await sink.open()
        except Exception as e:
            raise StartupError(e, "usage store (PostgreSQL)") from e
    yield
    await app[TASKS].wait(timeout=10)
    await app[SINK].close()
    if BUDGET_BACKEND in app:
        await app[BUDGET_BACKEND].close()


async def _key_registry(app: web.Application) -> AsyncIterator[None]:
    registry = app[KEY_REGISTRY]
    try:
        await registry.open()
    except Exception as e:
        raise StartupError(e, f"key registry ({registry.name})") from e
    yield
    await registry.close()


async def _payments(app: web.Application) -> AsyncIterator[None]:
    ledger, settler = app[LEDGER], app[SETTLER]
    try:
        await ledger.open()
    except Exception as e:
        raise StartupError(e, f"ledger ({app[CONFIG].ledger.type})") from e
    stage = next(s for s in app[PIPELINE].stages if isinstance(s, PaymentStage))
    # A SQLite ledger has one process: whatever is in flight at start was left by a crash.
    # Instances sharing PostgreSQL resolve only what nobody touched for a while.
    local = isinstance(ledger, SqliteLedger)
    await stage.recover(None if local else time.time() - STALE_CLAIM)
    await stage.start_lease()
    if isinstance(settler, FacilitatorSettler):
        check = await settler.supported([a.asset for a in app[CONFIG].accepts])
        if not check.ok:
            log.error("payment facilitator check: %s", check.describe())
    yield
    await stage.stop_lease()
    await app[SETTLER].close()
    await app[LEDGER].close()


async def _sessions(app: web.Application) -> AsyncIterator[None]:
    store = app[SESSION_STORE]
    try:
        await store.open()
    except Exception as e:
        raise StartupError(e, "session store") from e
    stage = next(s for s in app[PIPELINE].stages if isinstance(s, SessionStage))
    stage.hub.start()
    yield
    await stage.hub.close()
    await stage.source.aclose()
    await store.close()


def _base_url(request: web.Request) -> str:
    return f"{request.scheme}://{request.host}"


async def _well_known(request: web.Request) -> web.Response:
    return web.json_response(discovery.well_known(request.app[CONFIG], _base_url(request)))


async def _openapi(request: web.Request) -> web.Response:
    return web.json_response(discovery.openapi(request.app[CONFIG], _base_url(request)))


async def _health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


_READY_TIMEOUT = 2.0
_ready_warning = RateLimitedWarning(log)


async def _ready(request: web.Request) -> web.Response:
    return await readiness(request.app)


async def readiness(app: web.Application) -> web.Response:
    """Readiness: 200 when every backend this app uses answers (the budget store, the usage
    store, the ledger), else 503 naming the ones that do not. `/healthz` stays liveness.
    The public `/readyz` and the admin listener's both answer with it."""
    probes: dict[str, Callable[[], Awaitable[object]]] = {}
    for name, key in (
        ("budget_store", BUDGET_BACKEND),
        ("usage", SINK),
        ("key_registry", KEY_REGISTRY),
    ):
        ping = getattr(app.get(key), "ping", None)
        if ping is not None:
            probes[name] = ping
    if LEDGER in app:
        probes["ledger"] = app[LEDGER].schema_version
    if app[SINK].backlogged():
        probes["usage_backlog"] = _backlogged

    async def check(probe: Callable[[], Awaitable[object]]) -> str:
        try:
            async with asyncio.timeout(_READY_TIMEOUT):
                await probe()
        except Exception as e:  # any driver error means not ready
            return f"unavailable ({type(e).__name__})"
        return "ok"

    answers = await asyncio.gather(*(check(p) for p in probes.values()))
    results = dict(zip(probes, answers, strict=True))
    ready = all(v == "ok" for v in results.values())
    if not ready:
        _ready_warning.warn("not ready", checks=results)
    return web.json_response(
        {"status": "ready" if ready else "unavailable", "checks": results},
        status=200 if ready else 503,
        headers={"Cache-Control": "no-store"},
    )


async def _backlogged() -> None:
    raise RuntimeError("usage records are waiting for the usage store")


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
    key_registry: KeyRegistry | None = None,
) -> web.Application:
    """The proxy app for `config`. The stages the config asks for run first, in the order
    `meterkit.pipeline.order` declares (keys, hooks, budget, session, payment), then
    `stages` in order. A payment is verified at admission but claimed only after every
    stage admitted the request."""
    app = web.Application(client_max_size=config.gateway.max_request_body)
    app[CONFIG] = config
    app[ROUTER] = Router(config.routes)
    app[PLANS] = route_plans(config)
    app[METRICS] = ProxyMetrics(key_label=config.metrics.key_label, process=True)
    app[SINK] = sink if sink is not None else make_sink(config.usage, app[METRICS])
    configured: list[Stage] = []
    base = Path(config.source).parent if Path(config.source).is_file() else None
    hooks = RouteHooks(config.routes, base)
    if hooks.by_route:
        configured.append(HookStage(hooks))
    if config.keys is not None:
        # First: a 401 for an unknown key costs nothing and precedes any 402 or 429.
        app[KEY_REGISTRY] = key_registry or make_registry(config.keys)
        configured.append(KeyStage(config, app[KEY_REGISTRY]))
        app.cleanup_ctx.append(_key_registry)
    if any(PaymentStage.applies(r.payment) for r in config.routes):
        app[LEDGER] = ledger or make_ledger(
            config.ledger.type,
            config.ledger.path,
            config.ledger.url,
            config.ledger.schema,
            config.ledger.timeout,
        )
        app[SETTLER] = settler or make_settler(
            config.payments.settlement, base, journal(app[LEDGER])
        )
        payment = PaymentStage(config, app[LEDGER], app[SETTLER], app[METRICS], base, hooks)
        if any(SessionStage.applies(r.payment) for r in config.routes):
            # Sessions keep their channels beside the ledger (its SQLite file, or its
            # PostgreSQL database for several instances).
            app[SESSION_STORE] = make_store(config.ledger)
            sessions = SessionStage(
                config,
                app[SESSION_STORE],
                app[METRICS],
                make_source(config.sessions.onchain, app[SESSION_STORE]),
                hooks,
            )
            payment.session_challenges = sessions.challenges
            configured.append(sessions)
            app.cleanup_ctx.append(_sessions)
        configured.append(payment)
        app.cleanup_ctx.append(_payments)
        if config.payments.discovery and any(r.payment.priced for r in config.routes):
            app.router.add_get("/.well-known/x402", _well_known)
            app.router.add_get("/openapi.json", _openapi)
    if any(r.budget for r in config.routes):
        backend = budget_backend or make_backend(config.budget_store)
        app[BUDGET_BACKEND] = backend
        configured.append(BudgetStage(config, backend, app[METRICS]))
    app[PIPELINE] = Pipeline(ordered(configured, stages))
    # Process-wide, in the core: what all streams may hold of unfinished upstream events.
    _core.set_pending_budget(config.gateway.max_pending_bytes or None)
    app[TASKS] = BackgroundTasks()
    app.cleanup_ctx.append(_session)
    app.cleanup_ctx.append(_tasks)
    app.router.add_get("/healthz", _health)
    app.router.add_get("/readyz", _ready)
    if config.metrics.enabled:
        app.router.add_get(config.metrics.path, _metrics)
    app.router.add_route("*", "/{tail:.*}", handle)
    return app

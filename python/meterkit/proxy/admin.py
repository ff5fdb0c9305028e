"""The admin listener: budget administration, `/metrics` and readiness on an address of its
own (`admin: {host, port, token}`), so the public port never exposes them.

Every route but `/healthz` and `/readyz` needs `Authorization: Bearer <admin.token>`; errors
are problem details (RFC 9457), like the gateway's own.

    GET  /budgets/{key}[?budget=NAME]          where the key's budgets stand
    POST /budgets/{key}/grant  {"tokens": N[, "budget": NAME]}   add N to today's allowance
    POST /budgets/{key}/reset  [{"budget": NAME}]                full bucket, nothing used today
    GET  /metrics   GET /readyz   GET /healthz

It shares the proxy app's budget backend, so a grant takes effect on the next admission,
in-memory budgets included.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from meterkit.budgets import admin as budget_admin
from meterkit.budgets.backends import BackendUnavailable
from meterkit.config.ops import Admin
from meterkit.pipeline.problems import problem_response
from meterkit.problems import ProxyError
from meterkit.proxy.appkeys import BUDGET_BACKEND, CONFIG, KEY_REGISTRY, METRICS

log = logging.getLogger("meterkit.admin")

PROXY = web.AppKey("proxy", web.Application)
SETTINGS = web.AppKey("admin", Admin)
_OPEN = frozenset({"/healthz", "/readyz"})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def _auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path not in _OPEN:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        expected = request.app[SETTINGS].token
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            token.strip().encode(), expected.encode()
        ):
            return problem_response(
                ProxyError(
                    401,
                    "admin-unauthorized",
                    "Admin token required",
                    "send Authorization: Bearer <admin.token>",
                    headers={"WWW-Authenticate": 'Bearer realm="meterkit-admin"'},
                ),
                None,
            )
    try:
        return await handler(request)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        return problem_response(
            ProxyError(
                e.status,
                "admin-not-found" if e.status == 404 else "admin-error",
                e.reason,
                f"{request.method} {request.path}: {e.reason}",
            ),
            None,
        )


async def _budget(request: web.Request, action: str) -> web.Response:
    proxy = request.app[PROXY]
    body: dict[str, Any] = {}
    if request.method == "POST" and request.can_read_body:
        try:
            parsed = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            parsed = None
        if not isinstance(parsed, dict):
            return problem_response(
                ProxyError(400, "invalid-body", "Invalid body", "expected a JSON object"), None
            )
        body = parsed
    budget = body.get("budget", request.query.get("budget"))
    if budget is not None and not isinstance(budget, str):
        return problem_response(
            ProxyError(400, "invalid-body", "Invalid body", "budget: expected a name"), None
        )
    if BUDGET_BACKEND not in proxy:
        return problem_response(
            ProxyError(404, "unknown-budget", "No budgets", "no route of this proxy has a budget"),
            None,
        )
    try:
        result = await budget_admin.run(
            action,
            proxy[BUDGET_BACKEND],
            proxy[CONFIG],
            proxy.get(KEY_REGISTRY),
            request.match_info["key"],
            budget,
            body.get("tokens"),
        )
    except budget_admin.AdminError as e:
        return problem_response(
            ProxyError(e.status, e.code, "Budget request refused", e.detail), None
        )
    except BackendUnavailable as e:
        return problem_response(
            ProxyError(503, "budget-store-unavailable", "Budget store unavailable", str(e)), None
        )
    if action != "show":
        log.warning(
            "budget %s",
            action,
            extra={"key": result["key"], "tokens": body.get("tokens"), "budget": budget},
        )
    return web.json_response(result, dumps=lambda v: orjson.dumps(v).decode())


async def _show(request: web.Request) -> web.Response:
    return await _budget(request, "show")


async def _grant(request: web.Request) -> web.Response:
    return await _budget(request, "grant")


async def _reset(request: web.Request) -> web.Response:
    return await _budget(request, "reset")


async def _metrics(request: web.Request) -> web.Response:
    from meterkit.observability.metrics import CONTENT_TYPE_LATEST

    body = request.app[PROXY][METRICS].exposition()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def _ready(request: web.Request) -> web.Response:
    from meterkit.proxy.app import readiness

    return await readiness(request.app[PROXY])


async def _health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def build_admin_app(proxy: web.Application, settings: Admin) -> web.Application:
    """The admin app for the running proxy app `proxy` (its budget backend, registry,
    metrics and readiness checks)."""
    app = web.Application(middlewares=[_auth], client_max_size=64 * 1024)
    app[PROXY] = proxy
    app[SETTINGS] = settings
    app.router.add_get("/healthz", _health)
    app.router.add_get("/readyz", _ready)
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/budgets/{key}", _show)
    app.router.add_post("/budgets/{key}/grant", _grant)
    app.router.add_post("/budgets/{key}/reset", _reset)
    return app


async def start_admin(
    proxy: web.Application, settings: Admin, host: str | None = None, port: int | None = None
) -> tuple[web.AppRunner, int]:
    """Serve the admin app; the runner and the bound port. Raises ListenError."""
    from meterkit.runtime import serve_app

    return await serve_app(
        build_admin_app(proxy, settings),
        host or settings.host,
        settings.port if port is None else port,
        what=" (admin)",
        access_log=None,
    )

"""Operator hooks that write down every call, for tests of when hooks fire
(`support.hook_log:on_request` and so on in a route's `hooks:`)."""

from __future__ import annotations

from typing import Any

# (hook, route key, gateway request id, the hook's argument) in the order they fired.
CALLS: list[tuple[str, str, str, Any]] = []


def _log(name: str, ctx: Any, arg: Any = None) -> None:
    CALLS.append((name, ctx.route.key, ctx.request_id, arg))


def on_request(ctx: Any) -> None:
    _log("onRequest", ctx)


def on_price(ctx: Any, quote: Any) -> None:
    _log("onPriceResolved", ctx, quote)


def on_settled(ctx: Any, receipt: Any) -> None:
    _log("onSettled", ctx, receipt)


def on_response(ctx: Any, status: int) -> None:
    _log("onResponse", ctx, status)


def on_error(ctx: Any, error: Any) -> None:
    _log("onError", ctx, error)


HOOKS = {
    "onRequest": "support.hook_log:on_request",
    "onPriceResolved": "support.hook_log:on_price",
    "onSettled": "support.hook_log:on_settled",
    "onResponse": "support.hook_log:on_response",
    "onError": "support.hook_log:on_error",
}


def names(route: str | None = None) -> list[str]:
    return [c[0] for c in CALLS if route is None or c[1] == route]

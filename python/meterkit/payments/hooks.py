"""Operator hooks of a route (YAML `hooks:`), loaded once and fired by whichever stage owns
the moment: the hook stage (`onRequest`, `onResponse`, `onError` for the upstream), the
payment stage (`onPriceResolved`, `onSettled` and `onError` of one-time payments) and the
session stage (`onSettled` at the end of a stream paid per token or a channel's close,
`onError` for a refused voucher). The contract is docs/hooks.md.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from meterkit.config import Route
from meterkit.payments.callables import call, load_callable
from meterkit.problems import ProxyError

log = logging.getLogger("meterkit.payments")

# Hooks whose answer changes the response: a failure is the client's 500 problem. The others
# are told what happened: a failure is logged and changes nothing.
DECIDING = frozenset({"onRequest", "onPriceResolved"})


class RouteHooks:
    """Every route's hooks, by route key and hook name."""

    def __init__(self, routes: Iterable[Route], base_dir: Path | None = None) -> None:
        self.by_route: dict[str, dict[str, Any]] = {
            r.key: {name: load_callable(ref, base_dir) for name, ref in r.payment.hooks.items()}
            for r in routes
            if r.payment.hooks
        }

    def has(self, route: Route) -> bool:
        return route.key in self.by_route

    async def fire(self, ctx: Any, name: str, *args: Any) -> Any:
        """Call the route's `name` hook with `ctx` and `args`; None when it has none."""
        fn = self.by_route.get(ctx.route.key, {}).get(name)
        if fn is None:
            return None
        if name in DECIDING:
            try:
                return await call(fn, ctx, *args)
            except ProxyError:
                raise
            except Exception as e:
                log.exception("hook %s failed", name, extra={"route": ctx.route.key})
                raise ProxyError(
                    500, "hook-failed", "Hook failed", f"the route's {name} hook failed"
                ) from e
        try:
            return await call(fn, ctx, *args)
        except Exception:
            log.exception("hook %s failed", name, extra={"route": ctx.route.key})
            return None

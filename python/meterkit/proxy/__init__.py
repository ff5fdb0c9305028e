"""The streaming proxy: route, forward without buffering, meter every stream in the Rust core,
cancel the upstream when the client leaves, and record usage.

    from meterkit.proxy import build_app
    app = build_app(load_config("meterkit.yaml"))

The names are loaded on first use so that stages (budgets, payments) can import the proxy's
context types without importing the whole app.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from meterkit.proxy.app import build_app, serve

__all__ = ["build_app", "serve"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from meterkit.proxy import app

        return getattr(app, name)
    raise AttributeError(name)

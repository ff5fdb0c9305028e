"""The streaming proxy: route, forward without buffering, meter every stream in the Rust core,
cancel the upstream when the client leaves, and record usage.

    app = build_app(load_config("meterkit.yaml"))
"""

from meterkit.proxy.app import build_app, serve

__all__ = ["build_app", "serve"]

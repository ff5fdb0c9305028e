"""The streaming proxy: route, forward without buffering, meter every stream in the Rust core,
cancel the upstream when the client leaves, and record usage.

    from meterkit.proxy import build_app
    app = build_app(load_config("meterkit.yaml"))

`app` assembles the stages; `lifecycle` starts and runs it as a process; `handler` serves
one request through `meterkit.pipeline`; `upstream`, `stream` and `passthrough` move the
bytes; `record` writes the usage record.
"""

from meterkit.proxy.app import build_app
from meterkit.proxy.lifecycle import serve

__all__ = ["build_app", "serve"]

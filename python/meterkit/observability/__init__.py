"""Logs and metrics of the proxy: structured JSON logs carrying the request id, and
Prometheus metrics in a registry owned by the app (no process globals)."""

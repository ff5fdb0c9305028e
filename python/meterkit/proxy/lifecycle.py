"""The proxy's process lifecycle: start the app's listener (and the admin one), run until
SIGINT/SIGTERM, re-validate the config on SIGHUP, and — as one of the processes of
`serve --workers` — report to and follow the supervising parent (proxy/workers.py)."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from meterkit.config import Config
from meterkit.proxy.app import build_app
from meterkit.proxy.appkeys import CONFIG, METRICS
from meterkit.proxy.server import (
    GatewayRunner,
    ServerLimits,
    StartupError,
    connection_cap,
    quiet_accept_errors,
)
from meterkit.runtime import serve_app

log = logging.getLogger("meterkit.proxy")


@dataclass(frozen=True)
class Worker:
    """What a worker process knows of its place: its index (0 runs the admin listener) and
    the descriptor of its socket to the parent."""

    index: int
    fd: int


def server_limits(config: Config) -> ServerLimits:
    gw = config.gateway
    cap = connection_cap(gw.max_connections)
    if gw.max_connections is not None and cap < gw.max_connections:
        log.warning(
            "gateway.max_connections lowered to what the descriptor limit allows",
            extra={"configured": gw.max_connections, "max_connections": cap},
        )
    return ServerLimits(
        header_timeout=gw.header_timeout,
        keepalive_timeout=gw.keepalive_timeout,
        max_connections=cap,
    )


async def start(
    app: web.Application, host: str, port: int, *, reuse_port: bool = False
) -> tuple[web.AppRunner, int]:
    """Start serving `app`; returns the runner and the bound port (useful with port 0).
    Raises `StartupError` when a resource does not open (a store, a data path) and
    `ListenError` when the address cannot be bound. `reuse_port`: bind with SO_REUSEPORT
    beside the other workers of `serve --workers`."""
    quiet_accept_errors(asyncio.get_running_loop())
    # handler_cancellation: aiohttp cancels a handler when its client disconnects, which is
    # how the upstream request gets aborted the moment the client leaves.
    # auto_decompress off: a metered body is decoded by the handler (proxy/request_body.py),
    # a pass-through body goes upstream as it came, with its own Content-Encoding.
    runner = GatewayRunner(
        app,
        server_limits(app[CONFIG]),
        handler_cancellation=True,
        access_log=None,
        auto_decompress=False,
    )
    try:
        # The runner's setup opens the app's resources (cleanup_ctx): a failure there is
        # the resource's, not the address's.
        await runner.setup()
    except StartupError:
        raise
    except Exception as e:
        raise StartupError(e) from e
    return await serve_app(runner, host, port, backlog=4096, reuse_port=reuse_port)


def reread(loaded: Config) -> None:
    """SIGHUP: a running proxy does not swap its config (in-memory budgets, open streams and
    stores would not survive it). It checks the file again and says whether a restart would
    start — and whether it would change anything — so an operator's reload never kills the
    process."""
    from meterkit.config import ConfigError, load_config

    source = loaded.source
    if not Path(source).is_file():
        log.warning("SIGHUP ignored: no config file to re-read", extra={"source": source})
        return
    try:
        fresh = load_config(source)
    except ConfigError as e:
        log.error(
            "SIGHUP: the config file is invalid; still running the loaded config",
            extra={"source": source, "problems": [str(p) for p in e.problems]},
        )
        return
    if fresh == loaded:
        log.warning("SIGHUP: the config file is unchanged", extra={"source": source})
        return
    log.warning(
        "SIGHUP: the config file is valid; restart to apply it (still running the loaded one)",
        extra={"source": source},
    )


def serve(
    config: Config,
    host: str | None = None,
    port: int | None = None,
    worker: Worker | None = None,
) -> None:
    """Run the proxy until SIGINT/SIGTERM. SIGHUP re-validates the config file and logs the
    result; it never stops the proxy. `worker`: one of the processes of `serve --workers`
    (SO_REUSEPORT, readiness and lifetime through the parent's socket, see proxy/workers.py)."""
    from meterkit.observability.logs import configure_logging
    from meterkit.runtime import event_loop_name, run_forever

    configure_logging(config.logging.level, config.logging.format)
    host = host or config.gateway.host
    port = config.gateway.port if port is None else port

    async def main() -> None:
        try:
            app = build_app(config)
        except Exception as e:
            raise StartupError(e) from e
        if worker is not None:
            app[METRICS].worker_info.labels(str(worker.index), str(os.getpid())).set(1)
        runner, bound = await start(app, host, port, reuse_port=worker is not None)
        where = {"url": f"http://{host}:{bound}", "loop": event_loop_name()}
        if worker is None:
            log.info("listening", extra={**where, "routes": len(config.routes)})
            print(f"meterkit serving on http://{host}:{bound}", flush=True)
        else:
            log.info("worker listening", extra={**where, "worker": worker.index})
            _report_to_parent(worker)
        admin_runner = None
        try:
            if config.admin is not None and (worker is None or worker.index == 0):
                from meterkit.proxy.admin import start_admin

                admin_runner, admin_port = await start_admin(app, config.admin)
                log.info(
                    "admin listening", extra={"url": f"http://{config.admin.host}:{admin_port}"}
                )
            await asyncio.Event().wait()
        finally:
            if admin_runner is not None:
                await admin_runner.cleanup()
            await runner.cleanup()

    # Workers leave SIGHUP to their parent (which re-validates once for all of them).
    run_forever(main(), on_hangup=(lambda: None) if worker else lambda: reread(config))


def _report_to_parent(worker: Worker) -> None:
    """Tell the parent this worker listens; stop when the parent's end closes (the parent is
    gone, even killed), as on SIGTERM."""
    sock = socket.socket(fileno=worker.fd)
    sock.sendall(b"R")
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None

    def closed() -> None:
        try:
            if sock.recv(16):
                return
        except BlockingIOError:
            return
        except OSError:
            pass
        loop.remove_reader(sock)
        log.warning("the supervisor is gone; stopping")
        task.cancel()

    loop.add_reader(sock, closed)

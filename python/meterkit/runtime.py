"""Running an asyncio entry point the way every meterkit command does: uvloop when it is
installed, clean shutdown on SIGINT/SIGTERM; and starting an aiohttp site the one way every
listener does (`serve_app`)."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from aiohttp import web


def _hangup_ignored() -> None:
    logging.getLogger("meterkit").warning("SIGHUP ignored (restart to change settings)")


class BackgroundTasks:
    """Tasks that outlive their request (usage records); shutdown waits for them."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[None]] = set()

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def __len__(self) -> int:
        return len(self._tasks)

    async def wait(self, timeout: float) -> None:
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=timeout)


def new_event_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def event_loop_name() -> str:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return "asyncio"
    return "uvloop"


class ListenError(OSError):
    """The listening address cannot be bound (taken, not an address of this machine)."""


async def serve_app(
    app: web.Application | web.AppRunner,
    host: str,
    port: int,
    *,
    backlog: int = 128,
    reuse_port: bool = False,
    what: str = "",
    **runner_options: Any,
) -> tuple[web.AppRunner, int]:
    """Serve `app` (set up here) or a runner already set up, on host:port; the runner and
    the bound port (port 0 picks one). A taken or foreign address is a `ListenError` with the errno's own words
    (asyncio's text repeats the address), after the runner was cleaned up. `what` names the
    listener in that message (" (admin)"). `runner_options` go to `web.AppRunner`."""
    from aiohttp import web

    if isinstance(app, web.AppRunner):
        runner = app
    else:
        runner = web.AppRunner(app, **runner_options)
        await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=backlog, reuse_port=reuse_port or None)
    try:
        await site.start()
    except OSError as e:
        await runner.cleanup()
        reason = (
            os.strerror(e.errno)
            if e.errno and e.errno > 0 and not isinstance(e, socket.gaierror)
            else (e.strerror or str(e))
        )
        raise ListenError(e.errno or 0, f"cannot listen on {host}:{port}{what}: {reason}") from e
    return runner, bound_port(site)


def bound_port(site: object) -> int:
    """The port an aiohttp `TCPSite` listens on (it may have been started with port 0)."""
    # asyncio's and uvloop's servers both have `sockets` (uvloop's is not an asyncio.Server).
    sockets = getattr(getattr(site, "_server", None), "sockets", None)
    if not sockets:
        raise RuntimeError("site is not listening")
    return int(sockets[0].getsockname()[1])


def run_forever(
    main: Coroutine[Any, Any, None], on_hangup: Callable[[], None] | None = None
) -> None:
    """Run `main` until it returns or the process gets SIGINT/SIGTERM (then cancel it).
    SIGHUP (whose default action would kill the process) calls `on_hangup`, or is logged
    and ignored."""
    loop = new_event_loop()
    asyncio.set_event_loop(loop)
    task = loop.create_task(main)

    def stop(sig: signal.Signals) -> None:
        # Said once, where an operator looks: the drain that follows can take a while.
        logging.getLogger("meterkit").warning(
            "%s: stopping (draining open streams and records)", sig.name
        )
        task.cancel()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop, sig)
    loop.add_signal_handler(signal.SIGHUP, on_hangup or _hangup_ignored)
    try:
        loop.run_until_complete(task)
    except asyncio.CancelledError:
        pass
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()

"""A TCP relay in front of a real server (PostgreSQL, Redis) that a test can freeze or cut,
to play a backend that stalls or goes down while the gateway keeps its connections."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator


class Relay:
    def __init__(self, host: str, port: int, *more: tuple[str, int]) -> None:
        # Several targets: each new connection goes to the next (a round-robin load
        # balancer in front of several instances).
        self.targets = [(host, port), *more]
        self._next = 0
        self.frozen = asyncio.Event()  # set: bytes stop moving (the server seems hung)
        self.down = False
        self._conns: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _pipe(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.CancelledError):
            while data := await r.read(65536):
                while self.frozen.is_set():
                    await asyncio.sleep(0.02)
                w.write(data)
                await w.drain()
        w.close()

    async def _handle(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        if self.down:
            w.close()
            return
        target = self.targets[self._next % len(self.targets)]
        self._next += 1
        ur, uw = await asyncio.open_connection(*target)
        self._conns |= {w, uw}
        await asyncio.gather(self._pipe(r, uw), self._pipe(ur, w))
        self._conns -= {w, uw}

    def cut(self) -> None:
        """Down: every connection dropped, new ones closed at once."""
        self.down = True
        for w in list(self._conns):
            w.close()

    def restore(self) -> None:
        self.down = False
        self.frozen.clear()

    async def stop(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


@contextlib.asynccontextmanager
async def relay(host: str, port: int, *more: tuple[str, int]) -> AsyncIterator[Relay]:
    r = Relay(host, port, *more)
    await r.start()
    try:
        yield r
    finally:
        await r.stop()

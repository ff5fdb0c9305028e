"""Wakes streams paused on a channel when a voucher for it is accepted — by this process,
or by another one sharing the session store — and limits vouchers that buy nothing.

One per process. A voucher accepted here wakes the channel's waiters directly; one
accepted elsewhere arrives as the store's notification (PostgreSQL) or is found by one
poll of the store per `poll_interval` while anything waits (`ChannelStore.accepted`: for
SQLite, a change counter read, nothing more, until another process wrote).

A waiter registers (`watch`) BEFORE it reads the channel and finds no credit, so a voucher
accepted while it reads still wakes it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from meterkit.sessions.store import ChannelStore

log = logging.getLogger("meterkit.sessions")

# Vouchers that buy nothing new a channel may send per second (the session specs suggest
# about 10). A voucher that raises the accepted total is never limited.
VOUCHERS_PER_SECOND = 10.0


@dataclass
class _Waiters:
    event: asyncio.Event = field(default_factory=asyncio.Event)
    count: int = 0
    # The lowest accepted total a waiter of this channel was paused at (None: not known yet).
    accepted: int | None = None


class Hub:
    def __init__(self, store: ChannelStore) -> None:
        self.store = store
        self._channels: dict[str, _Waiters] = {}
        self._bucket: dict[str, tuple[float, float]] = {}
        self._poller: asyncio.Task[None] | None = None
        self._subscribed = False
        # A channel started waiting since the last poll: read its total even if the store
        # says nothing changed (it may have changed before the channel was watched).
        self._fresh = False
        # The streams of this process running on each channel: how a close ends them.
        self._running: dict[str, dict[int, Callable[[], None]]] = {}

    # ---- streams running on a channel (ended by a close, issue 19 #4) ---------------------

    def running(self, channel_id: str, token: int, stop: Callable[[], None]) -> None:
        """A paid stream on `channel_id` started; `stop()` ends it at its next read."""
        self._running.setdefault(channel_id, {})[token] = stop

    def finished(self, channel_id: str, token: int) -> None:
        """The stream settled: what it delivered is charged and its hold given back."""
        streams = self._running.get(channel_id)
        if streams is None:
            return
        streams.pop(token, None)
        if not streams:
            del self._running[channel_id]

    def _stop_local(self, channel_id: str) -> None:
        for stop in list(self._running.get(channel_id, {}).values()):
            stop()
        self.notify(channel_id)  # a stream paused for a voucher wakes and sees the close

    async def end_streams(self, channel_id: str, timeout: float) -> int:
        """Stop the channel's streams — this process's at once, the other instances' through
        the store's notification — each ending with its format's ending at its next read (at
        once when paused); wait up to `timeout` for every hold on the channel to be settled.
        The number of streams still holding then (0: everything delivered is charged)."""
        self._stop_local(channel_id)
        await self.store.announce_close(channel_id)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            left = await self.store.holding(channel_id, time.time())
            if left == 0 or loop.time() >= deadline:
                return left
            await asyncio.sleep(0.02)

    def start(self) -> None:
        """Listen for vouchers other instances accept, from now on (call once the store is
        open, in the running loop): a PostgreSQL store's LISTEN connection is then up
        before the first stream pauses, not opened by that pause (the re-check once a
        second would otherwise be what wakes the first pause on each instance)."""
        if not self._subscribed:
            self._subscribed = True
            self.store.on_voucher(self._notice)

    def _notice(self, payload: str) -> None:
        """A notification from another instance: a voucher, or a channel being closed."""
        if payload.startswith("close:"):
            self._stop_local(payload.removeprefix("close:"))
        else:
            self.notify(payload)

    def notify(self, channel_id: str) -> None:
        w = self._channels.pop(channel_id, None)
        if w is not None:
            w.event.set()

    def watch(self, channel_id: str) -> asyncio.Event:
        """Register as a waiter of the channel; the returned event is set by the next
        voucher. Pair with `wait` (which unregisters)."""
        self.start()
        w = self._channels.setdefault(channel_id, _Waiters())
        w.count += 1
        return w.event

    async def wait(
        self, channel_id: str, event: asyncio.Event, accepted: int, timeout: float
    ) -> bool:
        """Wait (after `watch`) until a voucher above `accepted` may have landed on the
        channel (True), or `timeout` seconds (False). A wake is a hint: re-read the channel."""
        w = self._channels.get(channel_id)
        if w is not None and w.event is event:
            w.accepted = accepted if w.accepted is None else min(w.accepted, accepted)
            self._fresh = True
            if self._poller is None or self._poller.done():
                self._poller = asyncio.get_running_loop().create_task(self._poll())
        try:
            async with asyncio.timeout(timeout):
                await event.wait()
            return True
        except TimeoutError:
            return False
        finally:
            self.unwatch(channel_id, event)

    def unwatch(self, channel_id: str, event: asyncio.Event) -> None:
        w = self._channels.get(channel_id)
        if w is not None and w.event is event:
            w.count -= 1
            if w.count <= 0:
                del self._channels[channel_id]

    async def _poll(self) -> None:
        """While any channel has waiters: look for vouchers accepted by other processes."""
        while self._channels:
            await asyncio.sleep(self.store.poll_interval)
            known = {c: w.accepted for c, w in self._channels.items() if w.accepted is not None}
            fresh, self._fresh = self._fresh, False
            try:
                found = await self.store.accepted(list(known), force=fresh)
            except Exception as e:
                log.warning("session store poll failed: %s", e)
                continue
            for cid, accepted in found.items():
                if accepted > known.get(cid, accepted):
                    self.notify(cid)

    def allow_voucher(self, channel_id: str, now: float) -> bool:
        tokens, last = self._bucket.get(channel_id, (VOUCHERS_PER_SECOND, now))
        tokens = min(VOUCHERS_PER_SECOND, tokens + (now - last) * VOUCHERS_PER_SECOND)
        if tokens < 1:
            self._bucket[channel_id] = (tokens, now)
            return False
        self._bucket[channel_id] = (tokens - 1, now)
        return True

    async def close(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller

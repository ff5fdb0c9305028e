"""A paid stream's account on its channel: the prompt charged when it opens, credit held
as it goes (asking for a voucher once when it runs out), and what was delivered charged
however it ends — `PaidStream`, built by `SessionMeter` (`meterkit.sessions.meter`) for a
request it admitted. Also the session receipt, and `Completion`: what an integration's
handler returns to be relayed and metered."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterable, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from meterkit import StreamMeter
from meterkit.payments import mpp
from meterkit.payments.problems import PaymentProblem
from meterkit.problems import Rendered
from meterkit.sessions import wire
from meterkit.sessions.channels import HOLD_TOKENS, Channel, Draw, Drawn
from meterkit.sessions.hub import Hub
from meterkit.sessions.offers import SessionOffer
from meterkit.sessions.problems import ChannelNotFound, InsufficientBalance
from meterkit.sessions.store import ChannelStore

if TYPE_CHECKING:
    from meterkit.sessions.sources import ChannelSource

__all__ = ["EXHAUSTED", "Completion", "Emit", "PaidStream", "receipt", "receipt_headers"]

log = logging.getLogger("meterkit.sessions")


class Seller(Protocol):
    """What a paid stream needs of the `SessionMeter` that admitted it (declared here, so the
    stream does not reach back up into the meter's module)."""

    store: ChannelStore
    source: ChannelSource
    hub: Hub
    voucher_timeout: float
    clock: Callable[[], float]

    def event(self, name: str, method: str) -> None: ...

    def refusal(
        self,
        e: PaymentProblem,
        now: float,
        *,
        host: str | None = None,
        channel_hint: str | None = None,
    ) -> Rendered: ...


# Writes bytes to the client between two LLM events while a stream is paused.
Emit = Callable[[bytes], Awaitable[None]]

EXHAUSTED = "the session's credit is exhausted: no voucher arrived in time"


@dataclass(frozen=True)
class Completion:
    """What a handler of the integrations returns: its SSE stream and how to meter it.

    `chunks` should be lazy (an async generator): it is read only once the prompt is paid,
    so a refused request never starts the model. `prompt_tokens` is charged at
    `prompt_price` before the first byte (count it with `meterkit.count_chat_prompt`)."""

    chunks: AsyncIterable[bytes]
    format: str = "auto"
    model: str | None = None
    prompt_tokens: int = 0
    path: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)


def receipt(
    method: str, challenge_id: str, channel: Channel, now: float, tx: str | None = None
) -> dict[str, Any]:
    """A session receipt: the channel's cumulative state (never a delta)."""
    out: dict[str, Any] = {
        "method": method,
        "intent": "session",
        "status": "success",
        "timestamp": mpp.rfc3339(now),
        "reference": channel.channel_id,
        "challengeId": challenge_id,
        "channelId": channel.channel_id,
        "acceptedCumulative": str(channel.accepted),
        "spent": str(channel.spent),
        "units": channel.units,
    }
    if method == "evm":
        out["chainId"] = channel.chain_id
    if channel.finalized:
        out["settled"] = str(channel.settled)
    if tx is not None:
        out["txHash"] = tx
    return out


def receipt_headers(r: dict[str, Any]) -> dict[str, str]:
    return {"Payment-Receipt": mpp.receipt_header(r), "Cache-Control": "private"}


_HOLD_PREFIX = uuid.uuid4().hex[:16] + "-"
_HOLDS = itertools.count(1)


class PaidStream:
    """One paid request's account on its channel: `open` charges its prompt and takes its
    first hold, `relay` (or the proxy's relay, through `more_credit` and `final_receipt`)
    streams it, `settle` charges what was delivered and gives the rest of the hold back."""

    def __init__(
        self,
        meter: Seller,
        channel_id: str,
        method: str,
        challenge_id: str,
        offer: SessionOffer,
        payer: str | None = None,
    ) -> None:
        self.meter = meter
        self.channel_id = channel_id
        # The channel's payer: whose vouchers were verified (what a payer-keyed budget keys).
        self.payer = payer
        self.method = method
        self.challenge_id = challenge_id
        self.offer = offer
        self.prompt_units = 0
        # Completion tokens charged to the channel so far.
        self.charged_tokens = 0
        # This stream's hold on the channel (`sessions.channels.draw`), released at the end;
        # unique across instances sharing the store: a random prefix per process and a
        # counter (uuid4's getrandom call per stream was 1.7% of a session-paid stream's CPU).
        self.hold_id = f"{_HOLD_PREFIX}{next(_HOLDS)}"
        # Between the stream's first draw and its release.
        self.holding = False
        # Tokens the accepted vouchers cover when it opened (None: not open yet).
        self.credit: int | None = None
        # Response headers once open: the opening receipt.
        self.headers: dict[str, str] = {}
        # How `relay` ended: "completed", "truncated" (no voucher in time), "upstream_error",
        # or "client_cancelled" (the consumer stopped reading).
        self.outcome = "completed"
        self.error: str | None = None
        self.stream_meter: StreamMeter | None = None
        self.extra: dict[str, Any] = {}
        # The channel after the release draw.
        self._settled: Channel | None = None
        # Set when the channel is being closed: the stream ends at its next read. `on_stop`
        # tells whoever relays it (the proxy's stream loop).
        self.stopped = False
        self.on_stop: Callable[[], None] | None = None
        self._token = next(_HOLDS)

    def receipt(self, channel: Channel, now: float) -> dict[str, Any]:
        return receipt(self.method, self.challenge_id, channel, now, self.extra.get("txHash"))

    @property
    def spent(self) -> int:
        """What this request was charged, in base units."""
        return self.prompt_units * self.offer.prompt_price + self.charged_tokens * self.offer.price

    # ---- opening ------------------------------------------------------------------------

    async def open(self, prompt_tokens: int = 0) -> int:
        """Charge the prompt and hold credit for the first tokens: the tokens the stream
        may deliver before it asks for more (the `StreamMeter`'s `credit`). Call it once
        the request is admitted by everything else, before the model is called: a refusal
        here (`InsufficientBalance`, `ChannelNotFound`) costs nothing."""
        # An escrow's channel is read again first (a close requested on chain since the
        # credential was checked); a prepaid one is the store's row, which the draw reads.
        if (
            self.meter.source.kind != "prepaid"
            and await self.meter.source.get(self.channel_id) is None
        ):
            raise ChannelNotFound("the channel is gone", reason="channel")
        self.prompt_units = prompt_tokens
        offer = self.offer
        cost = prompt_tokens * offer.prompt_price
        # The prompt is charged before the first upstream byte, and only with room for at
        # least one token after it; the stream then holds what the vouchers cover.
        out = await self._draw(
            Draw(
                offer.price,
                upfront=cost,
                upfront_units=prompt_tokens if cost else 0,
                need=offer.price,
                want=HOLD_TOKENS * offer.price,
            )
        )
        if out is None:
            raise ChannelNotFound("the channel is gone", reason="channel")
        if out.refused:
            c = out.channel
            raise InsufficientBalance(
                f"the channel's vouchers cover {max(out.free, 0)}; this request needs at "
                f"least {cost + offer.price} (its prompt and one token): send a voucher for more",
                reason="balance",
                channelId=c.channel_id,
                requiredCumulative=str(c.spent + out.others + out.held + cost + offer.price),
                acceptedCumulative=str(c.accepted),
                deposit=str(c.deposit),
            )
        self.holding = True
        self.meter.hub.running(self.channel_id, self._token, self.stop)
        self.credit = out.granted // offer.price
        self.headers = receipt_headers(self.receipt(out.channel, self.meter.clock()))
        return self.credit

    def stop(self) -> None:
        """The channel is closing: end at the next read, with the format's ending."""
        self.stopped = True
        if self.on_stop is not None:
            self.on_stop()

    # ---- while streaming ----------------------------------------------------------------

    async def _draw(self, d: Draw) -> Drawn | None:
        out = await self.meter.store.draw(self.channel_id, self.hold_id, d, self.meter.clock())
        if out is not None and out.lost:
            log.error(
                "session tokens delivered beyond the accepted vouchers (a hold expired)",
                extra={"channel": self.channel_id, "amount": out.lost},
            )
        return out

    async def _step(self, delivered: int, *, release: bool) -> Drawn | None:
        """Charge what was delivered since the last step; then hold more, or let go."""
        new = max(delivered - self.charged_tokens, 0)
        price = self.offer.price
        out = await self._draw(
            Draw(
                price,
                charge=new * price,
                units=new,
                want=0 if release else HOLD_TOKENS * price,
                release=release,
            )
        )
        self.charged_tokens = delivered
        return out

    async def _asks(
        self, delivered: int, granted: list[int], openai: bool
    ) -> AsyncGenerator[bytes, None]:
        """The credit step as a generator: yields the ONE need-voucher event (for the caller
        to send) and returns once credit was held (`granted[0]` tokens) or none will come
        (`granted[0]` stays 0). A generator so that an async-generator relay can yield the
        event itself; `more_credit` sends it through a callback instead."""
        meter = self.meter
        hub = meter.hub
        price = self.offer.price
        deadline = time.monotonic() + meter.voucher_timeout
        asked = False
        while True:
            if self.stopped:
                return  # the channel is closing: no more credit
            # Watch first: a voucher accepted while the channel is read still wakes us.
            event = hub.watch(self.channel_id)
            watching = True
            try:
                if meter.source.kind != "prepaid":
                    await meter.source.get(self.channel_id)  # the escrow's close request
                out = await self._step(delivered, release=False)
                if out is None or out.channel.finalized or out.channel.close_requested:
                    return
                if out.granted:
                    granted[0] = out.granted // price
                    return
                wait = deadline - time.monotonic()
                if wait <= 0:
                    return
                c = out.channel
                if not asked:
                    asked = True
                    meter.event("need_voucher", self.method)
                    # Between two LLM events (the meter holds the next one back): never
                    # inside one.
                    yield wire.need_voucher_event(
                        c.channel_id,
                        c.spent + out.others + out.held + max(price, self.offer.min_delta),
                        c.accepted,
                        c.deposit,
                        openai=openai,
                    )
                watching = False  # `wait` lets go of the watch, however it ends
                if not await hub.wait(self.channel_id, event, c.accepted, wait):
                    return
            finally:
                if watching:
                    hub.unwatch(self.channel_id, event)

    async def more_credit(self, delivered: int, emit: Emit, *, openai: bool = False) -> int:
        """The meter paused before an event it has no credit for, with `delivered`
        completion tokens sent: hold what the accepted vouchers cover, else ask for a
        voucher once (`emit`) and wait for it. The tokens granted; 0: none came, end the
        stream. `openai`: the stream is an OpenAI format (the event then parses as an empty
        chunk for the SDKs)."""
        granted = [0]
        async with contextlib.aclosing(self._asks(delivered, granted, openai)) as asks:
            async for ask in asks:
                await emit(ask)
        return granted[0]

    async def settle(self, delivered: int) -> None:
        """Charge what was delivered and give back the rest of the stream's hold (once;
        later calls do nothing)."""
        if not self.holding:
            return
        self.holding = False
        # Shielded: a caller cancelled (again) while this runs — a client that left, a
        # server shutting down — must not lose the charge for what was sent.
        try:
            out = await asyncio.shield(self._step(delivered, release=True))
        finally:
            self.meter.hub.finished(self.channel_id, self._token)
        if out is not None:
            self._settled = out.channel

    async def release(self) -> None:
        """Settle for what the relay delivered (nothing, if it never started) and give the
        hold back: for a response that failed before its relay ran — a relay that starts
        settles by itself. Safe to call always."""
        meter = self.stream_meter
        await self.settle(meter.completion_tokens if meter is not None else 0)

    async def final_receipt(self, delivered: int) -> bytes:
        """Settle, then the stream's last event: `payment-receipt` for what was delivered."""
        await self.settle(delivered)
        # The channel as the release left it (one store round trip less per stream).
        channel = self._settled or await self.meter.store.get(self.channel_id)
        assert channel is not None
        return wire.receipt_event(self.receipt(channel, self.meter.clock()))

    async def begin(
        self,
        completion: Completion,
        *,
        host: str | None = None,
        channel_hint: str | None = None,
    ) -> Rendered | None:
        """`open` for a `Completion` about to be relayed: None when the stream may go on; the
        refusal, ready to send, when the channel has no credit for the prompt and one token
        — and then the completion is closed unread."""
        try:
            await self.open(completion.prompt_tokens)
        except PaymentProblem as e:
            close = getattr(completion.chunks, "aclose", None)
            if close is not None:
                await close()
            return self.meter.refusal(e, self.meter.clock(), host=host, channel_hint=channel_hint)
        return None

    # ---- the library relay ------------------------------------------------------------------

    async def _release(self, meter: StreamMeter, fed: Any) -> AsyncGenerator[bytes, None]:
        """What one meter result releases; while the meter waits for credit, more credit
        (the need-voucher event included) or the format's ending."""
        if fed.forward:
            yield fed.forward
        while fed.paused or meter.state == "paused":
            granted = [0]
            openai = (meter.format or "").startswith("openai")
            async with contextlib.aclosing(
                self._asks(meter.completion_tokens, granted, openai)
            ) as asks:
                async for ask in asks:
                    yield ask
            if granted[0] <= 0:
                self.outcome = "truncated"
                yield meter.truncate(EXHAUSTED)
                return
            fed = meter.grant(granted[0])
            if fed.forward:
                yield fed.forward
        if fed.truncated:
            self.outcome = "truncated"
        elif fed.state == "failed":
            # The meter has sent the format's error ending already.
            self.outcome, self.error = "upstream_error", "the stream broke the event size limit"

    async def relay(
        self,
        chunks: AsyncIterable[bytes],
        *,
        format: str = "auto",
        model: str | None = None,
        path: str | None = None,
        ending: str = "graceful_close",
    ) -> AsyncGenerator[bytes, None]:
        """Relay an SSE stream (the model's reads, as they come) metered and paid: what to
        send the client, in order — the stream's own bytes, ONE need-voucher event per
        pause, the format's ending when no voucher came, and the final `payment-receipt`
        event. `open` first.

        Settles however it ends — also when the consumer stops iterating (the client left;
        close it with `contextlib.aclosing` or let it be collected): it is charged the
        tokens in what was yielded, and `chunks` is closed (`aclose`) so the model stops."""
        if self.credit is None:
            raise RuntimeError("open() the paid stream before relaying it")
        meter = StreamMeter(
            format,
            model,
            path=path,
            ending=ending,
            credit=self.credit,
            prompt_tokens=self.prompt_units or None,
        )
        self.stream_meter = meter
        reads = aiter(chunks)
        try:
            while self.outcome == "completed":
                if self.stopped:
                    # The channel is closing: end properly; what was sent is charged.
                    self.outcome = "truncated"
                    yield meter.truncate("the payment channel was closed")
                    break
                try:
                    chunk = await anext(reads)
                except StopAsyncIteration:
                    break
                except Exception as e:
                    # The model's stream broke: the client gets the format's error ending and
                    # its receipt; the operator's log gets why.
                    log.warning("session stream: the upstream failed: %s", e)
                    self.outcome, self.error = "upstream_error", str(e) or type(e).__name__
                    yield meter.fail("upstream stream failed")
                    break
                async with contextlib.aclosing(self._release(meter, meter.feed(chunk))) as out:
                    async for b in out:
                        yield b
            if self.outcome == "completed":
                async with contextlib.aclosing(self._release(meter, meter.close())) as out:
                    async for b in out:
                        yield b
                if (
                    self.outcome == "completed"
                    and meter.state == "streaming"
                    and meter.format is not None
                ):
                    self.outcome = "upstream_error"
                    self.error = "the upstream closed the stream before its end"
                    yield meter.fail(self.error)
            yield await self.final_receipt(meter.completion_tokens)
        except (GeneratorExit, asyncio.CancelledError):
            self.outcome = "client_cancelled"
            raise
        finally:
            try:
                await self.settle(meter.completion_tokens)
            finally:
                close = getattr(reads, "aclose", None)
                if close is not None:
                    with contextlib.suppress(Exception):
                        await close()

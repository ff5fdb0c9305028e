"""The session stage: per-token payment over a payment channel (MPP `intent="session"`).

A request that carries a session credential either manages the channel (a POST with no
body: a new voucher, a close) and is answered 204 + `Payment-Receipt` without reaching the
upstream, or is an LLM request paid from the channel: its prompt is charged before the
upstream is called, and each streamed event's tokens are reserved against what the payer's
vouchers cover (`ctx.meter.credit`). When they run out, the stream pauses before that exact
event, sends ONE `payment-need-voucher` event, and waits for a voucher; it resumes the
moment one is accepted, or ends with the format's ending when none comes in time. The
stream ends with a `payment-receipt` event whose `spent` covers delivered tokens only.

Money state is durable before it is acted on: an accepted voucher before its 204; what was
delivered at each pause and at the end. A crash loses at most the charge for the tokens
delivered since the last pause (the operator's loss, never the payer's).

Requests without a session credential are left to the payment stage, whose 402 offers the
session challenges beside any one-time price.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from meterkit import formats
from meterkit.config import Config
from meterkit.observability.metrics import ProxyMetrics
from meterkit.payments import mpp
from meterkit.payments.problems import (
    InvalidChallenge,
    MethodUnsupported,
    PaymentExpired,
    PaymentProblem,
)
from meterkit.pipeline import Answer, RequestContext, Stage
from meterkit.pipeline.context import Emit
from meterkit.problems import Problem
from meterkit.sessions import wire
from meterkit.sessions.channels import Channel, accept
from meterkit.sessions.offers import METHODS, SessionOffer, session_challenges, session_offers
from meterkit.sessions.problems import ChannelNotFound, InsufficientBalance, TooManyVouchers
from meterkit.sessions.sources import ChannelSource, PrepaidSource
from meterkit.sessions.store import SessionStore
from meterkit.usage import UsageRecord

log = logging.getLogger("meterkit.sessions")

# Vouchers a channel may send per second (the session specs suggest about 10).
VOUCHERS_PER_SECOND = 10.0
# A request may name the channel it will pay from; the 402's session challenges then carry it
# as `methodDetails.channelId` (a client such as mppx's then reads that channel on chain and
# pays from it instead of opening one). Only a hint: the credential's own channel is checked.
CHANNEL_HINT = "Payment-Channel-Id"
_HEX32 = re.compile(r"^0x[0-9a-fA-F]{64}$")


class Hub:
    """Wakes streams paused on a channel when a voucher for it is accepted (in this process),
    and holds the credit granted to running streams but not yet charged, so two streams on
    one channel never spend the same headroom."""

    def __init__(self) -> None:
        self._events: dict[str, asyncio.Event] = {}
        self.reserved: dict[str, int] = defaultdict(int)
        self._locks: dict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._bucket: dict[str, tuple[float, float]] = {}

    def lock(self, channel_id: str) -> asyncio.Lock:
        """Held while a stream reads the channel and reserves from it."""
        return self._locks[channel_id]

    def event(self, channel_id: str) -> asyncio.Event:
        return self._events.setdefault(channel_id, asyncio.Event())

    def notify(self, channel_id: str) -> None:
        ev = self._events.pop(channel_id, None)
        if ev is not None:
            ev.set()

    def allow_voucher(self, channel_id: str, now: float) -> bool:
        tokens, last = self._bucket.get(channel_id, (VOUCHERS_PER_SECOND, now))
        tokens = min(VOUCHERS_PER_SECOND, tokens + (now - last) * VOUCHERS_PER_SECOND)
        if tokens < 1:
            self._bucket[channel_id] = (tokens, now)
            return False
        self._bucket[channel_id] = (tokens - 1, now)
        return True


@dataclass
class SessionState:
    """One paid stream's account on its channel."""

    channel_id: str
    method: str
    challenge_id: str
    offer: SessionOffer
    prompt_units: int = 0
    # Completion tokens charged to the channel so far, and granted to the meter so far.
    charged_tokens: int = 0
    granted_tokens: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


class SessionStage(Stage):
    name = "session"

    def __init__(
        self,
        config: Config,
        store: SessionStore,
        metrics: ProxyMetrics,
        source: ChannelSource | None = None,
    ) -> None:
        self.config = config
        self.store = store
        # Channels are read from the source (prepaid: the store itself; on chain: the
        # escrow, cached); the money state (accepted, spent, units) is the store's.
        self.source: ChannelSource = source or PrepaidSource(store)
        self.metrics = metrics
        self.hub = Hub()
        self.secret = (config.payments.secret or "").encode()
        self.offers = {
            r.key: session_offers(r.payment.session, config.accepts, self.source.escrow)
            for r in config.routes
            if r.payment.session is not None
        }

    @staticmethod
    def applies(route_payment: Any) -> bool:
        return route_payment.session is not None

    def _realm(self, ctx: RequestContext) -> str:
        return self.config.payments.realm or ctx.request.host.split(":")[0]

    def challenges(self, ctx: RequestContext) -> list[mpp.Challenge]:
        """The session challenges of a 402 for this request (the payment stage adds them)."""
        hint = ctx.request.headers.get(CHANNEL_HINT, "")
        return session_challenges(
            self.secret,
            self._realm(ctx),
            self.offers[ctx.route.key],
            mpp.rfc3339(time.time() + self.config.payments.expires),
            ctx.route.payment.description,
            channel_id=hint.lower() if _HEX32.match(hint) else None,
        )

    # ---- admission ----------------------------------------------------------------------

    async def on_request(self, ctx: RequestContext) -> Answer | None:
        if ctx.route.payment.session is None:
            return None
        try:
            found = mpp.request_credential(ctx.request.headers)
            if found is None:
                return None
            cred = mpp.decode_credential(found[1])
        except PaymentProblem as e:
            if ctx.route.payment.priced:
                return None  # the payment stage answers for the credential it may own
            return self._refuse(ctx, e)
        if cred.challenge.intent != "session":
            return None  # a one-time charge: the payment stage's
        ctx.state["session_credential"] = True
        try:
            return await self._session(ctx, cred, time.time())
        except PaymentProblem as e:
            return self._refuse(ctx, e)

    def _offer(self, ctx: RequestContext, ch: mpp.Challenge, now: float) -> SessionOffer:
        if not ch.bound(self.secret):
            raise InvalidChallenge(
                "the challenge id does not match its terms (not issued here, or altered)",
                reason="hmac",
            )
        if ch.method not in METHODS:
            raise MethodUnsupported(
                f"session method {ch.method!r} is not accepted", reason="method"
            )
        if ch.realm != self._realm(ctx):
            raise InvalidChallenge("the challenge was issued for another realm", reason="realm")
        expires = mpp.parse_rfc3339(ch.expires or "")
        if expires is None or expires <= now:
            raise PaymentExpired("the challenge expired; here is a fresh one", reason="expired")
        # The terms without the channel hint (bound by the challenge id like the rest).
        details = ch.request_json.get("methodDetails")
        hint = details.get("channelId") if isinstance(details, dict) else None
        offer = next(
            (
                o
                for o in self.offers[ctx.route.key]
                if o.request(hint if isinstance(hint, str) else None) == ch.request_json
            ),
            None,
        )
        if offer is None:
            raise InvalidChallenge(
                "the challenge's terms are not this route's terms now", reason="terms"
            )
        return offer

    async def _session(
        self, ctx: RequestContext, cred: mpp.Credential, now: float
    ) -> Answer | None:
        ch = cred.challenge
        offer = self._offer(ctx, ch, now)
        p = wire.parse_payload(cred.payload)
        if p.action == "topUp":
            raise MethodUnsupported(
                "this gateway's channels are prepaid: the operator credits deposits"
                if self.source.kind == "prepaid"
                else "top up on the escrow itself: a voucher above the deposit re-reads it",
                reason="top_up",
            )
        assert p.cumulative_amount is not None and p.signature is not None
        channel = await self.source.get(p.channel_id, at_least=p.cumulative_amount)
        if channel is not None and (
            channel.chain_id != offer.chain_id
            or channel.token.lower() != offer.accept.asset.address.lower()
            or channel.payee.lower() != offer.accept.pay_to.lower()
        ):
            channel = None  # a channel for another asset or payee is no channel here
        recovered = wire.recover_signer(
            ch.method, offer.chain_id, offer.escrow, p.channel_id, p.cumulative_amount, p.signature
        )
        if accept(channel, p.cumulative_amount, recovered, offer.min_delta):
            # Durable before anything is served on it.
            await self.store.accept(p.channel_id, p.cumulative_amount, p.signature)
            self.hub.notify(p.channel_id)
            self.metrics.payments.labels(ctx.route.key, "voucher", ch.method).inc()
        elif not ctx.body and not self.hub.allow_voucher(p.channel_id, now):
            # A voucher that buys nothing new, again and again (a client answering every
            # repeated need-voucher): limited. A voucher that raises the total never is.
            raise TooManyVouchers("too many vouchers on this channel; slow down", reason="rate")
        channel = await self.source.get(p.channel_id)
        assert channel is not None
        state = SessionState(p.channel_id, ch.method, ch.id, offer)
        ctx.state["session"] = state
        management = not ctx.body and ctx.request.method in ("POST", "HEAD")
        if p.action == "close":
            # Capture what was consumed, never more: max(spent, settled).
            settled = max(channel.spent, channel.settled)
            tx = await self.source.close(channel, settled)
            if tx is not None:
                state.extra["txHash"] = tx
            channel = await self.store.get(p.channel_id)
            assert channel is not None
            return self._receipt_response(state, channel)
        if management:
            return self._receipt_response(state, channel)
        # An LLM request: its prompt is charged and its credit reserved only once every stage
        # admitted it (`before_upstream`): a later refusal (a budget's 429) costs nothing.
        state.extra["open"] = True
        return None

    async def before_upstream(self, ctx: RequestContext) -> Answer | None:
        state: SessionState | None = ctx.state.get("session")
        if state is None or not state.extra.get("open"):
            return None
        channel = await self.source.get(state.channel_id)
        try:
            if channel is None:
                raise ChannelNotFound("the channel is gone", reason="channel")
            return await self._open_stream(ctx, state, channel)
        except PaymentProblem as e:
            return self._refuse(ctx, e)

    def _receipt(self, state: SessionState, channel: Channel) -> dict[str, Any]:
        out: dict[str, Any] = {
            "method": state.method,
            "intent": "session",
            "status": "success",
            "timestamp": mpp.rfc3339(time.time()),
            "reference": channel.channel_id,
            "challengeId": state.challenge_id,
            "channelId": channel.channel_id,
            "acceptedCumulative": str(channel.accepted),
            "spent": str(channel.spent),
            "units": channel.units,
        }
        if state.method == "evm":
            out["chainId"] = channel.chain_id
        if channel.finalized:
            out["settled"] = str(channel.settled)
        if "txHash" in state.extra:
            out["txHash"] = state.extra["txHash"]
        return out

    def _receipt_response(self, state: SessionState, channel: Channel) -> web.Response:
        """A management request's answer: 204 + the session receipt, no upstream call."""
        rcpt = mpp.receipt_header(self._receipt(state, channel))
        return web.Response(
            status=204, headers={"Payment-Receipt": rcpt, "Cache-Control": "private"}
        )

    async def _open_stream(
        self, ctx: RequestContext, state: SessionState, channel: Channel
    ) -> Answer | None:
        if ctx.json is not None and ctx.format is not None:
            prompt, _ = await formats.prompt_count(
                ctx.json, ctx.format, ctx.model, len(ctx.body or b"")
            )
            ctx.prompt_tokens = prompt
            state.prompt_units = prompt
        async with self.hub.lock(channel.channel_id):
            await self._reserve(ctx, state, channel.channel_id)
        return None

    async def _reserve(self, ctx: RequestContext, state: SessionState, channel_id: str) -> None:
        offer = state.offer
        channel = await self.source.get(channel_id)
        assert channel is not None
        cost = state.prompt_units * offer.prompt_price
        free = channel.available - self.hub.reserved[channel.channel_id]
        if free < cost + offer.price:
            raise InsufficientBalance(
                f"the channel's vouchers cover {max(free, 0)}; this request needs at least "
                f"{cost + offer.price} (its prompt and one token): send a voucher for more",
                reason="balance",
                channelId=channel.channel_id,
                requiredCumulative=str(channel.spent + cost + offer.price),
                acceptedCumulative=str(channel.accepted),
                deposit=str(channel.deposit),
            )
        # The prompt is charged before the first upstream byte.
        if cost and not await self.store.charge(channel.channel_id, cost, state.prompt_units):
            raise InsufficientBalance("the channel's credit was spent meanwhile", reason="race")
        tokens = (free - cost) // offer.price
        state.granted_tokens = tokens
        self.hub.reserved[channel.channel_id] += tokens * offer.price
        ctx.meter.credit = tokens
        ctx.credit_source = lambda emit: self._more_credit(ctx, state, emit)
        ctx.credit_kind = "payment"
        ctx.stream_trailer = lambda: self._final_receipt(ctx, state)
        channel = await self.store.get(channel.channel_id) or channel
        ctx.response_headers["Payment-Receipt"] = mpp.receipt_header(self._receipt(state, channel))
        ctx.response_headers["Cache-Control"] = "private"

    # ---- while streaming ------------------------------------------------------------------

    def _delivered(self, ctx: RequestContext) -> int:
        meter = ctx.result.meter
        return meter.completion_tokens if meter is not None else 0

    async def _charge_delivered(self, ctx: RequestContext, state: SessionState) -> None:
        """Make what was delivered so far durable as spent, and release its reservation."""
        delivered = self._delivered(ctx)
        new = delivered - state.charged_tokens
        if new <= 0:
            return
        amount = new * state.offer.price
        if not await self.store.charge(state.channel_id, amount, new):
            log.error(
                "session charge beyond the accepted vouchers",
                extra={"channel": state.channel_id, "amount": amount},
            )
        state.charged_tokens = delivered
        self.hub.reserved[state.channel_id] -= amount

    async def _more_credit(self, ctx: RequestContext, state: SessionState, emit: Emit) -> int:
        """The meter paused before an event it has no credit for: grant what the accepted
        vouchers cover, else ask for a voucher once and wait for it (0: none came)."""
        timeout = ctx.route.payment.session.voucher_timeout  # type: ignore[union-attr]
        deadline = time.monotonic() + timeout
        price = state.offer.price
        asked = False
        while True:
            # The event first: a voucher accepted while the channel is read still wakes us.
            event = self.hub.event(state.channel_id)
            async with self.hub.lock(state.channel_id):
                await self._charge_delivered(ctx, state)
                channel = await self.source.get(state.channel_id)
                if channel is None or channel.finalized or channel.close_requested:
                    return 0
                reserved = self.hub.reserved[state.channel_id]
                more = (channel.available - reserved) // price
                if more > 0:
                    state.granted_tokens += more
                    self.hub.reserved[state.channel_id] += more * price
                    return more
            wait = deadline - time.monotonic()
            if wait <= 0:
                return 0
            if not asked:
                # Between two LLM events (the meter holds the next one back): never inside one.
                await emit(
                    wire.need_voucher_event(
                        state.channel_id,
                        channel.spent + reserved + max(price, state.offer.min_delta),
                        channel.accepted,
                        channel.deposit,
                        openai=(ctx.format or "").startswith("openai"),
                    )
                )
                asked = True
                self.metrics.payments.labels(ctx.route.key, "need_voucher", state.method).inc()
            try:
                async with asyncio.timeout(wait):
                    await event.wait()
            except TimeoutError:
                return 0

    async def _final_receipt(self, ctx: RequestContext, state: SessionState) -> bytes:
        await self._settle_stream(ctx, state)
        channel = await self.store.get(state.channel_id)
        assert channel is not None
        state.extra["final"] = True
        return wire.receipt_event(self._receipt(state, channel))

    async def _settle_stream(self, ctx: RequestContext, state: SessionState) -> None:
        """Charge what was delivered and give back what was granted and not used."""
        await self._charge_delivered(ctx, state)
        unused = (state.granted_tokens - state.charged_tokens) * state.offer.price
        if unused > 0:
            self.hub.reserved[state.channel_id] -= unused
        state.granted_tokens = state.charged_tokens

    # ---- the end ---------------------------------------------------------------------------

    async def on_complete(self, ctx: RequestContext, record: UsageRecord) -> None:
        state: SessionState | None = ctx.state.get("session")
        if state is None:
            return
        # A client that left is charged up to the last event it was sent.
        await self._settle_stream(ctx, state)
        self._record(ctx, state, record)

    async def on_abort(self, ctx: RequestContext, record: UsageRecord) -> None:
        state: SessionState | None = ctx.state.get("session")
        if state is None:
            return
        await self._settle_stream(ctx, state)
        self._record(ctx, state, record)

    def _record(self, ctx: RequestContext, state: SessionState, record: UsageRecord) -> None:
        record.payment = {
            "protocol": f"mpp-session-{state.method}",
            "channel": state.channel_id,
            "prompt_units": state.prompt_units,
            "completion_units": state.charged_tokens,
            "price": str(state.offer.price),
            "spent": str(
                state.prompt_units * state.offer.prompt_price
                + state.charged_tokens * state.offer.price
            ),
        }

    def _refuse(self, ctx: RequestContext, e: PaymentProblem) -> Problem:
        self.metrics.payments.labels(ctx.route.key, "rejected", e.reason).inc()
        headers: list[tuple[str, str]] = []
        if e.fresh_challenge:
            headers = [("WWW-Authenticate", c.header()) for c in self.challenges(ctx)]
        if e.retry_after is not None:
            headers.append(("Retry-After", str(e.retry_after)))
        return Problem(
            e.status,
            e.code,
            e.title,
            e.detail,
            type_base=e.type_base,
            extra=dict(e.extra),
            headers=tuple(headers),
            reason=e.reason,
        )

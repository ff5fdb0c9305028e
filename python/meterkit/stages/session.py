"""The session stage: per-token payment over a payment channel (MPP `intent="session"`).

A request that carries a session credential either manages the channel (a POST with no
body: a new voucher, a close) and is answered 204 + `Payment-Receipt` without reaching the
upstream, or is an LLM request paid from the channel: its prompt is charged before the
upstream is called, and each streamed event's tokens are reserved against what the payer's
vouchers cover (`ctx.meter.credit`, from the stream's hold on the channel in the session
store, so concurrent streams on any instance never spend the same credit). When they run out, the stream pauses before that exact
event, sends ONE `payment-need-voucher` event, and waits for a voucher; it resumes the
moment one is accepted (on any instance sharing the store), or ends with the format's ending when none comes in time. The
stream ends with a `payment-receipt` event whose `spent` covers delivered tokens only.

Money state is durable before it is acted on: an accepted voucher before its 204; what was
delivered at each pause, every `HOLD_TOKENS` tokens and at the end. A crash loses at most
the charge for the tokens delivered since the last of those (the operator's loss, never the
payer's); the dead stream's hold frees itself when its lease ends.

Requests without a session credential are left to the payment stage, whose 402 offers the
session challenges beside any one-time price.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from dataclasses import dataclass, field, replace
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
from meterkit.sessions.channels import HOLD_TOKENS, Channel, Draw, Drawn, accept
from meterkit.sessions.hub import Hub
from meterkit.sessions.offers import METHODS, SessionOffer, session_challenges, session_offers
from meterkit.sessions.problems import ChannelNotFound, InsufficientBalance, TooManyVouchers
from meterkit.sessions.sources import ChannelSource, PrepaidSource
from meterkit.sessions.store import ChannelStore
from meterkit.usage import UsageRecord

log = logging.getLogger("meterkit.sessions")

# A request may name the channel it will pay from; the 402's session challenges then carry it
# as `methodDetails.channelId` (a client such as mppx's then reads that channel on chain and
# pays from it instead of opening one). Only a hint: the credential's own channel is checked.
CHANNEL_HINT = "Payment-Channel-Id"
_HEX32 = re.compile(r"^0x[0-9a-fA-F]{64}$")


@dataclass
class SessionState:
    """One paid stream's account on its channel."""

    channel_id: str
    method: str
    challenge_id: str
    offer: SessionOffer
    prompt_units: int = 0
    # Completion tokens charged to the channel so far.
    charged_tokens: int = 0
    # This stream's hold on the channel (`sessions.channels.draw`), released at the end.
    hold_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    # Between the stream's first draw and its release.
    holding: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


class SessionStage(Stage):
    name = "session"

    def __init__(
        self,
        config: Config,
        store: ChannelStore,
        metrics: ProxyMetrics,
        source: ChannelSource | None = None,
    ) -> None:
        self.config = config
        self.store = store
        # Channels are read from the source (prepaid: the store itself; on chain: the
        # escrow, cached); the money state (accepted, spent, units) is the store's.
        self.source: ChannelSource = source or PrepaidSource(store)
        self.metrics = metrics
        self.hub = Hub(store)
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
            assert channel is not None
            # Durable before anything is served on it.
            if await self.store.accept(p.channel_id, p.cumulative_amount, p.signature):
                channel = replace(channel, accepted=p.cumulative_amount, signature=p.signature)
            else:  # a higher voucher landed meanwhile
                channel = await self.source.get(p.channel_id)
            self.hub.notify(p.channel_id)
            self.metrics.payments.labels(ctx.route.key, "voucher", ch.method).inc()
        elif not ctx.body and not self.hub.allow_voucher(p.channel_id, now):
            # A voucher that buys nothing new, again and again (a client answering every
            # repeated need-voucher): limited. A voucher that raises the total never is.
            raise TooManyVouchers("too many vouchers on this channel; slow down", reason="rate")
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
        offer = state.offer
        cost = state.prompt_units * offer.prompt_price
        # The prompt is charged before the first upstream byte, and only with room for at
        # least one token after it; the stream then holds what the vouchers cover.
        out = await self._draw(
            state,
            Draw(
                offer.price,
                upfront=cost,
                upfront_units=state.prompt_units if cost else 0,
                need=offer.price,
                want=HOLD_TOKENS * offer.price,
            ),
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
        state.holding = True
        ctx.meter.credit = out.granted // offer.price
        ctx.credit_source = lambda emit: self._more_credit(ctx, state, emit)
        ctx.credit_kind = "payment"
        ctx.stream_trailer = lambda: self._final_receipt(ctx, state)
        ctx.response_headers["Payment-Receipt"] = mpp.receipt_header(
            self._receipt(state, out.channel)
        )
        ctx.response_headers["Cache-Control"] = "private"
        return None

    # ---- while streaming ------------------------------------------------------------------

    def _delivered(self, ctx: RequestContext) -> int:
        meter = ctx.result.meter
        return meter.completion_tokens if meter is not None else 0

    async def _draw(self, state: SessionState, d: Draw) -> Drawn | None:
        out = await self.store.draw(state.channel_id, state.hold_id, d, time.time())
        if out is not None and out.lost:
            log.error(
                "session tokens delivered beyond the accepted vouchers (a hold expired)",
                extra={"channel": state.channel_id, "amount": out.lost},
            )
        return out

    async def _step(
        self, ctx: RequestContext, state: SessionState, *, release: bool
    ) -> Drawn | None:
        """Charge what was delivered since the last step; then hold more, or let go."""
        delivered = self._delivered(ctx)
        new = max(delivered - state.charged_tokens, 0)
        price = state.offer.price
        out = await self._draw(
            state,
            Draw(
                price,
                charge=new * price,
                units=new,
                want=0 if release else HOLD_TOKENS * price,
                release=release,
            ),
        )
        state.charged_tokens = delivered
        return out

    async def _more_credit(self, ctx: RequestContext, state: SessionState, emit: Emit) -> int:
        """The meter paused before an event it has no credit for: hold what the accepted
        vouchers cover, else ask for a voucher once and wait for it (0: none came)."""
        timeout = ctx.route.payment.session.voucher_timeout  # type: ignore[union-attr]
        deadline = time.monotonic() + timeout
        offer = state.offer
        asked = False
        while True:
            # Watch first: a voucher accepted while the channel is read still wakes us.
            event = self.hub.watch(state.channel_id)
            if self.source.kind != "prepaid":
                await self.source.get(state.channel_id)  # the escrow's close request, if any
            out = await self._step(ctx, state, release=False)
            if out is None or out.channel.finalized or out.channel.close_requested:
                self.hub.unwatch(state.channel_id, event)
                return 0
            if out.granted:
                self.hub.unwatch(state.channel_id, event)
                return out.granted // offer.price
            wait = deadline - time.monotonic()
            if wait <= 0:
                self.hub.unwatch(state.channel_id, event)
                return 0
            c = out.channel
            if not asked:
                # Between two LLM events (the meter holds the next one back): never inside one.
                await emit(
                    wire.need_voucher_event(
                        c.channel_id,
                        c.spent + out.others + out.held + max(offer.price, offer.min_delta),
                        c.accepted,
                        c.deposit,
                        openai=(ctx.format or "").startswith("openai"),
                    )
                )
                asked = True
                self.metrics.payments.labels(ctx.route.key, "need_voucher", state.method).inc()
            if not await self.hub.wait(state.channel_id, event, c.accepted, wait):
                return 0

    async def _final_receipt(self, ctx: RequestContext, state: SessionState) -> bytes:
        await self._settle_stream(ctx, state)
        channel = await self.store.get(state.channel_id)
        assert channel is not None
        state.extra["final"] = True
        return wire.receipt_event(self._receipt(state, channel))

    async def _settle_stream(self, ctx: RequestContext, state: SessionState) -> None:
        """Charge what was delivered and give back the rest of the stream's hold."""
        if not state.holding:
            return
        state.holding = False
        await self._step(ctx, state, release=True)

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

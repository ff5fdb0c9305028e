"""The session stage: per-token payment over a payment channel (MPP `intent="session"`).

A request that carries a session credential either manages the channel (a POST with no
body: a new voucher, a top-up, a close) and is answered 204 + `Payment-Receipt` without
reaching the upstream, or is an LLM request paid from the channel: its prompt is charged
before the upstream is called, and each streamed event's tokens are reserved against what
the payer's vouchers cover (the stream's `payment` gate in `ctx.gates`, fed from its hold on
the channel in the session store, so concurrent streams on any instance never spend the same
credit; a budget's gate on the same route applies beside it, whichever is smaller). When
they run out, the stream pauses before that exact event, sends ONE `payment-need-voucher`
event, and waits for a voucher; it resumes the moment one is accepted (on any instance
sharing the store), or ends with the format's ending when none comes in time. The stream
ends with a `payment-receipt` event whose `spent` covers delivered tokens only.

Money state is durable before it is acted on: an accepted voucher before its 204; what was
delivered at each pause, every `HOLD_TOKENS` tokens and at the end. A crash loses at most
the charge for the tokens delivered since the last of those (the operator's loss, never the
payer's); the dead stream's hold frees itself when its lease ends.

Requests without a session credential are left to the payment stage, whose 402 offers the
session challenges beside any one-time price.

What it hands the others: `ctx.payment.session_credential` (the payment stage leaves the
request alone), `ctx.payment.session` (the paid stream) and `ctx.identity.payer` (the
channel's payer, for a payer-keyed budget). Operator hooks: `onError` when a voucher is
refused, `onSettled` with the session receipt when a paid stream ends or a channel closes.

The money logic — offers, voucher checks, the prompt charge, more credit, receipts, settling
— is `meterkit.sessions.meter` (one `SessionMeter` per session route, sharing the store, the
source and the hub), the same core an aiohttp or Starlette app uses without the proxy; this
stage only ties it to the pipeline: the request context, the metrics, the usage record.
"""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from meterkit import formats
from meterkit.config import Config
from meterkit.observability.metrics import ProxyMetrics
from meterkit.payments import mpp
from meterkit.payments.hooks import RouteHooks
from meterkit.payments.problems import PaymentProblem
from meterkit.pipeline import Answer, RequestContext, Stage
from meterkit.problems import Problem
from meterkit.sessions.hub import Hub
from meterkit.sessions.meter import (
    CHANNEL_HINT,
    EventHook,
    Receipted,
    SessionMeter,
)
from meterkit.sessions.offers import SessionOffer
from meterkit.sessions.sources import ChannelSource, PrepaidSource
from meterkit.sessions.store import ChannelStore
from meterkit.sessions.stream import PaidStream
from meterkit.usage import UsageRecord

__all__ = ["CHANNEL_HINT", "SessionStage"]


class SessionStage(Stage):
    name = "session"

    def __init__(
        self,
        config: Config,
        store: ChannelStore,
        metrics: ProxyMetrics,
        source: ChannelSource | None = None,
        hooks: RouteHooks | None = None,
    ) -> None:
        self.config = config
        self.hooks = hooks if hooks is not None else RouteHooks(())
        self.store = store
        # Channels are read from the source (prepaid: the store itself; on chain: the
        # escrow, cached); the money state (accepted, spent, units) is the store's.
        self.source: ChannelSource = source or PrepaidSource(store)
        self.metrics = metrics
        # One hub per process: a voucher on any route's URL wakes the channel's streams.
        self.hub = Hub(store)
        self.meters: dict[str, SessionMeter] = {}
        for r in config.routes:
            terms = r.payment.session
            if terms is None:
                continue
            self.meters[r.key] = SessionMeter.from_terms(
                store,
                terms,
                config.accepts,
                secret=config.payments.secret or "",
                source=self.source,
                hub=self.hub,
                # None: the request's host, as the payment stage's challenges.
                realm=config.payments.realm,
                expires=config.payments.expires,
                description=r.payment.description,
                on_event=self._counter(r.key),
                credential_header=r.payment.credential_header,
            )

    def _counter(self, route: str) -> EventHook:
        """The meter's events as this route's payment metrics."""

        def count(event: str, method: str) -> None:
            self.metrics.payments.labels(route, event, method).inc()

        return count

    @property
    def offers(self) -> dict[str, list[SessionOffer]]:
        return {key: m.offers for key, m in self.meters.items()}

    @staticmethod
    def applies(route_payment: Any) -> bool:
        return route_payment.session is not None

    @staticmethod
    def _host(ctx: RequestContext) -> str:
        return ctx.request.host.split(":")[0]

    def challenges(self, ctx: RequestContext) -> list[mpp.Challenge]:
        """The session challenges of a 402 for this request (the payment stage adds them)."""
        return self.meters[ctx.route.key].challenges(
            time.time(),
            host=self._host(ctx),
            channel_hint=ctx.request.headers.get(CHANNEL_HINT),
        )

    # ---- admission ----------------------------------------------------------------------

    async def on_request(self, ctx: RequestContext) -> Answer | None:
        if ctx.route.payment.session is None:
            return None
        meter = self.meters[ctx.route.key]
        try:
            found = mpp.request_credential(ctx.request.headers)
            if found is None:
                return None
            cred = mpp.decode_credential(found[1])
        except PaymentProblem as e:
            if ctx.route.payment.priced:
                return None  # the payment stage answers for the credential it may own
            return await self._refuse(ctx, e)
        if cred.challenge.intent != "session":
            return None  # a one-time charge: the payment stage's
        ctx.payment.session_credential = True
        try:
            admitted = await meter.admit_credential(
                cred,
                method=ctx.request.method,
                has_body=bool(ctx.body),
                now=time.time(),
                host=self._host(ctx),
                field=found[0],
            )
        except PaymentProblem as e:
            return await self._refuse(ctx, e)
        account = admitted.account if isinstance(admitted, Receipted) else admitted
        ctx.identity.payer = account.payer
        if isinstance(admitted, Receipted):
            # A management request: 204 + the session receipt, no upstream call.
            ctx.state["session"] = admitted.account
            if "settled" in admitted.receipt:
                # A close: the channel's books are settled.
                await self.hooks.fire(ctx, "onSettled", admitted.receipt)
            return web.Response(status=admitted.status, headers=admitted.headers)
        # An LLM request: its prompt is charged and its credit reserved only once every stage
        # admitted it (`before_upstream`): a later refusal (a budget's 429) costs nothing.
        ctx.payment.session = admitted
        return None

    async def before_upstream(self, ctx: RequestContext) -> Answer | None:
        paid = ctx.payment.session
        if paid is None:
            return None
        try:
            prompt = 0
            if ctx.json is not None and ctx.format is not None:
                prompt, _ = await formats.prompt_count(
                    ctx.json, ctx.format, ctx.model, len(ctx.body or b"")
                )
                ctx.prompt_tokens = prompt
            credit = await paid.open(prompt)
        except PaymentProblem as e:
            return await self._refuse(ctx, e)
        openai = (ctx.format or "").startswith("openai")
        ctx.gates.add(
            "payment",
            credit,
            lambda delivered, emit: paid.more_credit(delivered, emit, openai=openai),
        )
        ctx.trailers.append(lambda: paid.final_receipt(self._delivered(ctx)))
        paid.on_stop = lambda: ctx.gates.stop("payment")
        ctx.response_headers.update(paid.headers)
        return None

    @staticmethod
    def _delivered(ctx: RequestContext) -> int:
        meter = ctx.result.meter
        return meter.completion_tokens if meter is not None else 0

    # ---- the end ---------------------------------------------------------------------------

    async def on_complete(self, ctx: RequestContext, record: UsageRecord) -> None:
        await self._end(ctx, record)

    async def on_abort(self, ctx: RequestContext, record: UsageRecord) -> None:
        await self._end(ctx, record)

    async def _end(self, ctx: RequestContext, record: UsageRecord) -> None:
        # A paid stream, or the channel a voucher / top-up / close was about (nothing charged).
        paid: PaidStream | None = ctx.payment.session or ctx.state.get("session")
        if paid is None:
            return
        # A client that left is charged up to the last event it was sent.
        await paid.settle(self._delivered(ctx))
        asset = paid.offer.accept.asset
        # The same keys as a one-time payment's section (protocol, payer, amount, asset,
        # settled), so the books read both alike: `amount` is what the channel was charged
        # for this request, in the asset's base units.
        record.payment = {
            "protocol": f"mpp-session-{paid.method}",
            "payer": paid.payer,
            "amount": str(paid.spent),
            "asset": asset.address,
            "settled": paid.spent > 0,
            "channel": paid.channel_id,
            "prompt_units": paid.prompt_units,
            "completion_units": paid.charged_tokens,
            "price": str(paid.offer.price),
            "spent": str(paid.spent),
        }
        if paid.credit is not None and self.hooks.has(ctx.route):
            # The stream's books are closed: its receipt, with what this request paid.
            channel = await paid.meter.store.get(paid.channel_id)
            if channel is not None:
                rcpt = {**paid.receipt(channel, time.time()), "amount": str(paid.spent)}
                await self.hooks.fire(ctx, "onSettled", rcpt)

    async def _refuse(self, ctx: RequestContext, e: PaymentProblem) -> Problem:
        self.metrics.payments.labels(ctx.route.key, "rejected", e.reason).inc()
        await self.hooks.fire(ctx, "onError", e)
        return self.meters[ctx.route.key].problem(
            e,
            time.time(),
            host=self._host(ctx),
            channel_hint=ctx.request.headers.get(CHANNEL_HINT),
        )

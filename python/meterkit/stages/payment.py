"""The payment stage: price a request, answer 402 with every configured way to pay, verify a
credential (MPP `Payment` / x402 v1 / x402 v2), claim its authorization durably, and settle
it at the route's moment. Verification happens at admission; the claim (the first durable
step towards moving money) only once every stage has admitted the request.

What it hands the other stages (`ctx.payment`, `ctx.identity`, `ctx.caps`): the quote; for a
token-based quote, the completion tokens paid for up front, which become an enforced cap
(the upstream is asked for no more, and the stream is cut there) and which a budget on the
same route reserves whole before the claim; the verified payer. The quote itself prices at
most the smallest cap the stages before it declared (a budget's `max_completion_tokens`).

Operator hooks (docs/hooks.md) are `RouteHooks`: this stage fires `onPriceResolved`, and
`onSettled` / `onError` for one-time payments; the hook stage fires the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import secrets
import socket
import sqlite3
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

import orjson

from meterkit.config import Config, Route
from meterkit.observability.metrics import ProxyMetrics
from meterkit.payments import access, claims, evm, mpp, receipts, x402
from meterkit.payments.batch import reconcile as reconcile_onchain
from meterkit.payments.hooks import RouteHooks
from meterkit.payments.ledger import Claim, Ledger
from meterkit.payments.offers import (
    ChallengeTerms,
    Offer,
    make_offers,
    refusal,
    request_scope,
)
from meterkit.payments.onchain import OnchainSettler
from meterkit.payments.pricing import Quote, quote
from meterkit.payments.problems import (
    LedgerUnavailable,
    PaymentExpired,
    PaymentProblem,
    PaymentRequired,
    SettlementUnknown,
)
from meterkit.payments.settlement import (
    FacilitatorSettler,
    SettlementFailed,
    SettlementRequest,
    Settler,
)
from meterkit.payments.verify import Verified, authorization_of, verify_mpp, verify_x402
from meterkit.pipeline import Answer, RequestContext, Stage
from meterkit.problems import Problem, ProxyError
from meterkit.usage import UsageRecord

log = logging.getLogger("meterkit.payments")

STATUS_HEADER = "X-Payment-Status"

T = TypeVar("T")


class _Outage:
    """Logs a backend outage once when it starts and once when it ends, not per request."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.down = False

    def failed(self, e: BaseException) -> None:
        if not self.down:
            self.down = True
            log.error("%s unavailable: %s", self.what, e or type(e).__name__)

    def ok(self) -> None:
        if self.down:
            self.down = False
            log.warning("%s available again", self.what)


@dataclass
class PaymentState:
    quote: Quote
    offers: list[Offer]
    terms: ChallengeTerms
    verified: Verified | None = None
    claim_key: str | None = None
    settled: bool = False
    pending: bool = False
    reference: str | None = None
    receipt: dict[str, Any] | None = None
    skipped: str | None = None
    # Serving again a request that was paid for and never delivered (no new charge).
    redelivery: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


class PaymentStage(Stage):
    name = "payment"

    def __init__(
        self,
        config: Config,
        ledger: Ledger,
        settler: Settler,
        metrics: ProxyMetrics,
        base_dir: Path | None = None,
        hooks: RouteHooks | None = None,
    ) -> None:
        self.config = config
        self.pay = config.payments
        self.ledger = ledger
        self.settler = settler
        self.metrics = metrics
        self.secret = (self.pay.secret or "").encode()
        self.access_secret = (self.pay.access_secret or self.pay.secret or "").encode()
        self.ledger_outage = _Outage("payment ledger")
        # The session challenges of a route paid per token, offered in the same 402 (set by
        # the app when it has a session stage).
        self.session_challenges: Callable[[RequestContext], list[mpp.Challenge]] | None = None
        self.hooks = hooks if hooks is not None else RouteHooks(config.routes, base_dir)
        # This process, as the ledger knows it: its claims are its own while its lease runs.
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self._lease_task: asyncio.Task[None] | None = None
        self.lease_outage = _Outage("payment ledger lease")

    @staticmethod
    def applies(route_payment: Any) -> bool:
        return bool(
            route_payment.priced
            or route_payment.require_access
            or route_payment.mint_access_ttl
            or route_payment.session
        )

    def applies_to(self, route: Route) -> bool:
        # Otherwise every hook finds no hook, no state, nothing to do.
        return self.applies(route.payment)

    def _realm(self, ctx: RequestContext) -> str:
        return self.pay.realm or ctx.request.host.split(":")[0]

    async def _ledger(self, call: Awaitable[T]) -> T:
        """A ledger call on the request path: bounded, and a 503 (logged once per outage)
        when the ledger is slow or down, never a hang or a 500."""
        try:
            async with asyncio.timeout(self.config.ledger.timeout):
                out = await call
        except (TimeoutError, OSError, sqlite3.Error) as e:
            self.ledger_outage.failed(e)
            raise LedgerUnavailable("the payment ledger is not answering; retry shortly") from e
        except Exception as e:
            # asyncpg's errors (connection lost, server shutting down) share no base class
            # with the stdlib's: anything the driver raises is an outage, not a bug.
            if type(e).__module__.startswith("asyncpg"):
                self.ledger_outage.failed(e)
                raise LedgerUnavailable("the payment ledger is not answering; retry shortly") from e
            raise
        self.ledger_outage.ok()
        return out

    async def _hook(self, ctx: RequestContext, name: str, *args: Any) -> Any:
        return await self.hooks.fire(ctx, name, *args)

    # ---- admission: price and verify (nothing durable yet) -----------------------------

    async def on_request(self, ctx: RequestContext) -> Answer | None:
        rp = ctx.route.payment
        if not self.applies(rp):
            return None
        if rp.require_access:
            try:
                grant = access.check(
                    self.access_secret,
                    ctx.request.headers.get(access.HEADER),
                    scope=rp.access_scope,
                )
            except access.AccessDenied as e:
                raise ProxyError(
                    401,
                    "access-token-required",
                    "Access token required",
                    e.detail,
                    reason=e.reason,
                    header=access.HEADER,
                ) from None
            ctx.state["access"] = grant
        if ctx.payment.session_credential:
            return None  # paid per token: the session stage's
        if not rp.priced:
            if rp.session is None:
                return None
            return self._session_only(ctx)
        try:
            q = quote(rp, ctx.json, ctx.format, ctx.model, cap=ctx.caps.limit)
        except PaymentProblem as e:
            raise ProxyError(e.status, e.code, e.title, e.detail) from None
        replaced = await self._hook(ctx, "onPriceResolved", q)
        if isinstance(replaced, Quote):
            q = replaced
        elif isinstance(replaced, Decimal):
            q = Quote(replaced, "hook", q.model, q.prompt_tokens, q.max_completion_tokens)
        ctx.payment.quote = q
        if q.basis == "token-based" and q.max_completion_tokens is not None:
            # Paid up front, granted up front: the upstream is asked for no more and the
            # stream is cut there (an upstream that ignores the request's cap gives nothing
            # away), and a budget on the route reserves all of it or refuses before the claim.
            ctx.payment.prepaid_completion = q.max_completion_tokens
            ctx.caps.add("payment", q.max_completion_tokens)
        req = ctx.request
        scope = request_scope(req.method, ctx.route.pattern, req.path, req.query_string)
        state = PaymentState(
            q,
            make_offers(q.price, self.config.accepts, scope),
            ChallengeTerms(
                secret=self.secret,
                realm=self._realm(ctx),
                digest=mpp.body_digest(ctx.body) if ctx.body else None,
                resource=f"{req.scheme}://{req.host}{req.path_qs}",
                description=rp.description or f"{req.method} {req.path}",
                expires=self.pay.expires,
                protocols=tuple(self.pay.protocols),
                header=mpp.advertised_header(rp.credential_header),
            ),
        )
        ctx.state["payment"] = state
        try:
            verified = self._read_credential(ctx, state, time.time())
            if verified is None:
                raise PaymentRequired("this route requires payment", reason="no_credential")
        except PaymentProblem as e:
            paid = await self._paid_before(ctx, state) if _expired(e) else None
            if paid is None:
                return await self._refuse(ctx, state, e)
            verified = paid
        state.verified = verified
        ctx.identity.payer = verified.payer
        return None

    def _read_credential(
        self, ctx: RequestContext, state: PaymentState, now: float
    ) -> Verified | None:
        headers = ctx.request.headers
        protocols = self.pay.protocols
        found = mpp.request_credential(headers) if "mpp" in protocols else None
        if found is not None:
            field, token = found
            return verify_mpp(
                token,
                state.offers,
                field=field,
                secret=self.secret,
                realm=state.terms.realm,
                digest=state.terms.digest,
                now=now,
                max_validity=self.pay.max_validity,
            )
        for name in ("PAYMENT-SIGNATURE", "X-PAYMENT"):
            value = headers.get(name)
            if value is not None and "x402" in protocols:
                return verify_x402(
                    name, value, state.offers, now=now, max_validity=self.pay.max_validity
                )
        return None

    async def _paid_before(self, ctx: RequestContext, state: PaymentState) -> Verified | None:
        """A credential that expired since it paid for a request whose response never
        reached the client: the settled claim is proof enough (issue 19 #1: a payer
        charged when the gateway died got 403 for 10 minutes, then 402 "expired"). It is
        verified as it was when it was claimed, and must be the authorization that paid;
        the claim step then serves it once more without a second charge (or refuses it,
        if it was delivered meanwhile)."""
        headers = ctx.request.headers
        found = mpp.request_credential(headers) if "mpp" in self.pay.protocols else None
        if found is None:
            found = next(
                ((n, v) for n in ("PAYMENT-SIGNATURE", "X-PAYMENT") if (v := headers.get(n))),
                None,
            )
        read = authorization_of(*found, state.offers) if found is not None else None
        if read is None:
            return None
        auth, offer = read
        existing = await self._ledger(
            self.ledger.get_claim(evm.claim_key(auth, offer.accept.asset))
        )
        if (
            existing is None
            or existing.status not in claims.PAID
            or existing.delivery == "delivered"
            or orjson.loads(existing.authorization_json).get("signature", "").lower()
            != (auth.signature or "").lower()
        ):
            return None
        try:
            return self._read_credential(ctx, state, existing.created_at)
        except PaymentProblem:
            return None

    # ---- commit: claim, then settle now or after the upstream answered -----------------

    async def before_upstream(self, ctx: RequestContext) -> Answer | None:
        """Every stage admitted the request: claim the authorization, then settle now
        (before-response), or verify with the settler and hold the claim until the upstream
        answers (after-response)."""
        state: PaymentState | None = ctx.state.get("payment")
        if state is None or state.verified is None:
            return None
        try:
            await self._claim(ctx, state, state.verified)
            if state.settled:
                return None  # a redelivery: paid already
            if ctx.route.payment.settlement == "after-response":
                await self.settler.verify(self._settlement_request(state))
                state.pending = True
            else:
                await self._settle(ctx, state)
        except PaymentProblem as e:
            if not isinstance(e, SettlementUnknown):
                await self._release(state, str(e))
            return await self._refuse(ctx, state, e)
        return None

    async def _claim(self, ctx: RequestContext, state: PaymentState, v: Verified) -> None:
        taken = await claims.take(
            self.ledger,
            claims.new_claim(v, ctx.route.key, ctx.request_id, self.holder),
            call=self._ledger,
            recover=self._recover,
            reconcile=self._reconcile
            if isinstance(self.settler, OnchainSettler | FacilitatorSettler)
            else None,
        )
        state.claim_key = taken.key
        if taken.redelivery is not None:
            # Paid before, never delivered: serve it now, without a second charge.
            state.redelivery = True
            self._paid(ctx, state, taken.redelivery.status, taken.redelivery.reference)
        else:
            self.metrics.payments.labels(ctx.route.key, "verified", v.protocol).inc()

    async def recover(self, older_than: float | None) -> dict[str, int]:
        """Resolve claims left by requests whose process died (see `Ledger.recover`)."""
        counts = await self.ledger.recover(older_than, local=self.settler.name == "deferred")
        if any(counts.values()):
            log.warning("payment claims left by a stopped gateway resolved", extra=counts)
        return counts

    async def start_lease(self) -> None:
        """Take this process's lease now (before any claim), then renew it every third of
        `ledger.lease` until `stop_lease`."""
        ttl = self.config.ledger.lease
        await self.ledger.renew(self.holder, time.time() + ttl)

        async def keep() -> None:
            while True:
                await asyncio.sleep(ttl / 3)
                try:
                    await self._ledger(self.ledger.renew(self.holder, time.time() + ttl))
                except LedgerUnavailable as e:
                    # Two more tries before the lease runs out; logged once per outage.
                    self.lease_outage.failed(e)
                else:
                    self.lease_outage.ok()

        self._lease_task = asyncio.get_running_loop().create_task(keep())

    async def stop_lease(self) -> None:
        """A clean stop: nothing of ours is in flight any more; the lease ends now."""
        if self._lease_task is not None:
            self._lease_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._lease_task
            self._lease_task = None
        with contextlib.suppress(Exception):
            await self.ledger.drop_holder(self.holder)

    async def _reconcile(self, claim: Claim) -> None:
        """An `unknown` outcome (a crash lost the settler's answer) asked of the ground
        truth when its payer comes back. On chain, as `meterkit ledger settle` does: used →
        settled; never used and nothing in flight → released or failed. Through a
        facilitator, its /verify: the nonce is used → settled; valid → never used, released
        once any settlement that was in flight must have ended."""
        try:
            if isinstance(self.settler, OnchainSettler):
                result = await reconcile_onchain(self.settler, self.ledger, claim)
                log.info("unknown settlement reconciled", extra=result.as_dict())
            elif isinstance(self.settler, FacilitatorSettler):
                await self._reconcile_facilitator(self.settler, claim)
        except Exception as e:  # the chain, the facilitator or the ledger: still unknown
            log.warning("reconciling an unknown settlement failed: %s", e)

    async def _reconcile_facilitator(self, settler: FacilitatorSettler, claim: Claim) -> None:
        data = orjson.loads(claim.authorization_json)
        accept = next(
            (
                a
                for a in self.config.accepts
                if a.asset.caip2 == claim.network and a.asset.address.lower() == claim.asset.lower()
            ),
            None,
        )
        if accept is None:
            return
        auth = evm.parse_authorization(data["authorization"], data["signature"])
        amount = int(claim.amount)
        req = SettlementRequest(
            auth,
            accept.asset,
            amount,
            claim.pay_to,
            claim.payer,
            claim.protocol,
            claim.claim_key,
            x402.requirements_v2(
                x402.Offer(accept.asset, amount, claim.pay_to), int(self.pay.expires)
            ),
        )
        used = await settler.used(req)
        key = claim.claim_key
        if used is True:
            ref = claim.reference or "facilitator:authorization-used"
            await self.ledger.transition(key, ("unknown",), "settled", ref, None, "reconcile")
        elif used is False and claim.updated_at < time.time() - 2 * self.pay.settlement.timeout:
            # Nothing can still be on its way: the payer was not charged and may pay again.
            why = "reconciled: the facilitator says the authorization was never used"
            if await self.ledger.transition(key, ("unknown",), "pending", None, why, "reconcile"):
                await self.ledger.release_claim(key, why)

    async def _recover(self, older_than: float) -> None:
        await self._ledger(self.recover(older_than))

    def _settlement_request(self, state: PaymentState) -> SettlementRequest:
        v = state.verified
        assert v is not None and state.claim_key is not None
        return SettlementRequest(
            v.auth,
            v.offer.accept.asset,
            v.offer.amount,
            v.offer.accept.pay_to,
            v.payer,
            v.protocol,
            state.claim_key,
            x402.requirements_v2(v.offer.x402, int(self.pay.expires)),
        )

    async def _settle(self, ctx: RequestContext, state: PaymentState) -> None:
        v = state.verified
        assert v is not None and state.claim_key is not None
        key = state.claim_key
        # Durable before the settler hears of it: after a crash, `settling` says the outcome
        # must be reconciled, `pending` that nothing was sent.
        await self._ledger(self.ledger.finish_claim(key, "settling", None, None))
        try:
            status, reference = await self.settler.settle(self._settlement_request(state))
        except SettlementFailed as e:
            await self._ledger(
                self.ledger.record_settlement(key, self.settler.name, "failed", None, str(e))
            )
            self.metrics.settlements.labels(ctx.route.key, "failed").inc()
            raise
        except SettlementUnknown as e:
            await self._ledger(
                self.ledger.finish_claim(key, "unknown", None, str(e), self.settler.name)
            )
            self.metrics.settlements.labels(ctx.route.key, "unknown").inc()
            raise
        # The outcome and its audit row in one transaction.
        await self._ledger(
            self.ledger.finish_claim(key, status, reference, None, self.settler.name)
        )
        self.metrics.settlements.labels(ctx.route.key, status).inc()
        rcpt = self._paid(ctx, state, status, reference)
        # Durable before any success byte leaves.
        await self._ledger(self.ledger.save_receipt(ctx.request_id, key, rcpt))
        await self._hook(ctx, "onSettled", rcpt)

    def _paid(
        self, ctx: RequestContext, state: PaymentState, status: str, reference: str | None
    ) -> dict[str, Any]:
        """The request is paid for: its receipt and the headers that carry it."""
        v = state.verified
        assert v is not None
        rcpt = receipts.receipt(v, reference, status, time.time())
        if state.redelivery:
            rcpt["redelivery"] = True
        state.settled, state.pending, state.reference, state.receipt = True, False, reference, rcpt
        ctx.response_headers.update(receipts.response_headers(v, rcpt))
        rp = ctx.route.payment
        if rp.mint_access_ttl:
            token, exp = access.mint(
                self.access_secret, scope=rp.access_scope, ttl=rp.mint_access_ttl, subject=v.payer
            )
            ctx.response_headers[access.HEADER] = token
            ctx.response_headers["Meterkit-Access-Expires"] = mpp.rfc3339(exp)
        return rcpt

    async def _release(self, state: PaymentState, why: str) -> None:
        if state.claim_key is not None and not state.settled:
            await self._ledger(self.ledger.release_claim(state.claim_key, why))
            state.claim_key = None
            state.pending = False

    # ---- after the upstream answered ---------------------------------------------------

    async def on_upstream_response(self, ctx: RequestContext, status: int) -> Answer | None:
        state: PaymentState | None = ctx.state.get("payment")
        if state is None or not state.pending:
            return None
        if status >= 500:
            await self._skip(ctx, state, f"upstream-{status}")
            return None
        try:
            await self._settle(ctx, state)
        except PaymentProblem as e:
            if not isinstance(e, SettlementUnknown):
                await self._release(state, str(e))
            return await self._refuse(ctx, state, e)
        return None

    async def on_upstream_failure(self, ctx: RequestContext, error: ProxyError) -> None:
        state: PaymentState | None = ctx.state.get("payment")
        if state is not None and state.pending:
            await self._skip(
                ctx, state, "upstream-timeout" if error.status == 504 else "upstream-unreachable"
            )

    async def _skip(self, ctx: RequestContext, state: PaymentState, reason: str) -> None:
        await self._release(state, f"not settled: {reason}")
        state.skipped = reason
        self.metrics.settlements_skipped.labels(ctx.route.key, reason).inc()
        ctx.response_headers[STATUS_HEADER] = f"not-charged; reason={reason}"
        log.info("settlement skipped", extra={"route": ctx.route.key, "reason": reason})

    async def on_abort(self, ctx: RequestContext, record: UsageRecord) -> None:
        """Nothing reached the client: a claim that did not settle is released; one that
        was paid is marked undelivered, so the same credential is served once more."""
        state: PaymentState | None = ctx.state.get("payment")
        if state is None:
            return
        try:
            if state.pending:
                await self._skip(ctx, state, "no-response")
            elif state.claim_key is not None and not state.settled:
                await self._release(state, f"request ended: {record.outcome}")
            await self._delivery(ctx, state, delivered=False)
        except LedgerUnavailable:
            # A pending claim is resolved when it goes stale (or at the next start).
            log.warning("payment claim left for recovery", extra={"claim": state.claim_key})
        await self._finish(ctx, state, record)

    async def on_complete(self, ctx: RequestContext, record: UsageRecord) -> None:
        state: PaymentState | None = ctx.state.get("payment")
        if state is None:
            return
        try:
            if state.pending:
                # A pending claim must never outlive its request.
                await self._skip(ctx, state, "no-response")
            # A 5xx from the upstream is no answer to have paid for: the retry is served.
            await self._delivery(ctx, state, delivered=ctx.result.status < 500)
        except LedgerUnavailable:
            log.warning("payment delivery not recorded", extra={"claim": state.claim_key})
        await self._finish(ctx, state, record)

    async def _delivery(self, ctx: RequestContext, state: PaymentState, delivered: bool) -> None:
        if state.settled and state.claim_key is not None:
            what = "delivered" if delivered else "undelivered"
            await self._ledger(self.ledger.set_delivery(state.claim_key, ctx.request_id, what))
            state.extra["delivery"] = what

    async def _finish(self, ctx: RequestContext, state: PaymentState, record: UsageRecord) -> None:
        v = state.verified
        record.payment = {
            "quote": state.quote.as_dict(),
            "protocol": v.protocol if v else None,
            "payer": v.payer if v else None,
            "amount": str(v.offer.amount) if v else None,
            "asset": v.offer.accept.asset.address if v else None,
            "reference": state.reference,
            "settled": state.settled,
            "skipped": state.skipped,
            "redelivery": state.redelivery,
            "delivery": state.extra.get("delivery"),
            "actual": {
                "prompt_tokens": record.prompt_tokens,
                "completion_tokens": record.completion_tokens,
            },
        }
        if v is not None:
            # On an outage (logged once) the usage sink still gets the record.
            with contextlib.suppress(LedgerUnavailable):
                await self._ledger(self.ledger.save_usage(record.as_dict()))

    # ---- answering ---------------------------------------------------------------------

    def _session_only(self, ctx: RequestContext) -> Problem:
        """The 402 of a route paid only per token: its session challenges."""
        self.metrics.payment_required.labels(ctx.route.key).inc()
        e = PaymentRequired(
            "this route is paid per token over a payment channel", reason="no_credential"
        )
        challenges = self.session_challenges(ctx) if self.session_challenges else []
        return e.problem([("WWW-Authenticate", c.header()) for c in challenges])

    async def _refuse(self, ctx: RequestContext, state: PaymentState, e: PaymentProblem) -> Problem:
        if not isinstance(e, PaymentRequired):
            self.metrics.payments.labels(ctx.route.key, "rejected", e.reason).inc()
            log.info(
                "payment refused",
                extra={"route": ctx.route.key, "reason": e.reason, "detail": e.detail},
            )
            await self._hook(ctx, "onError", e)
        if e.fresh_challenge:
            self.metrics.payment_required.labels(ctx.route.key).inc()
        v = state.verified
        if isinstance(e, SettlementFailed) and v is not None and v.protocol != "mpp":
            # x402: the settlement answer says `success: false`, and why.
            asset = v.offer.accept.asset
            name = "X-PAYMENT-RESPONSE" if v.protocol == "x402-v1" else "PAYMENT-RESPONSE"
            network = asset.network if v.protocol == "x402-v1" else asset.caip2
            ctx.response_headers[name] = x402.payment_response(
                False, "", network, v.payer, e.error_reason or e.reason
            )
        problem = refusal(
            e,
            state.terms,
            state.offers,
            state.quote.price,
            time.time(),
            ctx.route.payment.description,
        )
        if e.fresh_challenge and self.session_challenges and ctx.route.payment.session:
            sessions = tuple(("WWW-Authenticate", c.header()) for c in self.session_challenges(ctx))
            problem = dataclasses.replace(problem, headers=problem.headers + sessions)
        return problem


def _expired(e: PaymentProblem) -> bool:
    """The credential was good and ran out: its challenge or its authorization expired."""
    return isinstance(e, PaymentExpired) or e.reason in ("expired", "expired_challenge")

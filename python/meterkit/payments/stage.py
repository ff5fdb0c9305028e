"""The payment stage: price a request, answer 402 with every configured way to pay, verify a
credential (MPP `Payment` / x402 v1 / x402 v2), claim its authorization durably, and settle
it at the route's moment.

Hook contract (YAML `hooks:` on a route; `package.module:function` or `file.py:function`,
sync or async):
- `onRequest(ctx)` — before anything else. Return an aiohttp response to answer with it
  (e.g. 401); return None to continue; raising `ProxyError` answers its problem details.
- `onPriceResolved(ctx, quote)` — after pricing. Return a `Quote` (or a `Decimal` price) to
  replace it; None keeps it.
- `onSettled(ctx, receipt)` — after the payment settled (or was queued); the receipt dict.
- `onResponse(ctx, status)` — once the upstream's status is known.
- `onError(ctx, error)` — when a payment is refused or the upstream failed.
Exceptions raised by the last three are logged and do not change the response.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web
from multidict import CIMultiDict

from meterkit import _core
from meterkit.budgets.identity import requested_max
from meterkit.config import Config
from meterkit.config.payments import Accept
from meterkit.observability.metrics import ProxyMetrics
from meterkit.payments import access, evm, mpp, x402
from meterkit.payments.callables import call, load_callable
from meterkit.payments.ledger import Claim, Ledger
from meterkit.payments.pricing import Quote, base_units, quote
from meterkit.payments.problems import (
    InvalidChallenge,
    MalformedCredential,
    MethodUnsupported,
    PaymentExpired,
    PaymentProblem,
    PaymentRequired,
    Replayed,
    SettlementUnknown,
    VerificationFailed,
)
from meterkit.payments.settlement import SettlementFailed, SettlementRequest, Settler
from meterkit.proxy.context import RequestContext
from meterkit.proxy.problems import ProxyError
from meterkit.usage import UsageRecord

log = logging.getLogger("meterkit.payments")

STATUS_HEADER = "X-Payment-Status"
# How long a duplicate request waits for the first one's settlement outcome.
_CLAIM_WAIT = 15.0


@dataclass
class Offer:
    accept: Accept
    amount: int

    @property
    def mpp_request(self) -> dict[str, Any]:
        """The `evm/charge` request (the shape the `pympp` client expects)."""
        a = self.accept.asset
        return {
            "amount": str(self.amount),
            "currency": _core.checksum_address(a.address),
            "recipient": _core.checksum_address(self.accept.pay_to),
            "methodDetails": {
                "chainId": a.chain_id,
                "credentialTypes": [evm.CREDENTIAL_TYPE],
                "decimals": a.decimals,
            },
        }

    @property
    def x402(self) -> x402.Offer:
        return x402.Offer(self.accept.asset, self.amount, self.accept.pay_to)


@dataclass
class Verified:
    protocol: str  # mpp | x402-v1 | x402-v2
    offer: Offer
    auth: evm.Authorization
    payer: str
    challenge_id: str | None = None


@dataclass
class PaymentState:
    quote: Quote
    offers: list[Offer]
    resource: str
    digest: str | None
    verified: Verified | None = None
    claim_key: str | None = None
    settled: bool = False
    pending: bool = False
    reference: str | None = None
    receipt: dict[str, Any] | None = None
    skipped: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class PaymentStage:
    name = "payment"

    def __init__(
        self,
        config: Config,
        ledger: Ledger,
        settler: Settler,
        metrics: ProxyMetrics,
        base_dir: Path | None = None,
    ) -> None:
        self.config = config
        self.pay = config.payments
        self.ledger = ledger
        self.settler = settler
        self.metrics = metrics
        self.secret = (self.pay.secret or "").encode()
        self.access_secret = (self.pay.access_secret or self.pay.secret or "").encode()
        self.hooks: dict[str, dict[str, Any]] = {}
        for r in config.routes:
            if r.payment.hooks:
                self.hooks[r.key] = {
                    name: load_callable(ref, base_dir) for name, ref in r.payment.hooks.items()
                }

    @staticmethod
    def applies(route_payment: Any) -> bool:
        return bool(
            route_payment.priced
            or route_payment.require_access
            or route_payment.mint_access_ttl
            or route_payment.hooks
        )

    def _realm(self, ctx: RequestContext) -> str:
        return self.pay.realm or ctx.request.host.split(":")[0]

    async def _hook(self, ctx: RequestContext, name: str, *args: Any) -> Any:
        fn = self.hooks.get(ctx.route.key, {}).get(name)
        if fn is None:
            return None
        if name in ("onRequest", "onPriceResolved"):
            try:
                return await call(fn, ctx, *args)
            except ProxyError:
                raise
            except Exception as e:
                log.exception("hook %s failed", name, extra={"route": ctx.route.key})
                raise ProxyError(
                    500, "hook-failed", "Hook failed", f"the route's {name} hook failed"
                ) from e
        try:
            return await call(fn, ctx, *args)
        except Exception:
            log.exception("hook %s failed", name, extra={"route": ctx.route.key})
            return None

    # ---- request -----------------------------------------------------------------------

    async def on_request(self, ctx: RequestContext) -> web.StreamResponse | None:
        rp = ctx.route.payment
        if not self.applies(rp):
            return None
        answer = await self._hook(ctx, "onRequest")
        if isinstance(answer, web.StreamResponse):
            return answer
        if rp.require_access:
            try:
                claims = access.check(
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
            ctx.state["access"] = claims
        if not rp.priced:
            return None
        try:
            q = quote(rp, ctx.json, ctx.format, ctx.model)
        except PaymentProblem as e:
            raise ProxyError(e.status, e.code, e.title, e.detail) from None
        replaced = await self._hook(ctx, "onPriceResolved", q)
        if isinstance(replaced, Quote):
            q = replaced
        elif isinstance(replaced, Decimal):
            q = Quote(replaced, "hook", q.model, q.prompt_tokens, q.max_completion_tokens)
        if q.basis == "token-based" and ctx.json is not None:
            # The upstream must not produce more than the quote paid for.
            requested, key = requested_max(ctx.json, ctx.format)
            if requested is None:
                ctx.json[key] = q.max_completion_tokens
                ctx.body_changed = True
        offers = [Offer(a, base_units(q.price, a.asset)) for a in self.config.accepts]
        req = ctx.request
        state = PaymentState(
            q,
            offers,
            f"{req.scheme}://{req.host}{req.path_qs}",
            mpp.body_digest(ctx.body) if ctx.body else None,
        )
        ctx.state["payment"] = state
        try:
            verified = self._read_credential(ctx, state)
            if verified is None:
                raise PaymentRequired("this route requires payment", reason="no_credential")
            state.verified = verified
            ctx.state["payer"] = verified.payer
            await self._claim(ctx, state, verified)
        except PaymentProblem as e:
            return await self._refuse(ctx, state, e)
        return None

    async def before_upstream(self, ctx: RequestContext) -> web.StreamResponse | None:
        """After every stage admitted the request: settle now (before-response), or verify
        with the settler and hold the claim until the upstream answers (after-response)."""
        state: PaymentState | None = ctx.state.get("payment")
        if state is None or state.verified is None:
            return None
        try:
            if ctx.route.payment.settlement == "after-response":
                await self.settler.verify(self._settlement_request(ctx, state))
                state.pending = True
            else:
                await self._settle(ctx, state)
        except PaymentProblem as e:
            await self._release(state, str(e))
            return await self._refuse(ctx, state, e)
        return None

    def _read_credential(self, ctx: RequestContext, state: PaymentState) -> Verified | None:
        headers = ctx.request.headers
        protocols = self.pay.protocols
        token = mpp.payment_token(headers.get("Authorization"))
        if token is not None and "mpp" in protocols:
            return self._verify_mpp(ctx, state, token)
        for name in ("PAYMENT-SIGNATURE", "X-PAYMENT"):
            value = headers.get(name)
            if value is not None and "x402" in protocols:
                return self._verify_x402(state, name, value)
        return None

    def _verify_mpp(self, ctx: RequestContext, state: PaymentState, token: str) -> Verified:
        cred = mpp.decode_credential(token)
        ch = cred.challenge
        # 1. The id binds the echoed terms: issued by us, unaltered.
        if not ch.bound(self.secret):
            raise InvalidChallenge(
                "the challenge id does not match its terms (not issued here, or altered)",
                reason="hmac",
            )
        if (ch.method, ch.intent) != ("evm", "charge"):
            raise MethodUnsupported(
                f"payment method {ch.method}/{ch.intent} is not accepted here", reason="method"
            )
        # 2. The echoed terms are today's terms for this request.
        if ch.realm != self._realm(ctx):
            raise InvalidChallenge("the challenge was issued for another realm", reason="realm")
        wanted = ch.request_json
        offer = next((o for o in state.offers if o.mpp_request == wanted), None)
        if offer is None:
            raise InvalidChallenge(
                "the challenge's terms are not what this request costs now", reason="terms"
            )
        if not mpp.same_digest(ch.digest, state.digest):
            raise InvalidChallenge(
                "the request body is not the one the challenge was issued for", reason="digest"
            )
        # `opaque` carries the challenge's own random nonce: bound by the HMAC, nothing to check.
        # 3. Expiry: required, and in the future.
        if ch.expires is None:
            raise InvalidChallenge("the challenge has no expiry", reason="no_expires")
        expires = mpp.parse_rfc3339(ch.expires)
        if expires is None:
            raise InvalidChallenge("the challenge expiry is not an RFC 3339 time", reason="expires")
        now = time.time()
        if expires <= now:
            raise PaymentExpired(
                f"the challenge expired at {ch.expires}", reason="expired_challenge"
            )
        # 4. The payload: an EIP-3009 authorization bound to this challenge.
        p = cred.payload
        if p.get("type") != evm.CREDENTIAL_TYPE:
            raise MalformedCredential(
                "the evm/charge payload type must be 'authorization'", reason="payload_type"
            )
        auth = evm.parse_authorization(p, p.get("signature"))
        payer = evm.verify(
            auth,
            evm.Terms(offer.accept.asset, offer.amount, offer.accept.pay_to),
            now=now,
            max_valid_before=max(now + self.pay.max_validity, expires),
            nonce=evm.challenge_nonce(ch.id, ch.realm),
        )
        if (
            cred.source is not None
            and cred.source.lower() != evm.did_pkh(offer.accept.asset.chain_id, payer).lower()
        ):
            raise VerificationFailed("the credential's source is not the payer", reason="source")
        return Verified("mpp", offer, auth, payer, ch.id)

    def _verify_x402(self, state: PaymentState, header: str, value: str) -> Verified:
        pay = x402.decode_payment(value, header)
        if pay.scheme != "exact":
            raise MethodUnsupported(f"x402 scheme {pay.scheme!r} is not accepted", reason="scheme")
        offer = next(
            (
                o
                for o in state.offers
                if pay.network in (o.accept.asset.network, o.accept.asset.caip2)
            ),
            None,
        )
        if offer is None:
            raise VerificationFailed(
                f"network {pay.network} is not accepted here", reason="network"
            )
        if pay.accepted is not None:
            terms = x402.requirements_v2(offer.x402, 0)
            for k in ("amount", "asset", "payTo"):
                if str(pay.accepted.get(k, "")).lower() != str(terms[k]).lower():
                    raise VerificationFailed(
                        f"the accepted terms differ from today's ({k})", reason="terms"
                    )
        if not isinstance(pay.authorization, dict):
            raise MalformedCredential("payload.authorization must be an object", reason="shape")
        auth = evm.parse_authorization(pay.authorization, pay.signature)
        now = time.time()
        payer = evm.verify(
            auth,
            evm.Terms(offer.accept.asset, offer.amount, offer.accept.pay_to),
            now=now,
            max_valid_before=now + self.pay.max_validity,
        )
        return Verified(f"x402-v{pay.version}", offer, auth, payer)

    # ---- claim and settle --------------------------------------------------------------

    async def _claim(self, ctx: RequestContext, state: PaymentState, v: Verified) -> None:
        asset = v.offer.accept.asset
        key = evm.claim_key(v.auth, asset)
        claim = Claim(
            claim_key=key,
            status="pending",
            protocol=v.protocol,
            network=asset.caip2,
            asset=asset.address,
            payer=v.payer,
            pay_to=v.offer.accept.pay_to,
            amount=str(v.offer.amount),
            nonce=v.auth.nonce,
            valid_before=v.auth.valid_before,
            route=ctx.route.key,
            request_id=ctx.request_id,
            challenge_id=v.challenge_id,
            authorization_json=orjson.dumps(
                {
                    "authorization": v.auth.fields(),
                    "signature": v.auth.signature,
                    "token": asset.address,
                    "chainId": asset.chain_id,
                }
            ).decode(),
        )
        for _ in range(2):
            won, existing = await self.ledger.claim(claim)
            if won:
                state.claim_key = key
                self.metrics.payments.labels(ctx.route.key, "verified", v.protocol).inc()
                return
            existing = await self._outcome(existing)
            if existing is not None:
                raise Replayed(
                    "this authorization has already paid for a request",
                    reason="replay",
                    reference=existing.reference,
                )
        raise Replayed("this authorization is being used by another request", reason="replay")

    async def _outcome(self, existing: Claim | None) -> Claim | None:
        """Wait while another request settles the same authorization; None if it released
        the claim (nothing was settled), else the finished claim."""
        deadline = time.monotonic() + _CLAIM_WAIT
        while existing is not None and existing.status == "pending" and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            existing = await self.ledger.get_claim(existing.claim_key)
        return existing

    def _settlement_request(self, ctx: RequestContext, state: PaymentState) -> SettlementRequest:
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
        req = self._settlement_request(ctx, state)
        try:
            status, reference = await self.settler.settle(req)
        except SettlementFailed as e:
            await self.ledger.record_settlement(
                state.claim_key, self.settler.name, "failed", None, str(e)
            )
            self.metrics.settlements.labels(ctx.route.key, "failed").inc()
            raise
        except SettlementUnknown as e:
            await self.ledger.finish_claim(state.claim_key, "unknown", None, str(e))
            await self.ledger.record_settlement(
                state.claim_key, self.settler.name, "unknown", None, str(e)
            )
            self.metrics.settlements.labels(ctx.route.key, "unknown").inc()
            raise
        await self.ledger.finish_claim(state.claim_key, status, reference, None)
        await self.ledger.record_settlement(
            state.claim_key, self.settler.name, status, reference, None
        )
        self.metrics.settlements.labels(ctx.route.key, status).inc()
        asset = v.offer.accept.asset
        receipt: dict[str, Any] = {
            "status": "success",
            "method": "evm",
            "intent": "charge",
            "timestamp": mpp.rfc3339(time.time()),
            "reference": reference,
            "payer": v.payer,
            "amount": str(v.offer.amount),
            "currency": asset.address,
            "network": asset.caip2,
            "settlement": status,
        }
        if v.challenge_id:
            receipt["challengeId"] = v.challenge_id
        # Durable before any success byte leaves.
        await self.ledger.save_receipt(ctx.request_id, state.claim_key, receipt)
        state.settled, state.pending, state.reference, state.receipt = (
            True,
            False,
            reference,
            receipt,
        )
        h = ctx.response_headers
        h["Cache-Control"] = "private"
        if v.protocol == "mpp":
            h["Payment-Receipt"] = mpp.receipt_header(receipt)
        else:
            name = "X-PAYMENT-RESPONSE" if v.protocol == "x402-v1" else "PAYMENT-RESPONSE"
            network = asset.network if v.protocol == "x402-v1" else asset.caip2
            h[name] = x402.payment_response(True, reference, network, v.payer)
        rp = ctx.route.payment
        if rp.mint_access_ttl:
            token, exp = access.mint(
                self.access_secret, scope=rp.access_scope, ttl=rp.mint_access_ttl, subject=v.payer
            )
            h[access.HEADER] = token
            h["Meterkit-Access-Expires"] = mpp.rfc3339(exp)
        await self._hook(ctx, "onSettled", receipt)

    async def _release(self, state: PaymentState, why: str) -> None:
        if state.claim_key is not None and not state.settled:
            await self.ledger.release_claim(state.claim_key, why)
            state.claim_key = None
            state.pending = False

    # ---- after the upstream answered ---------------------------------------------------

    async def on_upstream_response(
        self, ctx: RequestContext, status: int
    ) -> web.StreamResponse | None:
        await self._hook(ctx, "onResponse", status)
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
        await self._hook(ctx, "onError", error)
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

    async def on_complete(self, ctx: RequestContext, record: UsageRecord) -> None:
        state: PaymentState | None = ctx.state.get("payment")
        if state is None:
            return
        if state.pending:
            # The client left (or the stream failed) before the upstream answered.
            await self._skip(ctx, state, "no-response")
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
            "actual": {
                "prompt_tokens": record.prompt_tokens,
                "completion_tokens": record.completion_tokens,
            },
        }
        if v is not None:
            try:
                await self.ledger.save_usage(record.as_dict())
            except Exception:
                log.exception("could not write the usage record to the ledger")

    # ---- answering ---------------------------------------------------------------------

    def challenges(self, ctx: RequestContext, state: PaymentState) -> list[mpp.Challenge]:
        expires = mpp.rfc3339(time.time() + self.pay.expires)
        # Every challenge gets a random `opaque` nonce: two identical requests in the same second
        # must not get the same challenge id, which would give both the same EIP-3009 nonce and
        # make the second payment a replay of the first.
        return [
            mpp.make_challenge(
                self.secret,
                realm=self._realm(ctx),
                method="evm",
                intent="charge",
                request=o.mpp_request,
                expires=expires,
                digest=state.digest,
                opaque={"n": secrets.token_hex(12)},
                description=ctx.route.payment.description,
            )
            for o in state.offers
        ]

    async def _refuse(
        self, ctx: RequestContext, state: PaymentState, e: PaymentProblem
    ) -> web.Response:
        if not isinstance(e, PaymentRequired):
            self.metrics.payments.labels(ctx.route.key, "rejected", e.reason).inc()
            log.info(
                "payment refused",
                extra={"route": ctx.route.key, "reason": e.reason, "detail": e.detail},
            )
            await self._hook(ctx, "onError", e)
        headers: CIMultiDict[str] = CIMultiDict()
        headers["Cache-Control"] = "no-store"
        headers["X-Request-Id"] = ctx.request_id
        body = e.body(ctx.request_id)
        if e.fresh_challenge:
            self.metrics.payment_required.labels(ctx.route.key).inc()
            description = (
                ctx.route.payment.description or f"{ctx.request.method} {ctx.request.path}"
            )
            offers = [o.x402 for o in state.offers]
            timeout = int(self.pay.expires)
            if "mpp" in self.pay.protocols:
                for ch in self.challenges(ctx, state):
                    headers.add("WWW-Authenticate", ch.header())
            if "x402" in self.pay.protocols:
                headers["PAYMENT-REQUIRED"] = x402.payment_required_v2(
                    offers, state.resource, description, timeout, e.detail
                )
                body.update(
                    x402.payment_required_v1(offers, state.resource, description, timeout, e.detail)
                )
            body["price"] = str(state.quote.price)
        return web.Response(
            status=e.status,
            body=orjson.dumps(body),
            headers=headers,
            content_type="application/problem+json",
        )

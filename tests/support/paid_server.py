"""A small paid HTTP server over loopback for the paying-client tests: it offers MPP
`evm/charge` and/or x402 `exact` (v2 header, v1 body) for any EIP-3009 asset, checks the
payment with meterkit's own verification code, and answers the paid request with a chosen
status and a receipt. Everything it received is kept for the assertions."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import orjson
from aiohttp import web

from meterkit.config.payments import Asset
from meterkit.payments import evm, mpp, x402
from meterkit.payments.pricing import base_units
from meterkit.payments.problems import PaymentProblem
from meterkit.runtime import bound_port

SECRET = b"paid-server-secret-0123456789"
PAY_TO = "0x" + "33" * 20


class _NotSettled(Exception):
    pass


@dataclass
class PaidServer:
    asset: Asset
    price: Decimal
    offers: tuple[str, ...] = ("mpp",)  # mpp, x402-v2, x402-v1
    paid_status: int = 200
    # The challenge's `header` parameter (e.g. "Payment-Authorization").
    header_field: str | None = None
    # Describe the token completely: name/version into the MPP methodDetails, decimals into
    # the x402 `extra` (a token the client does not know).
    describe_domain: bool = False
    # Answer a valid x402 payment with 402 + `PAYMENT-RESPONSE` `success: false` (not settled).
    settle_fails: bool = False
    # While set and not released, paid requests wait here (concurrency tests).
    gate: asyncio.Event | None = None
    received: list[dict[str, str]] = field(default_factory=list)
    paid: list[str] = field(default_factory=list)  # protocol of each accepted payment
    url: str = ""

    @property
    def amount(self) -> int:
        return base_units(self.price, self.asset)

    def mpp_request(self) -> dict[str, Any]:
        details: dict[str, Any] = {
            "chainId": self.asset.chain_id,
            "credentialTypes": ["authorization"],
            "decimals": self.asset.decimals,
        }
        if self.describe_domain:
            details.update(name=self.asset.eip712_name, version=self.asset.eip712_version)
        return {
            "amount": str(self.amount),
            "currency": self.asset.address,
            "recipient": PAY_TO,
            "methodDetails": details,
        }

    def challenge(self) -> mpp.Challenge:
        return mpp.make_challenge(
            SECRET,
            realm="127.0.0.1",
            method="evm",
            intent="charge",
            request=self.mpp_request(),
            expires=mpp.rfc3339(time.time() + 300),
            opaque={"n": str(len(self.received))},
            header=self.header_field,
        )

    def x402_offer(self) -> x402.Offer:
        return x402.Offer(self.asset, self.amount, PAY_TO)

    def payment_required(self, request: web.Request) -> web.Response:
        headers: list[tuple[str, str]] = []
        body: dict[str, Any] = {"error": "payment required"}
        if "mpp" in self.offers:
            headers.append(("WWW-Authenticate", self.challenge().header()))
        if "x402-v2" in self.offers:
            requirements = x402.requirements_v2(self.x402_offer(), 300)
            if self.describe_domain:
                requirements["extra"]["decimals"] = self.asset.decimals
            else:
                # A third-party server that does not describe its token (meterkit's own
                # offers give a custom token's decimals).
                requirements["extra"].pop("decimals", None)
            doc = {
                "x402Version": 2,
                "error": "payment required",
                "resource": {"url": str(request.url)},
                "accepts": [requirements],
            }
            headers.append(("PAYMENT-REQUIRED", base64.b64encode(orjson.dumps(doc)).decode()))
        if "x402-v1" in self.offers:
            body = x402.payment_required_v1([self.x402_offer()], str(request.url), "paid", 300)
        return web.Response(
            status=402, body=orjson.dumps(body), headers=headers, content_type="application/json"
        )

    def terms(self) -> evm.Terms:
        return evm.Terms(self.asset, self.amount, PAY_TO)

    def verify(self, request: web.Request) -> tuple[str, str, str] | None:
        """(protocol, receipt header, its value) of a valid payment, None if unpaid."""
        now = time.time()
        found = mpp.request_credential(request.headers)
        if found is not None and "mpp" in self.offers:
            field_name, token = found
            cred = mpp.decode_credential(token)
            ch = cred.challenge
            assert ch.bound(SECRET), "challenge id does not bind its terms"
            assert field_name == ch.credential_header, (field_name, ch.credential_header)
            assert ch.request_json == self.mpp_request()
            auth = evm.parse_authorization(cred.payload, cred.payload.get("signature"))
            payer = evm.verify(
                auth,
                self.terms(),
                now=now,
                max_valid_before=now + 3600,
                nonce=evm.challenge_nonce(ch.id, ch.realm),
            )
            receipt = {"status": "success", "method": "evm", "reference": "0x01", "payer": payer}
            return "mpp", "Payment-Receipt", mpp.receipt_header(receipt)
        for name, protocol in (("PAYMENT-SIGNATURE", "x402-v2"), ("X-PAYMENT", "x402-v1")):
            value = request.headers.get(name)
            if value is None or protocol not in self.offers:
                continue
            pay = x402.decode_payment(value, name)
            if pay.accepted is not None:
                assert pay.accepted["amount"] == str(self.amount), pay.accepted
            auth = evm.parse_authorization(pay.authorization, pay.signature)
            payer = evm.verify(auth, self.terms(), now=now, max_valid_before=now + 3600)
            network = self.asset.network if protocol == "x402-v1" else self.asset.caip2
            if self.settle_fails:
                failed = x402.payment_response(False, "", network, payer, "insufficient_funds")
                raise _NotSettled(failed)
            response = x402.payment_response(True, "0x02", network, payer)
            return (
                protocol,
                "PAYMENT-RESPONSE" if pay.version == 2 else "X-PAYMENT-RESPONSE",
                response,
            )
        return None

    async def handle(self, request: web.Request) -> web.Response:
        self.received.append(dict(request.headers))
        try:
            verified = self.verify(request)
        except PaymentProblem as e:
            return web.json_response(e.body(), status=e.status)
        except _NotSettled as e:
            return web.json_response({}, status=402, headers={"PAYMENT-RESPONSE": e.args[0]})
        if verified is None:
            return self.payment_required(request)
        if self.gate is not None:
            await self.gate.wait()
        protocol, header, value = verified
        self.paid.append(protocol)
        return web.json_response({"ok": protocol}, status=self.paid_status, headers={header: value})


@asynccontextmanager
async def serving(server: PaidServer) -> AsyncIterator[PaidServer]:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", server.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server.url = f"http://127.0.0.1:{bound_port(site)}/paid"
    try:
        yield server
    finally:
        await runner.cleanup()

"""Paying a route per token over a payment channel (MPP `intent="session"`).

    async with SessionClient(key, channel_id, max_total=Decimal("2")) as client:
        result = await client.stream("POST", url, json={..., "stream": True})
        print(result.text_bytes, result.receipt["spent"])

The client answers the route's 402 with a voucher on its channel, reads the stream, and
whenever the gateway pauses it with a `payment-need-voucher` event, signs a voucher for the
required cumulative amount (within `max_total`, in token units) and sends it as a separate
POST with no body; the stream resumes. The last `payment-receipt` event says what was spent.
The channel must exist: an on-chain escrow channel, or a prepaid one an operator credited
(`meterkit channel credit`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import aiohttp
import orjson

from meterkit import SseDecoder, _core
from meterkit.payments import mpp
from meterkit.sessions.wire import sign_voucher

__all__ = ["SessionClient", "SessionDeclined", "SessionResult"]


class SessionDeclined(Exception):
    """The client would not sign: over its cap, or no session offer it can pay."""


@dataclass
class SessionResult:
    status: int
    # The response body as received (the SSE stream, control events included).
    body: bytes = b""
    receipt: dict[str, Any] | None = None
    # Every `payment-need-voucher` the gateway sent, and the vouchers answered.
    needs: list[dict[str, Any]] = field(default_factory=list)
    vouchers: list[int] = field(default_factory=list)
    problem: dict[str, Any] | None = None


class SessionClient:
    def __init__(
        self,
        key: bytes,
        channel_id: str,
        *,
        max_total: Decimal,
        method: str = "evm",
        initial: int | None = None,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        self.key = key
        self.channel_id = channel_id.lower()
        self.max_total = max_total
        self.method = method
        # The first voucher's cumulative amount (base units), and then the step each later
        # voucher adds at least (a voucher per token would be one POST per token); default:
        # the suggested deposit or 100 tokens' worth.
        self.initial = initial
        self.cumulative = 0
        self._own = session is None
        self._session = session

    async def __aenter__(self) -> SessionClient:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._own and self._session is not None:
            await self._session.close()

    @property
    def http(self) -> aiohttp.ClientSession:
        assert self._session is not None, "use `async with SessionClient(...)`"
        return self._session

    def _challenge(self, headers: Any) -> mpp.Challenge:
        values = headers.getall("WWW-Authenticate", [])
        for ch in mpp.parse_challenges(values):
            if ch.intent == "session" and ch.method == self.method:
                return ch
        raise SessionDeclined(f"the 402 offers no {self.method} session")

    def authorization(self, ch: mpp.Challenge, amount: int) -> dict[str, str]:
        """The header carrying a voucher for `amount` (cumulative, base units) under the
        challenge `ch`, for a request of the caller's own; raises `SessionDeclined` past
        the cap."""
        req = ch.request_json
        details = req.get("methodDetails", {})
        decimals = 6 if not isinstance(details.get("decimals"), int) else details["decimals"]
        cap = int(self.max_total * (Decimal(10) ** decimals))
        if amount > cap:
            raise SessionDeclined(f"a voucher for {amount} would pass the cap of {cap}")
        sig = sign_voucher(
            self.key,
            ch.method,
            int(details["chainId"]),
            str(details["escrowContract"]),
            self.channel_id,
            amount,
        )
        self.cumulative = max(self.cumulative, amount)
        payload = {
            "action": "voucher",
            "channelId": self.channel_id,
            "cumulativeAmount": str(amount),
            "signature": sig,
        }
        source = f"did:pkh:eip155:{details['chainId']}:{_core.address_of(self.key)}"
        token = mpp.credential_token(ch, payload, source)
        return {ch.credential_header: f"Payment {token}"}

    async def voucher(self, url: str, ch: mpp.Challenge, amount: int) -> int:
        """Send one voucher as a management request; the status (204 when accepted)."""
        async with self.http.post(url, headers=self.authorization(ch, amount)) as r:
            await r.read()
            return r.status

    async def close(self, url: str, ch: mpp.Challenge) -> dict[str, Any] | None:
        """Close the channel with the last voucher: the receipt says what was settled."""
        req = self.authorization(ch, self.cumulative)
        token = req[ch.credential_header].removeprefix("Payment ")
        cred = orjson.loads(mpp.b64url_decode(token))
        cred["payload"]["action"] = "close"
        req[ch.credential_header] = "Payment " + mpp.b64url(orjson.dumps(cred))
        async with self.http.post(url, headers=req) as r:
            await r.read()
            rc = r.headers.get("Payment-Receipt")
            return mpp.decode_receipt(rc) if rc else None

    async def stream(
        self, method: str, url: str, *, json: Any, headers: Mapping[str, str] | None = None
    ) -> SessionResult:
        body = orjson.dumps(json)
        base = {"Content-Type": "application/json", **(headers or {})}
        async with self.http.request(method, url, data=body, headers=base) as r:
            await r.read()
            if r.status != 402:
                return SessionResult(r.status, await r.read())
            ch = self._challenge(r.headers)
        req = ch.request_json
        price = int(req["amount"])
        start = self.initial or int(req.get("suggestedDeposit") or price * 100)
        amount = max(self.cumulative, start)
        result = SessionResult(0)
        async with self.http.request(
            method, url, data=body, headers={**base, **self.authorization(ch, amount)}
        ) as r:
            result.status = r.status
            if r.status != 200:
                raw = await r.read()
                result.body = raw
                result.problem = orjson.loads(raw) if raw else None
                return result
            decoder = SseDecoder()
            async for chunk in r.content.iter_any():
                result.body += chunk
                for ev in decoder.feed(chunk):
                    if ev.event == "payment-need-voucher":
                        need = orjson.loads(ev.data)
                        result.needs.append(need)
                        required = int(need["requiredCumulative"])
                        step = self.cumulative + start
                        status = await self.voucher(url, ch, max(required, step))
                        if status != 204:
                            raise SessionDeclined(f"the gateway refused a voucher: {status}")
                        result.vouchers.append(self.cumulative)
                    elif ev.event == "payment-receipt":
                        result.receipt = orjson.loads(ev.data)
        return result

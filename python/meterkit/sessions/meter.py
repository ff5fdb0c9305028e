"""The session meter: per-token payment over MPP session channels, for any web service.

The proxy's session stage (`meterkit.stages.session`) and the aiohttp and Starlette adapters
(`meterkit.integrations`) are thin faces of this one object, so the money logic — which
challenges a 402 offers, which vouchers are accepted, what a stream may deliver before it
asks for more, what it is charged — exists once. It is web-free: it reads request headers
and hands back challenges, problems (`meterkit.problems.Problem`, rendered by
`meterkit.problems.render`), receipts and SSE bytes.

    meter = SessionMeter.build(store, price="$0.00001", pay_to=PAY_TO, secret=SECRET)
    admitted = await meter.admit(headers, method="POST", has_body=True, now=time.time())
    # None: no session credential → answer meter.payment_required(now) (402 + challenges)
    # Receipted: a voucher or a close → answer 204 with admitted.headers
    # PaidStream: a paid request → await admitted.open(prompt_tokens), then stream
    #             `async for out in admitted.relay(model_sse_reads, format="openai-chat")`
    # A refusal raises a PaymentProblem → answer render(meter.problem(e, now))

This module admits requests (the 402's challenges, the voucher checks, channel management);
`meterkit.sessions.stream` is the paid stream it hands back. The flow of a paid stream (the
wire is the README's "Paid per token" section): its prompt
is charged when it opens; each event's completion tokens are reserved against the
channel's accepted vouchers before the event is released (the Rust `StreamMeter`'s
`credit`/`grant`, fed from this stream's hold on the channel in the store, so concurrent
streams never spend the same credit). When the hold runs out the meter pauses before that
exact event, ONE `payment-need-voucher` event goes out, and the stream waits on the `Hub`
for a voucher — accepted by any request to the same store, on any instance — for up to the
voucher timeout; none ends it with the format's ending. It ends with a `payment-receipt`
event, and what was delivered is charged (the rest of the hold released) however it ends.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from meterkit.config.payments import KNOWN_ASSETS, Accept, Asset, SessionTerms
from meterkit.config.units import parse_money
from meterkit.payments import mpp
from meterkit.payments.pricing import base_units
from meterkit.payments.problems import (
    InvalidChallenge,
    MethodUnsupported,
    PaymentExpired,
    PaymentProblem,
    PaymentRequired,
)
from meterkit.problems import Problem, Rendered, render
from meterkit.sessions import wire
from meterkit.sessions.channels import (
    ZERO_ADDRESS,
    Channel,
    accept,
    prepaid_channel,
)
from meterkit.sessions.hub import Hub
from meterkit.sessions.offers import METHODS, SessionOffer, session_challenges, session_offers
from meterkit.sessions.problems import (
    ChannelFinalized,
    ChannelNotFound,
    TooManyVouchers,
)
from meterkit.sessions.store import ChannelStore
from meterkit.sessions.stream import EXHAUSTED, Completion, Emit, PaidStream, receipt_headers

if TYPE_CHECKING:
    # The sources reach the chain client (aiohttp); the prepaid default needs neither.
    from meterkit.sessions.sources import ChannelSource

# Completion, PaidStream, EXHAUSTED and Emit live in `meterkit.sessions.stream`; they are
# named here too, where library code has always imported them from.
__all__ = [
    "CHANNEL_HINT",
    "EXHAUSTED",
    "Completion",
    "Emit",
    "PaidStream",
    "Receipted",
    "SessionMeter",
]

log = logging.getLogger("meterkit.sessions")

# A request may name the channel it will pay from; the 402's session challenges then carry it
# as `methodDetails.channelId` (a client such as mppx's then reads that channel on chain and
# pays from it instead of opening one). Only a hint: the credential's own channel is checked.
CHANNEL_HINT = "Payment-Channel-Id"
_HEX32 = re.compile(r"^0x[0-9a-fA-F]{64}$")
# How long a close waits for this process's streams on the channel to end and settle.
CLOSE_WAIT = 5.0

# Told what happened, for metrics: ("voucher" | "need_voucher", the session method).
EventHook = Callable[[str, str], None]


def _prepaid(store: ChannelStore) -> ChannelSource:
    from meterkit.sessions.sources import PrepaidSource

    return PrepaidSource(store)


def _money(value: str | Decimal | int) -> Decimal:
    if isinstance(value, Decimal | int):
        return Decimal(value)
    return parse_money(value if value.startswith("$") else "$" + value)


class SessionMeter:
    """Sells a stream per delivered token over MPP session channels (see the module doc).

    `offers`: one per accepted asset (`session_offers`, or build the meter with `build` /
    `from_terms`). `realm`: the challenges' protection space; None: the request's host,
    passed as `host=` to each call. `source`: where channels come from (default: prepaid
    deposits in `store`). `hub`: shared by every meter on one store in a process (the proxy
    has one per route); made here when not given."""

    def __init__(
        self,
        store: ChannelStore,
        offers: Sequence[SessionOffer],
        *,
        secret: str | bytes,
        realm: str | None = None,
        source: ChannelSource | None = None,
        hub: Hub | None = None,
        voucher_timeout: float = 30.0,
        expires: float = 300.0,
        description: str | None = None,
        on_event: EventHook | None = None,
        clock: Callable[[], float] = time.time,
        credential_header: str | None = None,
    ) -> None:
        self.store = store
        # Where clients send vouchers: None for `Authorization`, or a field such as
        # `Payment-Authorization` for clients that keep `Authorization: Bearer` for their
        # API key beside the voucher (advertised in, and bound by, each challenge).
        self.credential_header = mpp.advertised_header(credential_header)
        self.offers = list(offers)
        self.secret = secret.encode() if isinstance(secret, str) else secret
        self.realm = realm
        # Channels are read from the source (prepaid: the store itself; on chain: the
        # escrow, cached); the money state (accepted, spent, units) is the store's.
        self.source: ChannelSource = source or _prepaid(store)
        self.hub = hub or Hub(store)
        self.voucher_timeout = voucher_timeout
        self.expires = expires
        self.description = description
        self.on_event = on_event
        # Wall-clock time for the stream's store steps (hold leases, receipt timestamps);
        # admission takes `now` from its caller instead.
        self.clock = clock

    @classmethod
    def from_terms(
        cls,
        store: ChannelStore,
        terms: SessionTerms,
        accepts: Sequence[Accept],
        *,
        secret: str | bytes,
        source: ChannelSource | None = None,
        **options: Any,
    ) -> SessionMeter:
        """From the config's dataclasses: a route's `session:` terms and the `accepts`."""
        src = source or _prepaid(store)
        offers = session_offers(terms, accepts, src.escrow)
        return cls(
            store,
            offers,
            secret=secret,
            source=src,
            voucher_timeout=terms.voucher_timeout,
            **options,
        )

    @classmethod
    def build(
        cls,
        store: ChannelStore,
        *,
        price: str | Decimal,
        pay_to: str,
        secret: str | bytes,
        asset: str | Asset = "USDC",
        network: str = "base-sepolia",
        prompt_price: str | Decimal = "$0",
        suggested_deposit: str | Decimal | None = None,
        min_voucher_delta: str | Decimal = "$0",
        voucher_timeout: float = 30.0,
        **options: Any,
    ) -> SessionMeter:
        """From plain values: prices in currency units ("$0.00001" or a Decimal) per token,
        an asset known to meterkit by symbol and network (or an `Asset`), and the address
        paid. Prices must be whole base units of the asset (a `ValueError` otherwise: a
        price is never rounded in silence)."""
        if isinstance(asset, Asset):
            a = asset
        else:
            found = KNOWN_ASSETS.get((asset, network))
            if found is None:
                known = ", ".join(f"{s} on {n}" for s, n in KNOWN_ASSETS)
                raise ValueError(f"unknown asset {asset} on {network} (known: {known})")
            a = found
        terms = SessionTerms(
            _money(price),
            _money(prompt_price),
            _money(suggested_deposit) if suggested_deposit is not None else None,
            _money(min_voucher_delta),
            voucher_timeout,
        )
        if terms.price <= 0:
            raise ValueError("a session price per token must be above zero")
        for name, v in (
            ("price", terms.price),
            ("prompt_price", terms.prompt_price),
            ("min_voucher_delta", terms.min_voucher_delta),
            ("suggested_deposit", terms.suggested_deposit),
        ):
            if v is not None and (v * 10**a.decimals) % 1:
                raise ValueError(f"{name} {v} is not a whole number of {a.symbol} base units")
        return cls.from_terms(store, terms, [Accept(a, pay_to)], secret=secret, **options)

    async def open(self) -> None:
        """Open the store (for a meter that owns it; the proxy opens its own) and start
        listening for vouchers accepted elsewhere."""
        await self.store.open()
        self.hub.start()

    async def close(self) -> None:
        """Stop the hub's polling, close the source and the store."""
        await self.hub.close()
        await self.source.aclose()
        await self.store.close()

    async def __aenter__(self) -> SessionMeter:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ---- the 402 ------------------------------------------------------------------------

    def _realm(self, host: str | None) -> str:
        realm = self.realm or host
        if not realm:
            raise ValueError("give the meter a realm, or pass the request's host")
        return realm

    def challenges(
        self, now: float, *, host: str | None = None, channel_hint: str | None = None
    ) -> list[mpp.Challenge]:
        """The session challenges of a 402 (`WWW-Authenticate` values: `c.header()`), one
        per offer and method. `channel_hint`: the request's `Payment-Channel-Id`."""
        hint = channel_hint or ""
        return session_challenges(
            self.secret,
            self._realm(host),
            self.offers,
            mpp.rfc3339(now + self.expires),
            self.description,
            channel_id=hint.lower() if _HEX32.match(hint) else None,
            header=self.credential_header,
        )

    def problem(
        self,
        e: PaymentProblem,
        now: float,
        *,
        host: str | None = None,
        channel_hint: str | None = None,
    ) -> Problem:
        """A refusal as problem details: fresh challenges when the client may pay again,
        `Retry-After` when it may retry."""
        headers: list[tuple[str, str]] = []
        if e.fresh_challenge:
            headers = [
                ("WWW-Authenticate", c.header())
                for c in self.challenges(now, host=host, channel_hint=channel_hint)
            ]
        return e.problem(headers)

    def payment_required(
        self, now: float, *, host: str | None = None, channel_hint: str | None = None
    ) -> Problem:
        """The 402 of a request without a session credential: the challenges."""
        e = PaymentRequired(
            "this route is paid per token over a payment channel", reason="no_credential"
        )
        return self.problem(e, now, host=host, channel_hint=channel_hint)

    # ---- admission ----------------------------------------------------------------------

    @staticmethod
    def credential(headers: Mapping[str, str]) -> mpp.Credential | None:
        """The request's session credential; None when it has none, or one of another
        intent (a one-time charge). A malformed one raises its `PaymentProblem`."""
        found = mpp.request_credential(headers)
        if found is None:
            return None
        cred = mpp.decode_credential(found[1])
        return cred if cred.challenge.intent == "session" else None

    async def admit(
        self,
        headers: Mapping[str, str],
        *,
        method: str,
        has_body: bool,
        now: float,
        host: str | None = None,
    ) -> PaidStream | Receipted | None:
        """Admit a request by its credential (see `admit_credential`); None: it carries no
        session credential (answer `payment_required`)."""
        found = mpp.request_credential(headers)
        cred = self.credential(headers)
        if found is None or cred is None:
            return None
        return await self.admit_credential(
            cred, method=method, has_body=has_body, now=now, host=host, field=found[0]
        )

    async def answer(
        self,
        headers: Mapping[str, str],
        *,
        method: str,
        has_body: bool,
        now: float,
        host: str | None = None,
    ) -> PaidStream | Rendered:
        """`admit`, with every answer that is not a paid stream as a framework-free response:
        the 402 (no session credential), a 204 receipt (a voucher, a top-up, a close), or a
        refusal's problem details. What a web framework's adapter turns into its response."""
        hint = headers.get(CHANNEL_HINT)
        try:
            admitted = await self.admit(
                headers, method=method, has_body=has_body, now=now, host=host
            )
        except PaymentProblem as e:
            return self.refusal(e, now, host=host, channel_hint=hint)
        if admitted is None:
            return render(self.payment_required(now, host=host, channel_hint=hint))
        if isinstance(admitted, Receipted):
            return Rendered(admitted.status, list(admitted.headers.items()), b"")
        return admitted

    def refusal(
        self,
        e: PaymentProblem,
        now: float,
        *,
        host: str | None = None,
        channel_hint: str | None = None,
    ) -> Rendered:
        """A refusal rendered as problem details (`problem`, ready to send)."""
        return render(self.problem(e, now, host=host, channel_hint=channel_hint))

    def offer_for(self, ch: mpp.Challenge, now: float, host: str | None = None) -> SessionOffer:
        """The offer an echoed challenge was issued for; raises when it was not issued here,
        altered, expired, or its terms are no longer offered."""
        if not ch.bound(self.secret):
            raise InvalidChallenge(
                "the challenge id does not match its terms (not issued here, or altered)",
                reason="hmac",
            )
        if ch.method not in METHODS:
            raise MethodUnsupported(
                f"session method {ch.method!r} is not accepted", reason="method"
            )
        if ch.realm != self._realm(host):
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
                for o in self.offers
                if o.request(hint if isinstance(hint, str) else None) == ch.request_json
            ),
            None,
        )
        if offer is None:
            raise InvalidChallenge(
                "the challenge's terms are not this route's terms now", reason="terms"
            )
        return offer

    async def admit_credential(
        self,
        cred: mpp.Credential,
        *,
        method: str,
        has_body: bool,
        now: float,
        host: str | None = None,
        field: str = mpp.AUTHORIZATION,
    ) -> PaidStream | Receipted:
        """Check a session credential's challenge and voucher, in the session specs' order,
        and make an accepted voucher durable. A request with no body (POST or HEAD) only
        manages the channel — a new voucher, a close — and is answered `Receipted` (204);
        any other request is a `PaidStream` to `open`. Refusals raise `PaymentProblem`s.
        `field`: the header the credential came in, which must be the one its challenge
        asked for."""
        ch = cred.challenge
        offer = self.offer_for(ch, now, host)
        if field.lower() != ch.credential_header.lower():
            raise InvalidChallenge(
                f"the challenge asked for the credential in {ch.credential_header}, not {field}",
                reason="header",
            )
        p = wire.parse_payload(cred.payload)
        if p.action == "topUp":
            return await self._top_up(ch, offer, p, now)
        assert p.cumulative_amount is not None and p.signature is not None
        channel = self._ours(
            await self.source.get(p.channel_id, at_least=p.cumulative_amount), offer
        )
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
            self.event("voucher", ch.method)
        elif not has_body and not self.hub.allow_voucher(p.channel_id, now):
            # A voucher that buys nothing new, again and again (a client answering every
            # repeated need-voucher): limited. A voucher that raises the total never is.
            raise TooManyVouchers("too many vouchers on this channel; slow down", reason="rate")
        assert channel is not None
        paid = PaidStream(self, p.channel_id, ch.method, ch.id, offer, channel.payer)
        if p.action == "close":
            # This process's streams on the channel end first, with their format's ending,
            # and are charged what they delivered (issue 19 #4: tokens sent after a close
            # were charged to `spent` and never settled).
            left = await self.hub.end_streams(p.channel_id, CLOSE_WAIT)
            if left:
                log.warning(
                    "channel closed while streams still ran",
                    extra={"channel": p.channel_id, "streams": left},
                )
            channel = await self.source.get(p.channel_id) or channel
            # Capture what was consumed, never more: max(spent, settled).
            settled = max(channel.spent, channel.settled)
            tx = await self.source.close(channel, settled)
            if tx is not None:
                paid.extra["txHash"] = tx
            closed = await self.store.get(p.channel_id)
            assert closed is not None
            return Receipted(paid, paid.receipt(closed, now))
        if not has_body and method.upper() in ("POST", "HEAD"):
            return Receipted(paid, paid.receipt(channel, now))
        return paid

    @staticmethod
    def _ours(channel: Channel | None, offer: SessionOffer) -> Channel | None:
        """A channel for another chain, asset or payee is no channel here."""
        if channel is not None and (
            channel.chain_id != offer.chain_id
            or channel.token.lower() != offer.accept.asset.address.lower()
            or channel.payee.lower() != offer.accept.pay_to.lower()
        ):
            return None
        return channel

    async def _top_up(
        self, ch: mpp.Challenge, offer: SessionOffer, p: wire.SessionPayload, now: float
    ) -> Receipted:
        """A `topUp` the payer sent on chain itself (`type: "hash"`): the deposit is re-read
        now, so vouchers up to the new deposit are accepted at once. Relayed top-ups
        (`authorization`, `permit2`: the gateway would submit them) are not offered."""
        if p.tx_hash is None:
            raise MethodUnsupported(
                f"top-ups of type {p.open_type!r} are not offered here: send the escrow's "
                "topUp yourself and its transaction hash (type: hash)",
                reason="top_up_type",
            )
        channel = self._ours(await self.source.topped_up(p.channel_id, p.tx_hash), offer)
        if channel is None:
            raise ChannelNotFound("no such channel here", reason="channel")
        if channel.finalized:
            raise ChannelFinalized("the channel is closed; open a new one", reason="finalized")
        self.event("top_up", ch.method)
        paid = PaidStream(self, p.channel_id, ch.method, ch.id, offer)
        return Receipted(paid, paid.receipt(channel, now))

    def event(self, name: str, method: str) -> None:
        """Tell the metrics hook (`on_event`) what happened: voucher, top_up, need_voucher."""
        if self.on_event is not None:
            self.on_event(name, method)

    # ---- prepaid channels ---------------------------------------------------------------

    async def credit(
        self,
        payer: str,
        amount: str | Decimal | int,
        *,
        salt: str | None = None,
        signer: str = ZERO_ADDRESS,
        offer: int = 0,
    ) -> Channel:
        """Credit a prepaid deposit to `payer`'s channel for this meter's asset (created
        when new; what `meterkit channel credit` does). `amount`: currency units as a string
        or Decimal ("$5"), or base units as an int. `salt` names the channel among the
        payer's (default: zero, one channel per payer and asset)."""
        o = self.offers[offer]
        a = o.accept.asset
        base = amount if isinstance(amount, int) else base_units(_money(amount), a)
        ch = prepaid_channel(
            payer, o.accept.pay_to, a.address, a.chain_id, salt or "0x" + "00" * 32, signer
        )
        return await self.store.credit(ch, base)


@dataclass
class Receipted:
    """A request that only managed its channel (a voucher, a close): answer `status` (204)
    with `headers` (`Payment-Receipt`); nothing is streamed. `account`: the channel it
    was about, as the request's paid-stream state (nothing charged)."""

    account: PaidStream
    receipt: dict[str, Any]
    status: int = 204

    @property
    def headers(self) -> dict[str, str]:
        return receipt_headers(self.receipt)

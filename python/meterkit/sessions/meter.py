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

The flow of a paid stream (the wire is the README's "Paid per token" section): its prompt
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

import asyncio
import contextlib
import itertools
import logging
import re
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterable, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from meterkit import StreamMeter
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
    HOLD_TOKENS,
    ZERO_ADDRESS,
    Channel,
    Draw,
    Drawn,
    accept,
    prepaid_channel,
)
from meterkit.sessions.hub import Hub
from meterkit.sessions.offers import METHODS, SessionOffer, session_challenges, session_offers
from meterkit.sessions.problems import (
    ChannelFinalized,
    ChannelNotFound,
    InsufficientBalance,
    TooManyVouchers,
)
from meterkit.sessions.store import ChannelStore

if TYPE_CHECKING:
    # The sources reach the chain client (aiohttp); the prepaid default needs neither.
    from meterkit.sessions.sources import ChannelSource

__all__ = [
    "CHANNEL_HINT",
    "Completion",
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

# Writes bytes to the client between two LLM events while a stream is paused.
Emit = Callable[[bytes], Awaitable[None]]
# Told what happened, for metrics: ("voucher" | "need_voucher", the session method).
EventHook = Callable[[str, str], None]

EXHAUSTED = "the session's credit is exhausted: no voucher arrived in time"


def _prepaid(store: ChannelStore) -> ChannelSource:
    from meterkit.sessions.sources import PrepaidSource

    return PrepaidSource(store)


def _money(value: str | Decimal | int) -> Decimal:
    if isinstance(value, Decimal | int):
        return Decimal(value)
    return parse_money(value if value.startswith("$") else "$" + value)


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
            self._event("voucher", ch.method)
        elif not has_body and not self.hub.allow_voucher(p.channel_id, now):
            # A voucher that buys nothing new, again and again (a client answering every
            # repeated need-voucher): limited. A voucher that raises the total never is.
            raise TooManyVouchers("too many vouchers on this channel; slow down", reason="rate")
        assert channel is not None
        paid = PaidStream(self, p.channel_id, ch.method, ch.id, offer, channel.payer)
        if p.action == "close":
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
        self._event("top_up", ch.method)
        paid = PaidStream(self, p.channel_id, ch.method, ch.id, offer)
        return Receipted(paid, paid.receipt(channel, now))

    def _event(self, name: str, method: str) -> None:
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


_HOLD_PREFIX = uuid.uuid4().hex[:16] + "-"
_HOLDS = itertools.count(1)


class PaidStream:
    """One paid request's account on its channel: `open` charges its prompt and takes its
    first hold, `relay` (or the proxy's relay, through `more_credit` and `final_receipt`)
    streams it, `settle` charges what was delivered and gives the rest of the hold back."""

    def __init__(
        self,
        meter: SessionMeter,
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
        self.credit = out.granted // offer.price
        self.headers = receipt_headers(self.receipt(out.channel, self.meter.clock()))
        return self.credit

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
                    meter._event("need_voucher", self.method)
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
        out = await asyncio.shield(self._step(delivered, release=True))
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

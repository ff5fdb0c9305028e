"""Claiming an authorization: the durable "this one is mine to settle" (see
`payments.ledger`), what a second request with the same authorization is told, and how a
claim left by a dead process is noticed.

The decisions are pure functions of a `Claim` and `now`; `take` is the one loop that talks to
the ledger: insert the claim, or wait while the request that holds it settles, then either
serve a paid-but-undelivered request again (no second charge) or refuse the replay.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

import orjson

from meterkit.payments import evm
from meterkit.payments.ledger import Claim, Ledger
from meterkit.payments.problems import Replayed
from meterkit.payments.verify import Verified

T = TypeVar("T")

# How long a duplicate request waits for the first one's settlement outcome.
CLAIM_WAIT = 15.0
# A claim still in flight (pending, settling, or paid with no delivery outcome) that nobody
# touched for this long belongs to a request whose process died: it is resolved as at
# startup. Long enough for any settlement timeout and any stream that is still running.
STALE_CLAIM = 600.0
PAID = ("settled", "queued")


class Bounded(Protocol):
    """A ledger call made bounded (a timeout, outages as a 503): the stage's `_ledger`."""

    def __call__(self, call: Awaitable[T], /) -> Awaitable[T]: ...


def new_claim(v: Verified, route: str, request_id: str, holder: str | None = None) -> Claim:
    """The ledger row for a verified authorization, before anything was sent to a settler;
    `holder`: the gateway process whose lease keeps it (see `take`)."""
    asset = v.offer.accept.asset
    return Claim(
        holder=holder,
        claim_key=evm.claim_key(v.auth, asset),
        status="pending",
        protocol=v.protocol,
        network=asset.caip2,
        asset=asset.address,
        payer=v.payer,
        pay_to=v.offer.accept.pay_to,
        amount=str(v.offer.amount),
        nonce=v.auth.nonce,
        valid_before=v.auth.valid_before,
        route=route,
        request_id=request_id,
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


def in_flight(c: Claim) -> bool:
    """Another request is settling it: wait for the outcome."""
    return c.status in ("pending", "settling")


def stale(c: Claim, now: float) -> bool:
    """Untouched for `STALE_CLAIM` seconds: its request's process died."""
    return c.updated_at < now - STALE_CLAIM


def unresolved(c: Claim) -> bool:
    """In flight, or paid with no delivery outcome: its request is still running, or died."""
    return in_flight(c) or (c.status in PAID and c.delivery is None)


def orphaned(c: Claim, now: float, holder_alive: bool | None = None) -> bool:
    """Unresolved, and its request cannot still be running: its holder's lease has run
    out (`holder_alive` False), or — a row without a holder — nobody touched it for
    `STALE_CLAIM` seconds."""
    if not unresolved(c):
        return False
    if c.holder is not None and holder_alive is not None:
        return not holder_alive
    return stale(c, now)


def redeliverable(c: Claim) -> bool:
    """Paid for a request whose response never reached the client: served once more."""
    return c.status in PAID and c.delivery == "undelivered"


def replay_detail(claim: Claim, now: float) -> str:
    """Why an authorization that another request claimed cannot pay for this one, truly."""
    if claim.status in PAID:
        if claim.delivery == "delivered":
            return "this authorization has already paid for a request, which was delivered"
        if claim.delivery == "undelivered":
            return "this authorization's undelivered request is being served again"
        return "this authorization has paid for a request that is still being answered"
    if claim.status == "unknown":
        return (
            "the settlement of this authorization has an unknown outcome; it is never "
            "charged twice, and it pays for nothing more until that is reconciled"
        )
    if claim.status == "expired":
        return "this authorization expired in the settlement queue; nothing was charged"
    return "this authorization is being settled by another request"


@dataclass(frozen=True)
class Taken:
    """The claim is this request's: a new one, or (`redelivery`) a paid claim whose request
    was never delivered, taken over to serve it again without a second charge."""

    key: str
    redelivery: Claim | None = None


async def take(
    ledger: Ledger,
    claim: Claim,
    *,
    call: Bounded,
    recover: Callable[[float], Awaitable[object]],
    clock: Callable[[], float] = time.time,
    reconcile: Callable[[Claim], Awaitable[object]] | None = None,
) -> Taken:
    """Claim `claim` for its request, or wait for the request that holds it. `call` bounds
    each ledger call (the stage's timeout and outage handling); `recover(older_than)`
    resolves claims left by dead processes; `reconcile(claim)`, where the settlement can be
    checked (on chain), settles an `unknown` outcome against the ground truth, so the payer
    who comes back is served (or may pay again) instead of refused. Raises `Replayed` when
    the authorization paid (or is paying) for another request."""
    for _ in range(3):
        won, existing = await call(ledger.claim(claim))
        if won:
            return Taken(claim.claim_key)
        existing = await _outcome(ledger, existing, call, recover, clock)
        if existing is not None and existing.status == "unknown" and reconcile is not None:
            await reconcile(existing)
            existing = await _outcome(
                ledger, await call(ledger.get_claim(claim.claim_key)), call, recover, clock
            )
        if existing is None:
            continue  # released meanwhile: nothing was settled; claim it again
        if redeliverable(existing) and await call(
            ledger.take_redelivery(claim.claim_key, claim.request_id, claim.holder)
        ):
            return Taken(claim.claim_key, existing)
        raise Replayed(
            replay_detail(existing, clock()), reason="replay", reference=existing.reference
        )
    raise Replayed("this authorization is being settled by another request", reason="replay")


async def _outcome(
    ledger: Ledger,
    existing: Claim | None,
    call: Bounded,
    recover: Callable[[float], Awaitable[object]],
    clock: Callable[[], float],
) -> Claim | None:
    """Wait while another request settles the same authorization; None if it released the
    claim (nothing was settled), else the finished claim. A claim whose process died
    (`orphaned`: its holder's lease ran out) is resolved first — within a lease of the
    death, not after a fixed age."""

    async def dead(c: Claim) -> bool:
        alive = None if c.holder is None else await call(ledger.holder_alive(c.holder, clock()))
        return orphaned(c, clock(), alive)

    deadline = time.monotonic() + CLAIM_WAIT
    # Also while paid with no delivery outcome: its request may still answer, or its
    # process may have died (then its lease runs out within `ledger.lease`).
    while existing is not None and unresolved(existing):
        if await dead(existing):
            await recover(clock() - STALE_CLAIM)
        elif time.monotonic() >= deadline:
            break
        else:
            await asyncio.sleep(0.05)
        existing = await call(ledger.get_claim(existing.claim_key))
    return existing

"""`meterkit ledger settle`: deferred authorizations reach the chain, and the ledger agrees
with it afterwards.

Three passes, each safe to repeat and to interrupt:
1. expire: queued authorizations past `validBefore` can never settle (status `expired`);
2. reconcile: claims left `pending` by a crashed proxy (older than `stale_after`) or
   `unknown` after a timeout are checked against the chain — `authorizationState(from,
   nonce)` is the ground truth. Used: `settled`, with the journaled transaction (or the one
   its `AuthorizationUsed` event names). Unused and nothing in flight: released (`pending`:
   the payer may pay again) or `failed` (`unknown`: the client was told the outcome was
   unknown; the row stays so the authorization is never taken twice).
3. submit: every queued authorization still valid, in parallel up to `concurrency`, with
   `retries` for an unreachable node. The chain is asked first: an authorization already
   used (an earlier run that crashed after sending, a `ledger export` submitted elsewhere) is
   recorded as settled, never sent again. A row moves out of `queued` only through
   `Ledger.transition`, so two runs at once cannot both record it.

Status per row: `settled`, `failed` (the chain refused it: a reverted simulation, e.g. the
payer's balance), `expired`, `released`, or `pending` (still in flight or the node was
unreachable: run again).
"""

from __future__ import annotations

import asyncio
from dataclasses import asdict, dataclass
from typing import Any

import orjson

from meterkit.config.payments import Asset
from meterkit.payments.evm import Authorization, parse_authorization
from meterkit.payments.ledger import Claim, Ledger
from meterkit.payments.onchain import OnchainSettler
from meterkit.payments.problems import ChainUnavailable, SettlementFailed, SettlementUnknown


@dataclass(frozen=True)
class RowResult:
    claim_key: str
    status: str  # settled | failed | expired | released | pending
    step: str  # expire | reconcile | submit
    reference: str | None = None
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _parse(claim: Claim) -> tuple[Asset, Authorization]:
    data = orjson.loads(claim.authorization_json)
    chain_id = int(data.get("chainId") or claim.network.removeprefix("eip155:"))
    asset = Asset("?", claim.network, chain_id, str(data.get("token") or claim.asset), 6, "", "")
    return asset, parse_authorization(data["authorization"], data["signature"])


async def _used_by(
    settler: OnchainSettler, ledger: Ledger, claim: Claim, asset: Asset, auth: Authorization
) -> str:
    """The transaction that used a used authorization: a journaled one that mined, else the
    one its event names, else a marker that the chain says it is used."""
    for tx in reversed(await ledger.sent_transactions(claim.claim_key)):
        r = await settler.receipt(tx)
        if r is not None and r.get("status") == "0x1":
            return tx
    found = await settler.find_transfer(asset, auth.from_address, auth.nonce)
    if found is not None:
        return found.tx_hash
    return f"chain:authorizationState:{auth.nonce}"


async def _in_flight(settler: OnchainSettler, txs: list[str]) -> bool:
    """Is a journaled transaction known to the node and not mined yet?"""
    for tx in txs:
        if await settler.receipt(tx) is not None:
            continue
        try:
            if await settler.rpc.call("eth_getTransactionByHash", tx) is not None:
                return True
        except Exception:
            return True  # cannot tell: do not give up on it
    return False


async def reconcile(settler: OnchainSettler, ledger: Ledger, claim: Claim) -> RowResult:
    key = claim.claim_key
    asset, auth = _parse(claim)
    try:
        if await settler.authorization_used(asset, auth.from_address, auth.nonce):
            ref = await _used_by(settler, ledger, claim, asset, auth)
            await ledger.transition(
                key, ("pending", "settling", "unknown"), "settled", ref, None, "reconcile"
            )
            return RowResult(key, "settled", "reconcile", ref)
        txs = await ledger.sent_transactions(key)
        if await _in_flight(settler, txs):
            return RowResult(key, "pending", "reconcile", txs[-1], "transaction in flight")
    except ChainUnavailable as e:
        return RowResult(key, "pending", "reconcile", None, str(e))
    why = "reconciled: the authorization was never used on chain"
    if claim.status in ("pending", "settling") and not txs:
        # Nothing was ever sent for it: the payer was not charged and may pay again.
        await ledger.release_claim(key, why)
        return RowResult(key, "released", "reconcile", None, why)
    await ledger.transition(
        key, ("pending", "settling", "unknown"), "failed", None, why, "reconcile"
    )
    return RowResult(key, "failed", "reconcile", None, why)


async def submit(
    settler: OnchainSettler, ledger: Ledger, claim: Claim, retries: int, backoff: float
) -> RowResult:
    key = claim.claim_key
    asset, auth = _parse(claim)
    last = ""
    for attempt in range(retries + 1):
        if attempt:
            await asyncio.sleep(backoff * 2 ** (attempt - 1))
        try:
            if await settler.authorization_used(asset, auth.from_address, auth.nonce):
                ref = await _used_by(settler, ledger, claim, asset, auth)
                await ledger.transition(key, ("queued",), "settled", ref, None, "reconcile")
                return RowResult(key, "settled", "submit", ref, "already used on chain")
            tx = await settler.submit(asset, auth, key)
        except ChainUnavailable as e:
            last = str(e)
            continue
        except SettlementFailed as e:
            await ledger.transition(key, ("queued",), "failed", None, str(e), settler.name)
            return RowResult(key, "failed", "submit", None, str(e))
        except SettlementUnknown as e:
            # Maybe on its way: the next run asks the chain first.
            return RowResult(key, "pending", "submit", None, str(e))
        await ledger.transition(key, ("queued",), "settled", tx, None, settler.name)
        return RowResult(key, "settled", "submit", tx)
    return RowResult(key, "pending", "submit", None, last)


async def settle_ledger(
    ledger: Ledger,
    settler: OnchainSettler,
    *,
    now: float,
    stale_after: float,
    concurrency: int = 4,
    retries: int = 3,
    backoff: float = 1.0,
) -> list[RowResult]:
    """Expire, reconcile, submit (see the module docstring); one result per row touched."""
    results = [
        RowResult(str(r["claim_key"]), "expired", "expire", None, "expired before it settled")
        for r in await ledger.expire_queued(now, mark=True)
    ]
    sem = asyncio.Semaphore(concurrency)

    async def bounded(job: Any) -> RowResult:
        async with sem:
            result: RowResult = await job
            return result

    stale = await ledger.unsettled(("pending", "settling", "unknown"), now - stale_after)
    results += await asyncio.gather(*(bounded(reconcile(settler, ledger, c)) for c in stale))
    queued = await ledger.queued(now)
    results += await asyncio.gather(
        *(bounded(submit(settler, ledger, c, retries, backoff)) for c in queued)
    )
    return results

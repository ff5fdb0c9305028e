"""Where budget state lives: in memory (one process, the embedded default) or in Redis
(several proxy instances; atomic Lua scripts running the arithmetic of `policy.py`)."""

from __future__ import annotations

import heapq
import time
from dataclasses import dataclass
from typing import Protocol

from meterkit.budgets import policy
from meterkit.budgets.policy import Bucket, Day, Decision, Limits, Standing


class BackendUnavailable(Exception):
    """The budget store could not be reached; the policy decides fail-open or fail-closed."""


@dataclass(frozen=True)
class Identity:
    """One budget: a policy name and the (already hashed) identity it is keyed by."""

    policy: str
    key: str

    @property
    def slug(self) -> str:
        return f"{self.policy}:{self.key}"


class BudgetBackend(Protocol):
    name: str

    async def admit(
        self,
        who: Identity,
        limits: Limits,
        need: int,
        take: int,
        request_id: str,
        lease_ttl: float,
        now: float | None = None,
    ) -> Decision: ...

    async def lease(
        self,
        who: Identity,
        limits: Limits,
        want: int,
        request_id: str,
        lease_ttl: float,
        now: float | None = None,
    ) -> int: ...

    async def reconcile(
        self, who: Identity, limits: Limits, request_id: str, actual: int, now: float | None = None
    ) -> int | None:
        """Replace what the request took by `actual`; the refund (negative: overage charged),
        or None when it was already reconciled (or its lease expired)."""

    async def standing(self, who: Identity, limits: Limits, now: float | None = None) -> Standing:
        """Where `who`'s budget stands; takes nothing."""

    async def grant(
        self, who: Identity, limits: Limits, tokens: int, now: float | None = None
    ) -> Standing:
        """Add `tokens` to `who`'s allowance for the current UTC day, effective for the next
        admission (ValueError: the budget has no daily limit, or tokens ≤ 0)."""

    async def reset(self, who: Identity, limits: Limits, now: float | None = None) -> Standing:
        """Forget `who`'s usage: a full bucket and nothing used today (grants dropped too)."""

    async def close(self) -> None: ...


@dataclass
class _Reservation:
    who: Identity
    taken: int
    day: int
    expires: float


class MemoryBackend:
    """Budget state in this process. Reservations are leases: a request that never reconciles
    (its handler died) stops holding a reservation record after `lease_ttl`; what it took
    stays taken, and the bucket refills as for any other use."""

    name = "memory"

    def __init__(self) -> None:
        self.buckets: dict[Identity, Bucket] = {}
        self.days: dict[Identity, Day] = {}
        self.reservations: dict[str, _Reservation] = {}
        self._expiry: list[tuple[float, str]] = []

    def _now(self, now: float | None) -> float:
        return time.time() if now is None else now

    def _expire(self, now: float) -> None:
        while self._expiry and self._expiry[0][0] <= now:
            _, rid = heapq.heappop(self._expiry)
            r = self.reservations.get(rid)
            if r is not None and r.expires <= now:
                del self.reservations[rid]

    def _hold(self, rid: str, who: Identity, taken: int, day: int, expires: float) -> None:
        r = self.reservations.get(rid)
        if r is None:
            self.reservations[rid] = _Reservation(who, taken, day, expires)
        else:
            r.taken += taken
            r.expires = expires
        heapq.heappush(self._expiry, (expires, rid))

    async def admit(
        self,
        who: Identity,
        limits: Limits,
        need: int,
        take: int,
        request_id: str,
        lease_ttl: float,
        now: float | None = None,
    ) -> Decision:
        t = self._now(now)
        self._expire(t)
        d, b, day = policy.admit(self.buckets.get(who), self.days.get(who), limits, t, need, take)
        self.buckets[who], self.days[who] = b, day
        if d.allowed:
            self._hold(request_id, who, take, day.day, t + lease_ttl)
        return d

    async def lease(
        self,
        who: Identity,
        limits: Limits,
        want: int,
        request_id: str,
        lease_ttl: float,
        now: float | None = None,
    ) -> int:
        t = self._now(now)
        self._expire(t)
        grant, b, day = policy.lease(self.buckets.get(who), self.days.get(who), limits, t, want)
        self.buckets[who], self.days[who] = b, day
        self._hold(request_id, who, grant, day.day, t + lease_ttl)
        return grant

    async def reconcile(
        self, who: Identity, limits: Limits, request_id: str, actual: int, now: float | None = None
    ) -> int | None:
        t = self._now(now)
        self._expire(t)
        r = self.reservations.pop(request_id, None)
        if r is None:
            return None
        delta, b, day = policy.reconcile(
            self.buckets.get(who), self.days.get(who), limits, t, r.taken, actual, r.day
        )
        self.buckets[who], self.days[who] = b, day
        return delta

    async def standing(self, who: Identity, limits: Limits, now: float | None = None) -> Standing:
        return policy.standing(self.buckets.get(who), self.days.get(who), limits, self._now(now))

    async def grant(
        self, who: Identity, limits: Limits, tokens: int, now: float | None = None
    ) -> Standing:
        t = self._now(now)
        self.days[who] = policy.grant(self.days.get(who), limits, t, tokens)
        return await self.standing(who, limits, t)

    async def reset(self, who: Identity, limits: Limits, now: float | None = None) -> Standing:
        self.buckets.pop(who, None)
        self.days.pop(who, None)
        return await self.standing(who, limits, now)

    async def close(self) -> None:
        pass

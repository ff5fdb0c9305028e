"""Redis budget backend: the arithmetic of `policy.py` as Lua scripts, so that every decision
is one atomic round trip and any number of proxy instances share one budget.

Keys (all under the configured prefix): `{policy}:{key}:tpm` (hash tokens/updated, expires
once the bucket would be full again), `{policy}:{key}:tpd` (hash day/used/granted, expires
after two days; `granted` is what an operator added to today's allowance), `res:{request_id}` (hash taken/day: the reservation lease, expires after lease_ttl).
Time: the scripts use the `now` they are given (tests inject it) or the Redis server's TIME,
so instances with skewed clocks still agree.
"""

from __future__ import annotations

from typing import Any

from meterkit.budgets import policy
from meterkit.budgets.backends import BackendUnavailable, Identity
from meterkit.budgets.policy import Bucket, Day, Decision, Limits, Standing

_PRELUDE = """
local now = tonumber(ARGV[1])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local cap = tonumber(ARGV[2])
local rate = tonumber(ARGV[3])
local tpd = tonumber(ARGV[4])
local day = math.floor(now / 86400)
local tokens, updated, used, granted = nil, nil, 0, 0
if cap then
  local h = redis.call('HMGET', KEYS[1], 'tokens', 'updated')
  tokens, updated = tonumber(h[1]), tonumber(h[2])
  if not tokens then tokens, updated = cap, now end
  local el = now - updated
  if el < 0 then el = 0 end
  tokens = math.min(cap, tokens + el * rate)
  if now > updated then updated = now end
end
if tpd then
  local h = redis.call('HMGET', KEYS[2], 'day', 'used', 'granted')
  if tonumber(h[1]) == day then used = tonumber(h[2]); granted = tonumber(h[3]) or 0 end
  -- From here on tpd is today's allowance: the limit plus what an operator granted.
  tpd = tpd + granted
end
-- %.17g round-trips a double exactly (tostring keeps 14 digits: sub-millisecond time lost).
local function num(x) return string.format('%.17g', x) end
local function save()
  if cap then
    redis.call('HSET', KEYS[1], 'tokens', num(tokens), 'updated', num(updated))
    local ttl = 120
    if rate > 0 then ttl = math.ceil(cap / rate) + 60 end
    redis.call('EXPIRE', KEYS[1], ttl)
  end
  if tpd then
    redis.call('HSET', KEYS[2], 'day', day, 'used', used, 'granted', granted)
    redis.call('EXPIRE', KEYS[2], 2 * 86400)
  end
end
"""

ADMIT = (
    _PRELUDE
    + """
local need, take, ttl = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local left_tpm = tokens and num(tokens) or ''
local left_tpd = tpd and tostring(tpd - used) or ''
if cap and tokens < need then
  local retry = ''
  if need <= cap and rate > 0 then retry = tostring(math.ceil((need - tokens) / rate)) end
  return {0, 'tpm_exceeded', retry, left_tpm, left_tpd}
end
if tpd and used + need > tpd then
  local retry = ''
  if need <= tpd then retry = tostring(math.ceil((day + 1) * 86400 - now)) end
  return {0, 'tpd_exceeded', retry, left_tpm, left_tpd}
end
if cap then tokens = tokens - take end
used = used + take
save()
redis.call('HINCRBY', KEYS[3], 'taken', take)
redis.call('HSET', KEYS[3], 'day', day)
redis.call('EXPIRE', KEYS[3], math.ceil(ttl))
return {1, '', '', tokens and num(tokens) or '', tpd and tostring(tpd - used) or ''}
"""
)

LEASE = (
    _PRELUDE
    + """
local want, ttl = tonumber(ARGV[5]), tonumber(ARGV[6])
local grant = want
if cap then grant = math.min(grant, math.max(0, math.floor(tokens))) end
if tpd then grant = math.min(grant, math.max(0, tpd - used)) end
if cap then tokens = tokens - grant end
used = used + grant
save()
redis.call('HINCRBY', KEYS[3], 'taken', grant)
redis.call('HSETNX', KEYS[3], 'day', day)
redis.call('EXPIRE', KEYS[3], math.ceil(ttl))
return grant
"""
)

RECONCILE = (
    _PRELUDE
    + """
local actual = tonumber(ARGV[5])
local r = redis.call('HMGET', KEYS[3], 'taken', 'day')
if not r[1] then return {0, '0'} end
local delta = tonumber(r[1]) - actual
if cap then tokens = math.min(cap, tokens + delta) end
if tpd and tonumber(r[2]) == day then used = math.max(0, used - delta) end
save()
redis.call('DEL', KEYS[3])
return {1, num(delta)}
"""
)

GRANT = (
    _PRELUDE
    + """
if not tpd then return 0 end
granted = granted + tonumber(ARGV[5])
save()
return 1
"""
)


def _num(v: Any) -> str:
    return "" if v is None else repr(float(v))


class RedisBackend:
    name = "redis"

    def __init__(self, url: str, prefix: str = "meterkit:", timeout: float = 0.5) -> None:
        import redis.asyncio as redis

        self.prefix = prefix
        self.client = redis.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout, retry_on_timeout=False
        )
        self._admit = self.client.register_script(ADMIT)
        self._lease = self.client.register_script(LEASE)
        self._reconcile = self.client.register_script(RECONCILE)
        self._grant = self.client.register_script(GRANT)

    def _keys(self, who: Identity, request_id: str) -> list[str]:
        base = f"{self.prefix}{who.policy}:{who.key}"
        return [f"{base}:tpm", f"{base}:tpd", f"{self.prefix}res:{request_id}"]

    def _args(self, limits: Limits, now: float | None) -> list[str]:
        return [_num(now), _num(limits.capacity), repr(limits.rate), _num(limits.tokens_per_day)]

    async def _call(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        import redis.exceptions

        try:
            return await script(keys=keys, args=args)
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError) as e:
            raise BackendUnavailable(f"redis: {e}") from e

    async def ping(self) -> None:
        """Readiness: raises when Redis does not answer."""
        await self.client.ping()

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
        r = await self._call(
            self._admit,
            self._keys(who, request_id),
            [*self._args(limits, now), need, take, lease_ttl],
        )
        ok, reason, retry, tpm, tpd = (x.decode() if isinstance(x, bytes) else x for x in r)
        return Decision(
            allowed=bool(int(ok)),
            reason=reason or None,
            retry_after=float(retry) if retry else None,
            taken=take if int(ok) else 0,
            tpm_remaining=float(tpm) if tpm else None,
            tpd_remaining=int(float(tpd)) if tpd else None,
        )

    async def lease(
        self,
        who: Identity,
        limits: Limits,
        want: int,
        request_id: str,
        lease_ttl: float,
        now: float | None = None,
    ) -> int:
        return int(
            await self._call(
                self._lease,
                self._keys(who, request_id),
                [*self._args(limits, now), want, lease_ttl],
            )
        )

    async def reconcile(
        self, who: Identity, limits: Limits, request_id: str, actual: int, now: float | None = None
    ) -> int | None:
        ok, delta = await self._call(
            self._reconcile, self._keys(who, request_id), [*self._args(limits, now), actual]
        )
        if not int(ok):
            return None
        return int(float(delta.decode() if isinstance(delta, bytes) else delta))

    async def standing(self, who: Identity, limits: Limits, now: float | None = None) -> Standing:
        """Where `who` stands, read without taking anything (time: Redis's, unless given)."""
        import redis.exceptions

        keys = self._keys(who, "-")
        try:
            if now is None:
                sec, usec = await self.client.time()
                now = sec + usec / 1_000_000
            tpm: list[Any] = await self.client.hmget(keys[0], ["tokens", "updated"])
            tpd: list[Any] = await self.client.hmget(keys[1], ["day", "used", "granted"])
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError) as e:
            raise BackendUnavailable(f"redis: {e}") from e
        bucket = Bucket(float(tpm[0]), float(tpm[1])) if tpm[0] is not None else None
        day = Day(int(tpd[0]), int(tpd[1] or 0), int(tpd[2] or 0)) if tpd[0] is not None else None
        return policy.standing(bucket, day, limits, now)

    async def grant(
        self, who: Identity, limits: Limits, tokens: int, now: float | None = None
    ) -> Standing:
        policy.grant(None, limits, now or 0.0, tokens)  # the same refusals as in memory
        await self._call(self._grant, self._keys(who, "-"), [*self._args(limits, now), tokens])
        return await self.standing(who, limits, now)

    async def reset(self, who: Identity, limits: Limits, now: float | None = None) -> Standing:
        import redis.exceptions

        keys = self._keys(who, "-")
        try:
            await self.client.delete(keys[0], keys[1])
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError) as e:
            raise BackendUnavailable(f"redis: {e}") from e
        return await self.standing(who, limits, now)

    async def close(self) -> None:
        await self.client.aclose()

"""Budget arithmetic with an injected clock, on both backends: the in-memory one and the Lua
scripts on a real Redis must make the same decisions for the same calls."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meterkit.budgets import Identity, Limits, MemoryBackend, RedisBackend, policy
from meterkit.budgets.policy import SECONDS_PER_DAY

T0 = 1_800_000_000.0  # some instant, a few hours into a UTC day
WHO = Identity("default", "ak_test")


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_bucket_refills_at_the_per_minute_rate() -> None:
    limits = Limits(tokens_per_minute=600, tokens_per_day=None)
    d, b, day = policy.admit(None, None, limits, T0, need=600, take=600)
    assert d.allowed and b.tokens == 0
    d, b, day = policy.admit(b, day, limits, T0 + 1, need=20, take=20)
    assert (
        not d.allowed and d.reason == "tpm_exceeded" and d.retry_after == 1
    )  # 10 tokens/s, 10 short
    d, b, day = policy.admit(b, day, limits, T0 + 3, need=20, take=20)
    assert d.allowed and b.tokens == pytest.approx(10)


def test_burst_is_the_capacity_and_too_big_never_fits() -> None:
    limits = Limits(tokens_per_minute=60, tokens_per_day=None, burst_tokens=100)
    d, *_ = policy.admit(None, None, limits, T0, need=101, take=101)
    assert not d.allowed and d.retry_after is None
    d, b, _ = policy.admit(None, None, limits, T0, need=100, take=100)
    assert d.allowed and b.tokens == 0


def test_day_counter_resets_at_utc_midnight() -> None:
    limits = Limits(tokens_per_minute=None, tokens_per_day=1000)
    d, b, day = policy.admit(None, None, limits, T0, need=900, take=900)
    assert d.allowed and d.tpd_remaining == 100
    d, b, day = policy.admit(b, day, limits, T0 + 1, need=200, take=200)
    assert not d.allowed and d.reason == "tpd_exceeded"
    midnight = (T0 // SECONDS_PER_DAY + 1) * SECONDS_PER_DAY
    assert d.retry_after == pytest.approx(midnight - (T0 + 1), abs=1)
    d, b, day = policy.admit(b, day, limits, midnight, need=200, take=200)
    assert d.allowed and d.tpd_remaining == 800


def test_lease_grants_what_is_left_then_nothing() -> None:
    limits = Limits(tokens_per_minute=60, tokens_per_day=None)
    _, b, day = policy.admit(None, None, limits, T0, need=50, take=50)
    grant, b, day = policy.lease(b, day, limits, T0, 30)
    assert grant == 10
    grant, b, day = policy.lease(b, day, limits, T0, 30)
    assert grant == 0


def test_reconcile_refunds_and_charges_overage() -> None:
    limits = Limits(tokens_per_minute=600, tokens_per_day=10_000)
    _, b, day = policy.admit(None, None, limits, T0, need=300, take=300)
    delta, b, day = policy.reconcile(b, day, limits, T0, taken=300, actual=120, taken_day=day.day)
    assert delta == 180 and b.tokens == pytest.approx(480) and day.used == 120
    delta, b, day = policy.reconcile(b, day, limits, T0, taken=100, actual=700, taken_day=day.day)
    assert delta == -600 and b.tokens == pytest.approx(-120) and day.used == 720


# ---- the two backends --------------------------------------------------------------------


@pytest.fixture
def backends(redis_url: str) -> Iterator[list[Any]]:
    prefix = f"mktest:{uuid.uuid4().hex[:8]}:"
    yield [MemoryBackend(), (redis_url, prefix)]
    import redis

    r = redis.Redis.from_url(redis_url)
    for k in r.scan_iter(f"{prefix}*"):
        r.delete(k)


async def _both(
    redis_spec: tuple[str, str], calls: list[tuple[str, Any]], limits: Limits
) -> tuple[list[Any], list[Any]]:
    mem = MemoryBackend()
    red = RedisBackend(redis_spec[0], redis_spec[1])
    out = []
    try:
        for backend in (mem, red):
            results = []
            for op, args in calls:
                now, rid = args["now"], args["rid"]
                if op == "admit":
                    d = await backend.admit(
                        WHO, limits, args["need"], args["take"], rid, 10**6, now=now
                    )
                    results.append(
                        (
                            op,
                            d.allowed,
                            d.reason,
                            d.retry_after,
                            None if d.tpm_remaining is None else round(d.tpm_remaining, 6),
                            d.tpd_remaining,
                        )
                    )
                elif op == "lease":
                    results.append(
                        (op, await backend.lease(WHO, limits, args["want"], rid, 10**6, now=now))
                    )
                else:
                    results.append(
                        (op, await backend.reconcile(WHO, limits, rid, args["actual"], now=now))
                    )
            out.append(results)
    finally:
        await red.close()
    return out[0], out[1]


ops = st.lists(
    st.one_of(
        st.tuples(
            st.just("admit"),
            st.fixed_dictionaries(
                {
                    "dt": st.floats(0, 20),
                    "need": st.integers(1, 800),
                    "take": st.integers(0, 800),
                    "rid": st.integers(0, 4),
                }
            ),
        ),
        st.tuples(
            st.just("lease"),
            st.fixed_dictionaries(
                {"dt": st.floats(0, 20), "want": st.integers(0, 300), "rid": st.integers(0, 4)}
            ),
        ),
        st.tuples(
            st.just("reconcile"),
            st.fixed_dictionaries(
                {"dt": st.floats(0, 20), "actual": st.integers(0, 900), "rid": st.integers(0, 4)}
            ),
        ),
    ),
    min_size=1,
    max_size=25,
)


@settings(max_examples=60, deadline=None)
@given(ops=ops, tpm=st.sampled_from([None, 600, 1200]), tpd=st.sampled_from([None, 2000]))
def test_memory_and_redis_make_the_same_decisions(
    redis_url: str, ops: list[tuple[str, dict[str, Any]]], tpm: int | None, tpd: int | None
) -> None:
    limits = Limits(tokens_per_minute=tpm, tokens_per_day=tpd)
    now = T0
    calls = []
    tag = uuid.uuid4().hex[:8]
    for op, args in ops:
        now += round(args["dt"], 3)
        a = {**args, "now": now, "rid": f"{tag}-{args['rid']}"}
        if op == "admit":
            a["take"] = min(a["take"], a["need"])
        calls.append((op, a))
    mem, red = run(_both((redis_url, f"mkprop:{tag}:"), calls, limits))
    assert mem == red


def test_reconcile_is_idempotent_and_leases_expire(backends: list[Any]) -> None:
    async def go() -> None:
        mem = backends[0]
        red = RedisBackend(*backends[1])
        try:
            limits = Limits(tokens_per_minute=600, tokens_per_day=None)
            for b in (mem, red):
                d = await b.admit(WHO, limits, 100, 100, "r1", lease_ttl=30, now=T0)
                assert d.allowed
                assert await b.reconcile(WHO, limits, "r1", 40, now=T0) == 60
                # A retried reconciliation changes nothing.
                assert await b.reconcile(WHO, limits, "r1", 40, now=T0) is None
            # An abandoned reservation (its proxy died) is a lease: it expires.
            d = await mem.admit(WHO, limits, 100, 100, "r2", lease_ttl=30, now=T0)
            assert "r2" in mem.reservations
            assert await mem.reconcile(WHO, limits, "r2", 0, now=T0 + 31) is None
            await red.admit(WHO, limits, 100, 100, "r3", lease_ttl=1, now=T0)
            await asyncio.sleep(1.2)
            assert await red.reconcile(WHO, limits, "r3", 0, now=T0) is None
        finally:
            await red.close()

    run(go())

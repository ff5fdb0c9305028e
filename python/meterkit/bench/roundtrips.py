"""The pay-and-retry round trip, measured beside the same route unpaid: shared by the
payments suite (deferred settlement) and the chain suite (on-chain settlement)."""

from __future__ import annotations

import os
import time
from decimal import Decimal

import aiohttp

from meterkit.bench.proxy import _pct
from meterkit.bench.timing import progress
from meterkit.client import PayingClient

BODY = {"model": "gpt-4o", "messages": [{"role": "user", "content": "Hello"}]}


async def round_trips(url: str, n: int, key: bytes | None = None) -> dict[str, float]:
    """A paid request (402, sign, retry, settle) beside the same route unpaid, `n` times;
    `key` pays (default: a fresh key, for settlers that check no balance)."""
    free, paid = [], []
    key = key or os.urandom(31) + b"\x07"
    async with aiohttp.ClientSession() as session:
        async with PayingClient(key, session=session, max_total=Decimal(10**6)) as client:
            for _ in range(3):  # warm-up
                await client.request("POST", url + "/paid", json=BODY)
            for i in range(n):
                progress("pay-and-retry round trip", i + 1, n)
                t0 = time.perf_counter()
                async with session.post(url + "/free", json=BODY) as r:
                    await r.read()
                free.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                result = await client.request("POST", url + "/paid", json=BODY)
                paid.append(time.perf_counter() - t0)
                assert result.status == 200, result.body
    return {
        "free_p50_ms": _pct(free, 0.5) * 1e3,
        "free_p99_ms": _pct(free, 0.99) * 1e3,
        "paid_p50_ms": _pct(paid, 0.5) * 1e3,
        "paid_p99_ms": _pct(paid, 0.99) * 1e3,
        "added_p50_ms": (_pct(paid, 0.5) - _pct(free, 0.5)) * 1e3,
        "added_p99_ms": (_pct(paid, 0.99) - _pct(free, 0.99)) * 1e3,
    }

"""The rate-limit headers a client steers by (issue 20 #5), in process: after a stream that
uses its whole cap, the day's remaining equals what the budget shows; a 429 carries the
same headers."""

from __future__ import annotations

import asyncio

from meterkit.budgets import Identity, MemoryBackend
from meterkit.budgets.policy import Limits
from support.inproc import chat, gateway, llm_config

CHAT = "/v1/chat/completions"


def test_the_headers_say_what_the_budget_will_hold_and_429s_carry_them() -> None:
    async def go() -> None:
        t = llm_config("{mock}")
        t["budgets"] = {
            "b": {"key": {"header": "X-User"}, "tokens_per_day": 200, "max_completion_tokens": 50}
        }
        t["routes"] = {f"POST {CHAT}": {"upstream": "mock", "budget": "b"}}
        backend = MemoryBackend()
        async with gateway(t, budget_backend=backend) as g:
            h = {"X-User": "u", "x-mock-length": "100", "x-mock-ignore-max": "1"}
            shown: list[int] = []
            while True:
                status, headers, _ = await g.post(CHAT, chat(), h)
                if status == 429:
                    break
                assert status == 200
                shown.append(int(headers["x-ratelimit-remaining-tokens-day"]))
                records = await g.records(len(shown))
                assert records[-1].completion_tokens == 50  # the whole cap
                (key,) = {r.budget["key"] for r in records if r.budget}
                standing = await backend.standing(Identity("b", key), Limits(None, 200))
                # Before: the header showed more than was left (the stream leased after it).
                assert shown[-1] == standing.tpd_remaining
            assert shown
            assert headers["x-ratelimit-remaining-tokens-day"] == str(standing.tpd_remaining)
            assert headers["x-ratelimit-limit-tokens-day"] == "200"
            assert "retry-after" in {k.lower() for k in headers}

    asyncio.run(go())

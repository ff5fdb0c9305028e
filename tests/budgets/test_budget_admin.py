"""Budget administration on both backends (issue 13): `standing`, `grant` and `reset` give
the same answers in memory and in Redis, a grant survives refunds, and `meterkit budget
--via direct` changes a shared Redis budget with no proxy running."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path

import pytest
import yaml

from meterkit.budgets import Identity, Limits, MemoryBackend, RedisBackend
from meterkit.budgets.admission import go_duration, ratelimit_headers
from meterkit.cli import main

NOW = 86_400 * 20_000 + 100.0
LIMITS = Limits(tokens_per_minute=60_000, tokens_per_day=1_000)
MINUTE = Limits(tokens_per_minute=600, tokens_per_day=1_000)


async def scenario(backend: MemoryBackend | RedisBackend, who: Identity) -> list[dict[str, object]]:
    seen = []
    d = await backend.admit(who, LIMITS, 900, 900, f"r-{uuid.uuid4()}", 60, now=NOW)
    assert d.allowed
    refused = await backend.admit(who, LIMITS, 300, 300, f"r-{uuid.uuid4()}", 60, now=NOW)
    assert not refused.allowed and refused.reason == "tpd_exceeded"
    seen.append((await backend.grant(who, LIMITS, 500, now=NOW)).as_dict())
    rid = f"r-{uuid.uuid4()}"
    assert (await backend.admit(who, LIMITS, 300, 300, rid, 60, now=NOW + 30)).allowed
    # A refund larger than today's use must not eat into the grant.
    assert await backend.reconcile(who, LIMITS, rid, 0, now=NOW + 31) == 300
    seen.append((await backend.standing(who, LIMITS, now=NOW + 31)).as_dict())
    seen.append((await backend.reset(who, LIMITS, now=NOW + 32)).as_dict())
    with pytest.raises(ValueError, match="tokens_per_day"):
        await backend.grant(who, Limits(600, None), 5, now=NOW)
    return seen


def test_memory_and_redis_administer_budgets_alike(redis_url: str) -> None:
    async def go() -> None:
        who = Identity("default", f"key_{uuid.uuid4().hex}")
        memory = await scenario(MemoryBackend(), who)
        redis = RedisBackend(redis_url, prefix=f"mk-test-{uuid.uuid4().hex}:")
        try:
            assert await scenario(redis, who) == memory
        finally:
            await redis.close()
        granted, after_refund, reset = memory
        assert granted["tokens_today_remaining"] == 600  # 1000 + 500 granted - 900 used
        assert after_refund["tokens_today_granted"] == 500
        assert after_refund["tokens_today_remaining"] == 600
        assert reset["tokens_today_used"] == 0 and reset["tokens_per_minute_remaining"] == 60_000

    asyncio.run(go())


def test_remaining_headers_name_each_window() -> None:
    """Issue 20 #5: one header switched silently between the minute and the day windows;
    each window has its own now, and what a stream may still lease counts as taken."""
    # Per-minute bucket 600 (10/s): 100 left, refills in 50 s; the day has 800 left.
    h = ratelimit_headers(100.0, 800, MINUTE, NOW)
    assert h == {
        "x-ratelimit-limit-tokens": "600",
        "x-ratelimit-remaining-tokens": "100",
        "x-ratelimit-reset-tokens": "50s",
        "x-ratelimit-limit-tokens-day": "1000",
        "x-ratelimit-remaining-tokens-day": "800",
        "x-ratelimit-reset-tokens-day": "23h58m20s",  # to the next UTC midnight
    }
    # A stream that reserved its first lease and may take 44 more: counted as taken.
    h = ratelimit_headers(100.0, 800, MINUTE, NOW, pending=44)
    assert (h["x-ratelimit-remaining-tokens"], h["x-ratelimit-remaining-tokens-day"]) == (
        "56",
        "756",
    )
    assert h["x-ratelimit-reset-tokens"] == "54.4s"
    assert ratelimit_headers(None, None, Limits(None, None), NOW) == {}
    assert [go_duration(s) for s in (0, 0.25, 1.5, 360, 7384)] == [
        "0s",
        "250ms",
        "1.5s",
        "6m0s",
        "2h3m4s",
    ]


def test_budget_command_goes_straight_to_redis(
    redis_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    prefix = f"mk-test-{uuid.uuid4().hex}:"
    tree = {
        "upstreams": {"u": {"url": "http://127.0.0.1:9"}},
        "routes": {"POST /v1/chat/completions": {"upstream": "u", "budget": "default"}},
        "budgets": {"default": {"key": "api_key", "tokens_per_day": 1000}},
        "budget_store": {"type": "redis", "url": redis_url, "prefix": prefix},
    }
    cfg = tmp_path / "meterkit.yaml"
    cfg.write_text(yaml.safe_dump(tree))
    assert main(["budget", "grant", "ak_abc", "--config", str(cfg), "--tokens", "250"]) == 0
    capsys.readouterr()
    assert main(["budget", "show", "ak_abc", "--config", str(cfg)]) == 0
    (view,) = json.loads(capsys.readouterr().out)["budgets"]
    assert (view["tokens_today_granted"], view["tokens_today_remaining"]) == (250, 1250)
    assert main(["budget", "reset", "ak_abc", "--config", str(cfg)]) == 0
    capsys.readouterr()
    assert main(["budget", "grant", "ak_abc", "--config", str(cfg)]) == 2


def test_with_a_registry_unknown_aliases_are_refused_not_created() -> None:
    """Issue 20 #3: `budget grant alcie` (a typo of alice) created a budget, and admin
    `GET /budgets/nobody` answered a full one. With a `keys:` registry, an API-key budget
    belongs to a registered alias; other budget keys (`ip_…`, `h_…`) are still valid."""
    from meterkit.budgets import admin as budget_admin
    from meterkit.budgets.registry import key_sha256, make_registry
    from meterkit.config import config_from_dict

    config = config_from_dict(
        {
            "upstreams": {"u": {"url": "http://127.0.0.1:9"}},
            "keys": {"entries": {"alice": {"sha256": key_sha256("sk-alice-0123456789")}}},
            "budgets": {
                "default": {"key": "api_key", "tokens_per_day": 1_000},
                "by_ip": {"key": "ip", "tokens_per_day": 1_000},
            },
            "routes": {"POST /v1/chat/completions": {"upstream": "u", "budget": "default"}},
        }
    )

    async def go() -> None:
        registry = make_registry(config.keys)  # type: ignore[arg-type]
        await registry.open()
        backend = MemoryBackend()
        try:
            for key in ("alcie", "nobody", "key_nobody"):
                with pytest.raises(budget_admin.AdminError) as e:
                    await budget_admin.run("grant", backend, config, registry, key, tokens=5)
                assert (e.value.status, e.value.code) == (404, "unknown-key")
            assert not backend.days  # nothing was created
            ok = await budget_admin.run("grant", backend, config, registry, "alice", tokens=5)
            assert {b["key"] for b in ok["budgets"]} == {"key_alice"}
            ip = await budget_admin.run("show", backend, config, registry, "ip_10.0.0.1", "by_ip")
            assert ip["budgets"][0]["key"] == "ip_10.0.0.1"
        finally:
            await registry.close()

    asyncio.run(go())

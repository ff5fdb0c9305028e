"""The admin listener (issue 13): budgets shown, granted and reset without a restart, on an
address of its own behind a bearer token; `/metrics` and readiness; the remaining-budget
headers of successful responses; the same through `meterkit budget`."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from meterkit.budgets import MemoryBackend
from meterkit.budgets.registry import key_sha256
from meterkit.cli import main
from meterkit.proxy.admin import start_admin
from meterkit.proxy.appkeys import CONFIG
from support.inproc import chat, gateway, llm_config

TOKEN = "admin-token-for-tests-0123"
ALICE = "sk-alice-0123456789"
CHAT = "/v1/chat/completions"


def tree(tpd: int = 2_000) -> dict[str, Any]:
    t = llm_config("{mock}")
    t["budgets"] = {
        "default": {"key": "api_key", "tokens_per_day": tpd, "max_completion_tokens": 50},
        "minute": {"key": "ip", "tokens_per_minute": 100_000},
    }
    t["routes"] = {
        f"POST {CHAT}": {"upstream": "mock", "budget": "default"},
        "POST /ip/chat": {"upstream": "mock", "path": CHAT, "budget": "minute"},
    }
    t["keys"] = {"entries": {"alice": {"sha256": key_sha256(ALICE)}}}
    t["admin"] = {"host": "127.0.0.1", "port": 0, "token": TOKEN}
    t["metrics"] = {"key_label": "alias"}
    return t


AUTH = {"Authorization": f"Bearer {TOKEN}"}
ALICE_H = {"Authorization": f"Bearer {ALICE}", "x-mock-length": "40", "x-mock-tps": "0"}


async def admin_call(
    session: aiohttp.ClientSession, method: str, url: str, **kw: Any
) -> tuple[int, str, Any]:
    async with session.request(method, url, **kw) as r:
        body = await r.read()
        data = json.loads(body) if r.content_type.endswith("json") else body.decode()
        return r.status, r.content_type, data


def test_grant_lets_a_refused_key_in_without_a_restart() -> None:
    async def go() -> None:
        async with gateway(tree(), budget_backend=MemoryBackend()) as g:
            config = g.app[CONFIG]
            runner, port = await start_admin(g.app, config.admin)
            base = f"http://127.0.0.1:{port}"
            s = g.session
            try:
                # Unauthenticated: a 401 problem; health and readiness stay open.
                status, ctype, body = await admin_call(s, "GET", f"{base}/budgets/alice")
                assert (status, ctype) == (401, "application/problem+json")
                assert body["type"].endswith("/admin-unauthorized")
                st, _, _ = await admin_call(
                    s, "GET", f"{base}/budgets/alice", headers={"Authorization": "Bearer nope"}
                )
                assert st == 401
                assert (await admin_call(s, "GET", f"{base}/readyz"))[0] == 200

                # A successful response says what is left, in the headers clients read.
                status, headers, _ = await g.post(CHAT, chat(), ALICE_H)
                assert status == 200
                # A day budget: its window's headers (the per-minute ones name a bucket).
                left = int(headers["x-ratelimit-remaining-tokens-day"])
                assert 0 < left < 2_000
                assert headers["x-ratelimit-limit-tokens-day"] == "2000"
                assert headers["x-ratelimit-reset-tokens-day"].endswith("s")
                assert "x-ratelimit-remaining-tokens" not in headers

                # Spend the day: the next request no longer fits.
                while True:
                    status, _, _ = await g.post(CHAT, chat(), ALICE_H)
                    if status == 429:
                        break
                    assert status == 200
                status, _, shown = await admin_call(
                    s, "GET", f"{base}/budgets/alice", headers=AUTH, params={"budget": "default"}
                )
                assert status == 200
                (view,) = shown["budgets"]
                assert view["key"] == "key_alice" and view["alias"] == "alice"
                assert view["tokens_today_remaining"] < 200

                status, _, granted = await admin_call(
                    s, "POST", f"{base}/budgets/alice/grant", headers=AUTH, json={"tokens": 5_000}
                )
                assert status == 200, granted
                (after,) = granted["budgets"]
                assert after["tokens_today_granted"] == 5_000
                assert after["tokens_today_remaining"] == view["tokens_today_remaining"] + 5_000
                status, _, _ = await g.post(CHAT, chat(), ALICE_H)
                assert status == 200  # same process, no restart

                status, _, reset = await admin_call(
                    s, "POST", f"{base}/budgets/key_alice/reset", headers=AUTH, json={}
                )
                assert status == 200
                # An alias names its API-key budgets ("minute" is keyed by address).
                assert {b["budget"]: b["tokens_today_used"] for b in reset["budgets"]} == {
                    "default": 0,
                }

                # Errors are problem details.
                status, ctype, body = await admin_call(
                    s,
                    "POST",
                    f"{base}/budgets/alice/grant",
                    headers=AUTH,
                    json={"tokens": 10, "budget": "minute"},
                )
                assert (status, ctype) == (400, "application/problem+json")
                assert "tokens_per_day" in body["detail"]
                status, _, body = await admin_call(
                    s, "GET", f"{base}/budgets/alice", headers=AUTH, params={"budget": "nope"}
                )
                assert status == 404 and body["type"].endswith("/unknown-budget")
                status, _, body = await admin_call(
                    s, "POST", f"{base}/budgets/alice/grant", headers=AUTH, data=b"[1"
                )
                assert status == 400

                # Metrics on the admin port: the new series, per-key by alias, no _created.
                status, _, text = await admin_call(s, "GET", f"{base}/metrics", headers=AUTH)
                assert status == 200
                for name in (
                    "meterkit_build_info{",
                    "meterkit_request_duration_seconds_bucket{",
                    "meterkit_upstream_time_to_headers_seconds_bucket{",
                    "meterkit_time_per_output_token_seconds_bucket{",
                    'meterkit_key_tokens_total{key="alice",kind="completion"}',
                    "process_cpu_seconds_total",
                ):
                    assert name in text, name
                assert "_created" not in text
            finally:
                await runner.cleanup()

    asyncio.run(go())


def test_budget_command_talks_to_the_admin_listener(tmp_path: Path) -> None:
    async def go() -> None:
        t = tree()
        async with gateway(t, budget_backend=MemoryBackend()) as g:
            config = g.app[CONFIG]
            runner, port = await start_admin(g.app, config.admin)
            t["admin"]["port"] = port
            cfg = tmp_path / "meterkit.yaml"
            cfg.write_text(yaml.safe_dump(t))
            try:
                args = ["budget", "grant", "alice", "--config", str(cfg), "--tokens", "700"]
                assert await asyncio.to_thread(main, args) == 0
                show = ["budget", "show", "alice", "--config", str(cfg), "--budget", "default"]
                assert await asyncio.to_thread(main, show) == 0
                bad = ["budget", "show", "alice", "--config", str(cfg), "--budget", "nope"]
                assert await asyncio.to_thread(main, bad) == 1
            finally:
                await runner.cleanup()

    asyncio.run(go())


def test_in_memory_budgets_without_admin_are_refused_with_a_reason(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    t = tree()
    del t["admin"]
    t["upstreams"]["mock"]["url"] = "http://127.0.0.1:9"
    cfg = tmp_path / "meterkit.yaml"
    cfg.write_text(yaml.safe_dump(t))
    assert main(["budget", "show", "alice", "--config", str(cfg)]) == 1
    assert "admin:" in capsys.readouterr().err


def test_short_admin_tokens_are_config_errors() -> None:
    from meterkit.config import ConfigError, config_from_dict

    t = tree()
    t["upstreams"]["mock"]["url"] = "http://127.0.0.1:9"
    t["admin"]["token"] = "short"
    with pytest.raises(ConfigError, match=r"admin\.token: too short"):
        config_from_dict(t)

"""The API key registry (issue 12 #4): with `keys:`, only registered keys (stored hashed)
reach budgeted routes; the budget follows the key's alias and its own limits."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest

from meterkit.budgets.keys import PostgresRegistry, key_sha256, make_registry
from meterkit.config import ConfigError, config_from_dict, load_config
from support.inproc import chat, gateway, llm_config

CHAT = "/v1/chat/completions"
ALICE, BOB = "sk-alice-0123456789", "sk-bob-9876543210"


def keyed(keys: dict[str, Any] | None) -> dict[str, Any]:
    tree = llm_config("{mock}")
    tree["budgets"] = {"default": {"key": "api_key", "tokens_per_day": 100_000}}
    tree["routes"] = {f"POST {CHAT}": {"upstream": "mock", "budget": "default"}}
    if keys is not None:
        tree["keys"] = keys
    return tree


ENTRIES = {
    "alice": {"sha256": key_sha256(ALICE), "budgets": {"default": {"max_completion_tokens": 5}}},
    "bob": {"sha256": key_sha256(BOB)},
}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}", "x-mock-length": "30"}


def test_without_a_registry_any_token_is_its_own_budget() -> None:
    """What `key: api_key` means without `keys:`: the hash of whatever token arrives."""

    async def go() -> None:
        async with gateway(keyed(None)) as g:
            for _ in range(3):
                status, _, _ = await g.post(CHAT, chat(), bearer(f"sk-{uuid.uuid4().hex}"))
                assert status == 200
            records = await g.records(3)
            assert len({r.budget["key"] for r in records if r.budget}) == 3

    asyncio.run(go())


def test_unknown_and_missing_keys_get_401_problems() -> None:
    async def go() -> None:
        async with gateway(keyed({"entries": ENTRIES})) as g:
            for headers, code in (
                (bearer("sk-made-up"), "api-key-unknown"),
                ({}, "api-key-missing"),
            ):
                status, h, body = await g.post(CHAT, chat(), headers)
                assert status == 401
                assert h["Content-Type"] == "application/problem+json"
                assert h["WWW-Authenticate"].startswith("Bearer")
                assert orjson.loads(body)["type"].endswith(code)
            records = await g.records(2)
            assert [r.outcome for r in records] == ["rejected", "rejected"]

    asyncio.run(go())


def test_a_registered_key_is_budgeted_by_its_alias_with_its_own_limits() -> None:
    async def go() -> None:
        async with gateway(keyed({"entries": ENTRIES})) as g:
            assert (await g.post(CHAT, chat(), bearer(ALICE)))[0] == 200
            assert (await g.post(CHAT, chat(), bearer(BOB)))[0] == 200
            alice, bob = await g.records(2)
            assert alice.budget is not None and bob.budget is not None
            assert (alice.budget["key"], bob.budget["key"]) == ("key_alice", "key_bob")
            # Alice's override caps her completions at 5 tokens (written into the upstream
            # request); Bob has the policy's cap.
            assert (alice.budget["limit"], alice.completion_tokens) == (5, 5)
            assert (bob.budget["limit"], bob.completion_tokens) == (4096, 30)
            assert ALICE not in repr(alice) and BOB not in repr(bob)

    asyncio.run(go())


def test_a_raw_key_in_the_config_is_refused() -> None:
    tree = keyed({"entries": {"alice": {"sha256": ALICE}}})
    with pytest.raises(ConfigError) as e:
        config_from_dict(tree)
    assert "keys.entries.alice.sha256" in str(e.value)


def test_a_key_file_relative_to_the_config_folder(tmp_path: Path) -> None:
    import yaml

    (tmp_path / "keys.yaml").write_text(yaml.safe_dump({"entries": ENTRIES}))
    tree = keyed({"file": "keys.yaml"})
    tree["upstreams"]["mock"]["url"] = "http://127.0.0.1:9"
    (tmp_path / "meterkit.yaml").write_text(yaml.safe_dump(tree))
    config = load_config(tmp_path / "meterkit.yaml")
    assert config.keys is not None
    registry = make_registry(config.keys)

    async def go() -> None:
        entry = await registry.lookup(key_sha256(BOB))
        assert entry is not None and entry.alias == "bob"
        assert await registry.lookup(key_sha256("nope")) is None

    asyncio.run(go())


def test_a_postgres_registry_is_shared(postgres_url: str) -> None:
    table = f"keys_{uuid.uuid4().hex[:10]}"

    async def go() -> None:
        admin = PostgresRegistry(postgres_url, table, cache_ttl=0)
        await admin.open()
        try:
            await admin.add("alice", key_sha256(ALICE), {"default": {"max_completion_tokens": 5}})
            tree = keyed({"postgres": {"url": postgres_url, "table": table}, "cache_ttl": 0})
            async with gateway(tree) as g:
                assert (await g.post(CHAT, chat(), bearer(ALICE)))[0] == 200
                assert (await g.post(CHAT, chat(), bearer(BOB)))[0] == 401
                await admin.add("bob", key_sha256(BOB))
                assert (await g.post(CHAT, chat(), bearer(BOB)))[0] == 200
                alice = (await g.records(3))[0]
                assert alice.budget is not None
                assert (alice.budget["key"], alice.budget["limit"]) == ("key_alice", 5)
        finally:
            async with admin._pool.acquire() as conn:
                await conn.execute(f"DROP TABLE {table}")
            await admin.close()

    asyncio.run(go())

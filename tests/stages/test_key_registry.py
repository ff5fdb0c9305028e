"""The API key registry (issue 12 #4): with `keys:`, only registered keys (stored hashed)
reach budgeted routes; the budget follows the key's alias and its own limits."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest

from meterkit.budgets.registry import PostgresRegistry, key_sha256, make_registry
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


# ---- per route: `keys: required | optional` ----

MODELS = "/v1/models"


def per_route(chat_keys: str | None, models_keys: str | None) -> dict[str, Any]:
    """A registry, the chat route on an `api_key` budget and the models route (plain
    pass-through, no budget), each with the given `keys:` setting."""
    tree = keyed({"entries": ENTRIES})
    chat_route: dict[str, Any] = {"upstream": "mock", "budget": "default"}
    models: dict[str, Any] = {"upstream": "mock", "format": "none"}
    if chat_keys is not None:
        chat_route["keys"] = chat_keys
    if models_keys is not None:
        models["keys"] = models_keys
    tree["routes"] = {f"POST {CHAT}": chat_route, f"GET {MODELS}": models}
    return tree


async def _get(g: Any, path: str, headers: dict[str, str]) -> tuple[int, Any, bytes]:
    async with g.session.get(g.url + path, headers=headers) as r:
        return r.status, r.headers, await r.read()


def _assert_401(status: int, headers: Any, body: bytes, code: str) -> None:
    assert status == 401
    assert headers["Content-Type"] == "application/problem+json"
    assert headers["WWW-Authenticate"].startswith("Bearer")
    problem = orjson.loads(body)
    assert problem["status"] == 401 and problem["type"].endswith(code)
    assert problem["title"] and problem["detail"]


def test_a_route_that_requires_keys_answers_401_problems_whatever_its_budget() -> None:
    """`keys: required` guards a route with no budget at all (here a pass-through): missing
    and unknown keys get 401 problem details, a registered key is served."""

    async def go() -> None:
        async with gateway(per_route(None, "required")) as g:
            status, h, body = await _get(g, MODELS, {})
            _assert_401(status, h, body, "api-key-missing")
            status, h, body = await _get(g, MODELS, bearer("sk-made-up"))
            _assert_401(status, h, body, "api-key-unknown")
            status, h, body = await _get(g, MODELS, {"x-api-key": "sk-made-up-too"})
            _assert_401(status, h, body, "api-key-unknown")
            assert (await _get(g, MODELS, bearer(ALICE)))[0] == 200
            assert (await _get(g, MODELS, {"x-api-key": BOB}))[0] == 200

    asyncio.run(go())


def test_routes_are_open_by_default_unless_their_budget_is_keyed_by_api_key() -> None:
    async def go() -> None:
        async with gateway(per_route(None, None)) as g:
            # No budget, no `keys:`: open, as before the registry existed.
            assert (await _get(g, MODELS, {}))[0] == 200
            assert (await _get(g, MODELS, bearer("sk-made-up")))[0] == 200
            # An `api_key` budget and no `keys:`: required.
            status, h, body = await g.post(CHAT, chat(), bearer("sk-made-up"))
            _assert_401(status, h, body, "api-key-unknown")

    asyncio.run(go())


def test_an_optional_route_serves_missing_and_unknown_keys() -> None:
    """`keys: optional` opens a route whose `api_key` budget would require a key: an unknown
    key is served and budgeted as without a registry (the hash of the token), a registered
    key still gets its alias and its limits. An open route serves a request with no key."""

    async def go() -> None:
        async with gateway(per_route("optional", "optional")) as g:
            assert (await _get(g, MODELS, {}))[0] == 200
            assert (await _get(g, MODELS, bearer("sk-made-up")))[0] == 200
            assert (await g.post(CHAT, chat(), bearer("sk-made-up")))[0] == 200
            assert (await g.post(CHAT, chat(), bearer(ALICE)))[0] == 200
            records = [r for r in await g.records(4) if r.budget]
            unknown, alice = records
            assert unknown.budget is not None and alice.budget is not None
            assert unknown.budget["key"].startswith("ak_")
            assert (alice.budget["key"], alice.budget["limit"]) == ("key_alice", 5)
            # With no key at all, the budget has nobody to charge: its own 401 problem.
            status, _, body = await g.post(CHAT, chat(), {})
            assert status == 401
            assert orjson.loads(body)["type"].endswith("budget-key-missing")

    asyncio.run(go())


def test_keys_required_needs_a_registry_and_the_value_is_checked() -> None:
    def tree_of(chat_keys: Any, models_keys: Any, registry: bool = True) -> dict[str, Any]:
        tree = per_route(chat_keys, models_keys)
        tree["upstreams"]["mock"]["url"] = "http://127.0.0.1:9"
        if not registry:
            del tree["keys"]
            tree["budgets"]["default"]["key"] = "ip"
        return tree

    with pytest.raises(ConfigError) as e:
        config_from_dict(tree_of(None, "required", registry=False))
    assert [p.path for p in e.value.problems] == [f'routes."GET {MODELS}".keys']
    assert "needs a key registry" in str(e.value)
    # Optional without a registry is what every route is without one: accepted.
    config = config_from_dict(tree_of("optional", "optional", registry=False))
    assert [r.keys for r in config.routes] == ["optional", "optional"]
    for bad in ("yes", True, ["required"]):
        with pytest.raises(ConfigError) as e:
            config_from_dict(tree_of(bad, None))
        assert "expected one of required, optional" in str(e.value)

"""Shared fixtures: the offline `tiktoken` oracle and a loopback server for SDK cross-checks."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

# Processes the tests start (`python -m support.…`, `meterkit serve` loading test hooks) import
# the shared helpers the same way the tests do.
_TESTS = str(Path(__file__).resolve().parent)
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (_TESTS, os.environ.get("PYTHONPATH", "")) if p
)


@pytest.fixture(scope="session")
def tiktoken_encodings(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """`tiktoken` encodings loaded offline from the reference rank files."""
    from meterkit.bench.reference import load_tiktoken

    encodings = load_tiktoken(tmp_path_factory.mktemp("tiktoken-cache"))
    if encodings is None:
        if os.environ.get("METERKIT_REQUIRE_REFERENCE"):
            pytest.fail("METERKIT_REQUIRE_REFERENCE is set but the tiktoken rank files are missing")
        pytest.skip(
            "tiktoken reference rank files not found: set METERKIT_TIKTOKEN_REFERENCE to a "
            "folder holding cl100k_base.tiktoken and o200k_base.tiktoken"
        )
    return encodings


@pytest.fixture(scope="session")
def replay() -> Any:
    """A loopback server answering every request with `replay.body` (see support/replay.py)."""
    from support.replay import replay_server

    with replay_server() as server:
        yield server


@pytest.fixture(scope="session")
def mock_llm() -> Any:
    """`meterkit mock-llm` as a separate process (fast: 200 tokens/s, 10 ms to first token)."""
    from support.processes import running

    with running(
        [
            "mock-llm",
            "--port",
            "0",
            "--tokens-per-second",
            "200",
            "--ttft",
            "0.01",
            "--length",
            "24",
        ]
    ) as p:
        yield p


@pytest.fixture
def start_proxy(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Start `meterkit serve` on a config dict; returns the process (its `.url`, `.db`)."""
    import yaml

    from support.processes import running

    stack = []

    def start(tree: dict[str, Any], env: dict[str, str] | None = None) -> Any:
        d = tmp_path_factory.mktemp("proxy")
        tree = {**tree, "usage": {"sink": "sqlite", "path": str(d / "usage.sqlite3")}}
        (d / "config.yaml").write_text(yaml.safe_dump(tree))
        cm = running(["serve", "--config", str(d / "config.yaml"), "--port", "0"], cwd=d, env=env)
        proc = cm.__enter__()
        proc.db = d / "usage.sqlite3"
        stack.append(cm)
        return proc

    yield start
    for cm in reversed(stack):
        cm.__exit__(None, None, None)


@pytest.fixture(scope="session")
def redis_url() -> str:
    """A real Redis: $REDIS_URL, else the local default. `make test` starts one if none runs."""
    import redis

    url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    try:
        redis.Redis.from_url(url, socket_connect_timeout=1).ping()
    except redis.exceptions.ConnectionError as e:
        if os.environ.get("METERKIT_REQUIRE_REDIS"):
            pytest.fail(f"METERKIT_REQUIRE_REDIS is set but Redis at {url} is unreachable: {e}")
        pytest.skip(f"no Redis at {url}: {e}")
    return url


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """A real PostgreSQL: $DATABASE_URL, else the local default (`make test` starts it if down)."""
    import asyncio

    import asyncpg

    url = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")

    async def ping() -> None:
        conn = await asyncpg.connect(url, timeout=3)
        await conn.close()

    try:
        asyncio.run(ping())
    except (OSError, asyncpg.PostgresError) as e:
        if os.environ.get("METERKIT_REQUIRE_POSTGRES"):
            pytest.fail(
                f"METERKIT_REQUIRE_POSTGRES is set but PostgreSQL at {url} is unreachable: {e}"
            )
        pytest.skip(f"no PostgreSQL at {url}: {e}")
    return url


@pytest.fixture(scope="session")
def anvil_node() -> Any:
    """A local EVM node (anvil from npm, installed into .chain/ by `make chain`), on
    127.0.0.1, for the whole session."""
    from meterkit.chain.anvil import Anvil, find_anvil

    if find_anvil() is None:
        if os.environ.get("METERKIT_REQUIRE_CHAIN"):
            pytest.fail("METERKIT_REQUIRE_CHAIN is set but anvil is missing: run `make chain`")
        pytest.skip("no anvil: `make chain` installs it into .chain/ (or set METERKIT_ANVIL)")
    with Anvil() as node:
        yield node


@pytest.fixture(scope="session")
def chain_token(anvil_node: Any) -> str:
    """meterkit's EIP-3009 test token, deployed once."""
    from meterkit.chain import token

    return token.deploy(anvil_node.url)


@pytest.fixture(scope="session")
def chain_escrows(anvil_node: Any) -> dict[str, str]:
    """meterkit's session escrow, deployed once per EIP-712 name: {"evm": …, "tempo": …}."""
    from meterkit.chain import escrow

    return {
        "evm": escrow.deploy(anvil_node.url, escrow.EVM_NAME),
        "tempo": escrow.deploy(anvil_node.url, escrow.TEMPO_NAME),
    }


@pytest.fixture
def chain(anvil_node: Any, chain_token: str) -> Any:
    """The local chain, reverted to its state before the test when the test ends."""
    from support.chain import LocalChain

    snapshot = anvil_node.call("evm_snapshot")
    yield LocalChain(anvil_node, chain_token)
    assert anvil_node.call("evm_revert", snapshot) is True

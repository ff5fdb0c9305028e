"""The API key registry: which keys the gateway accepts, by the SHA-256 of the key (raw keys
are never stored), under an alias, with per-key budget overrides. Web-free.

Sources: the config's `keys.entries`, a YAML file (`keys.file`), or a PostgreSQL table that
several instances share (`keys.postgres`; lookups cached `keys.cache_ttl` seconds, unknown
keys too, so a client spraying random keys costs one query per distinct key per TTL).
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import orjson

from meterkit.config.budgets import BudgetPolicy
from meterkit.config.keys import OVERRIDE_KEYS, KeyEntry, Keys, parse_entries
from meterkit.config.loader import parse_yaml
from meterkit.config.problems import ConfigError, ConfigProblem, KeyPath, Problems

_CACHE_SIZE = 10_000


def key_sha256(raw: str) -> str:
    """What the registry stores for a key: its SHA-256, hex."""
    return hashlib.sha256(raw.encode()).hexdigest()


class KeyRegistry(Protocol):
    name: str

    async def lookup(self, digest: str) -> KeyEntry | None: ...
    async def by_alias(self, alias: str) -> KeyEntry | None: ...
    async def open(self) -> None: ...
    async def close(self) -> None: ...
    async def ping(self) -> None: ...


class StaticRegistry:
    """Entries from the config or a file, held in memory."""

    name = "static"

    def __init__(self, entries: Mapping[str, KeyEntry]) -> None:
        self.entries = dict(entries)

    async def lookup(self, digest: str) -> KeyEntry | None:
        return self.entries.get(digest)

    async def by_alias(self, alias: str) -> KeyEntry | None:
        """The entry registered under `alias` (budget administration)."""
        return next((e for e in self.entries.values() if e.alias == alias), None)

    async def open(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def ping(self) -> None:
        pass


def load_key_file(path: str | Path) -> dict[str, KeyEntry]:
    """A key file: YAML with an `entries:` mapping (the config's format). ConfigError lists
    every problem; OSError when it cannot be read."""
    text = Path(path).read_text(encoding="utf-8")
    try:
        tree = parse_yaml(text, str(path))
    except ValueError as e:
        raise ConfigError([ConfigProblem("(file)", str(e))], str(path)) from None
    problems = Problems()
    entries: dict[str, KeyEntry] = {}
    if not isinstance(tree, dict) or "entries" not in tree:
        problems.add(KeyPath(), "expected a mapping with `entries:`")
    else:
        problems.unknown_keys(KeyPath(), tree, ("entries",))
        entries = parse_entries(tree["entries"], KeyPath() / "entries", problems)
    if problems:
        raise ConfigError(problems.items, str(path))
    return entries


class PostgresRegistry:
    """Keys in a PostgreSQL table shared by every instance:
    `(alias text primary key, sha256 text unique, budgets jsonb, disabled boolean)`."""

    name = "postgres"

    def __init__(self, url: str, table: str, cache_ttl: float) -> None:
        self.url = url
        self.table = table
        self.cache_ttl = cache_ttl
        self._pool: Any = None
        self._cache: OrderedDict[str, tuple[float, KeyEntry | None]] = OrderedDict()

    async def open(self) -> None:
        import asyncpg

        self._pool = await asyncpg.create_pool(self.url, min_size=1, max_size=4, timeout=10)
        async with self._pool.acquire() as conn:
            await conn.execute(
                f"CREATE TABLE IF NOT EXISTS {self.table} ("
                "alias text PRIMARY KEY, sha256 text UNIQUE NOT NULL, "
                "budgets jsonb NOT NULL DEFAULT '{}', disabled boolean NOT NULL DEFAULT false)"
            )

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()

    async def ping(self) -> None:
        async with self._pool.acquire(timeout=2) as conn:
            await conn.fetchval("SELECT 1")

    async def lookup(self, digest: str) -> KeyEntry | None:
        now = time.monotonic()
        hit = self._cache.get(digest)
        if hit is not None and hit[0] > now:
            return hit[1]
        async with self._pool.acquire(timeout=5) as conn:
            row = await conn.fetchrow(
                f"SELECT alias, budgets::text AS budgets FROM {self.table} "
                "WHERE sha256 = $1 AND NOT disabled",
                digest,
            )
        entry = None
        if row is not None:
            budgets = orjson.loads(row["budgets"] or "{}")
            entry = KeyEntry(row["alias"], digest, budgets if isinstance(budgets, dict) else {})
        self._cache[digest] = (now + self.cache_ttl, entry)
        self._cache.move_to_end(digest)
        while len(self._cache) > _CACHE_SIZE:
            self._cache.popitem(last=False)
        return entry

    async def by_alias(self, alias: str) -> KeyEntry | None:
        """The entry registered under `alias`, disabled or not (budget administration)."""
        async with self._pool.acquire(timeout=5) as conn:
            row = await conn.fetchrow(
                f"SELECT sha256, budgets::text AS budgets FROM {self.table} WHERE alias = $1",
                alias,
            )
        if row is None:
            return None
        budgets = orjson.loads(row["budgets"] or "{}")
        return KeyEntry(alias, row["sha256"], budgets if isinstance(budgets, dict) else {})

    async def add(self, alias: str, digest: str, budgets: Mapping[str, Any] | None = None) -> None:
        """Register a key (tests and tools)."""
        async with self._pool.acquire() as conn:
            await conn.execute(
                f"INSERT INTO {self.table} (alias, sha256, budgets) VALUES ($1, $2, $3::jsonb) "
                "ON CONFLICT (alias) DO UPDATE SET sha256 = $2, budgets = $3::jsonb",
                alias,
                digest,
                orjson.dumps(dict(budgets or {})).decode(),
            )


def make_registry(keys: Keys) -> KeyRegistry:
    if keys.postgres_url is not None:
        return PostgresRegistry(keys.postgres_url, keys.table, keys.cache_ttl)
    if keys.file is not None:
        return StaticRegistry(load_key_file(keys.file))
    return StaticRegistry(keys.entries)


def with_overrides(policy: BudgetPolicy, entry: KeyEntry | None) -> BudgetPolicy:
    """`policy` with the limits `entry` overrides for it (pure)."""
    if entry is None:
        return policy
    limits = entry.budgets.get(policy.name)
    if not limits:
        return policy
    # Rows from PostgreSQL are not schema-checked: take only well-formed limits.
    chosen: dict[str, Any] = {
        k: v
        for k, v in limits.items()
        if k in OVERRIDE_KEYS and isinstance(v, int) and not isinstance(v, bool) and v > 0
    }
    return dataclasses.replace(policy, **chosen) if chosen else policy

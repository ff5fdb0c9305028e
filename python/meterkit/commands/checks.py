"""What `meterkit validate` checks beyond the schema: what `serve` would die on at startup
(operator hooks and callables that do not import, data paths that cannot be created), and
with `--connect` whether every service the config names answers."""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from pathlib import Path

from meterkit.config import Config

_CONNECT_TIMEOUT = 5.0


@dataclass(frozen=True)
class Check:
    what: str
    problem: str | None = None

    @property
    def ok(self) -> bool:
        return self.problem is None


def _base(config: Config) -> Path | None:
    src = Path(config.source)
    return src.parent if src.is_file() else None


def _payments_used(config: Config) -> bool:
    from meterkit.stages.payment import PaymentStage

    return any(PaymentStage.applies(r.payment) for r in config.routes)


def callables(config: Config) -> list[Check]:
    """Every operator hook and the settlement callable import and are callable."""
    from meterkit.payments.callables import load_callable

    base = _base(config)
    refs: list[tuple[str, str]] = []
    for r in config.routes:
        for name, ref in r.payment.hooks.items():
            refs.append((f'routes."{r.key}".hooks.{name}', ref))
    settlement = config.payments.settlement
    if _payments_used(config) and settlement.type == "callable" and settlement.callable:
        refs.append(("payments.settlement.callable", settlement.callable))
    out = []
    for where, ref in refs:
        try:
            load_callable(ref, base)
        except Exception as e:  # an operator's module may raise anything on import
            out.append(Check(f"{where} {ref}", f"does not load: {type(e).__name__}: {e}"))
        else:
            out.append(Check(f"{where} {ref}"))
    return out


def writable_path(path: str) -> str | None:
    """None when `path` can be opened for writing (creating its folders), else why not.
    Creates nothing: it looks for the nearest existing folder and its permissions."""
    p = Path(path)
    if p.exists():
        if p.is_dir():
            return f"{p} is a folder"
        return None if os.access(p, os.W_OK) else f"{p} is not writable"
    parent = p.parent
    while not parent.exists():
        if parent.parent == parent:
            return f"no existing folder above {p}"
        parent = parent.parent
    if not parent.is_dir():
        return f"{parent} is not a folder"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"cannot create {p}: {parent} is not writable"
    return None


def data_paths(config: Config) -> list[Check]:
    paths = []
    if config.usage.sink == "sqlite":
        paths.append(("usage.path", config.usage.path))
    if _payments_used(config) and config.ledger.type == "sqlite":
        paths.append(("ledger.path", config.ledger.path))
    return [Check(f"{where} {p}", writable_path(p)) for where, p in paths]


def key_file(config: Config) -> list[Check]:
    """The key registry file reads and every entry in it is valid."""
    if config.keys is None or config.keys.file is None:
        return []
    from meterkit.budgets.registry import load_key_file
    from meterkit.config import ConfigError

    what = f"keys.file {config.keys.file}"
    try:
        load_key_file(config.keys.file)
    except OSError as e:
        return [Check(what, f"cannot read: {e.strerror or e}")]
    except ConfigError as e:
        return [Check(what, "; ".join(str(p) for p in e.problems) or "invalid")]
    return [Check(what)]


async def _redis(url: str) -> None:
    import redis.asyncio as redis

    client = redis.Redis.from_url(url, socket_connect_timeout=_CONNECT_TIMEOUT)
    try:
        await client.ping()
    finally:
        await client.aclose()


async def _postgres(url: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(url, timeout=_CONNECT_TIMEOUT)
    await conn.close()


async def _http(url: str) -> None:
    import aiohttp

    timeout = aiohttp.ClientTimeout(total=_CONNECT_TIMEOUT)
    async with aiohttp.ClientSession(timeout=timeout, trust_env=False) as session:
        # Any HTTP answer means the service is there; only the connection matters here.
        async with session.get(url, allow_redirects=False) as resp:
            await resp.read()


async def _probe(what: str, probe: asyncio.Future[None] | object) -> Check:
    try:
        async with asyncio.timeout(_CONNECT_TIMEOUT * 2):
            await probe  # type: ignore[misc]
    except Exception as e:  # drivers raise their own types; each is a failed check
        from meterkit.commands import describe

        return Check(what, f"unreachable: {describe(e)}")
    return Check(what)


async def services(config: Config) -> list[Check]:
    """Connect to every service the config names, at the same time."""
    probes = []
    if config.budget_store.type == "redis" and config.budget_store.url:
        probes.append(("budget_store (Redis)", _redis(config.budget_store.url)))
    if config.usage.sink == "postgres" and config.usage.url:
        probes.append(("usage (PostgreSQL)", _postgres(config.usage.url)))
    payments = _payments_used(config)
    if payments and config.ledger.type == "postgres" and config.ledger.url:
        probes.append(("ledger (PostgreSQL)", _postgres(config.ledger.url)))
    if config.keys is not None and config.keys.postgres_url:
        probes.append(("keys (PostgreSQL)", _postgres(config.keys.postgres_url)))
    settlement = config.payments.settlement
    if payments and settlement.type == "facilitator" and settlement.url:
        probes.append((f"facilitator {settlement.url}", _http(settlement.url)))
    return list(await asyncio.gather(*(_probe(what, p) for what, p in probes)))

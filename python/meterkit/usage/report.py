"""Usage reports: the usage store's records over a time window, grouped by key, model,
route and/or UTC day, with tokens and cost. Web-free; `meterkit usage report` prints them.

Cost, exactly (decimals, never floats):
- a request on a paid route costs what the ledger says its payment settled (or queued) for:
  the claim's amount in the token's smallest unit, scaled by the token's decimals. A claim
  is matched to the request it was issued for by request id, so a redelivery (served again
  without a second charge) costs nothing, and a refused or released payment costs nothing;
- a request on any other route costs its prompt and completion tokens at the `prices:`
  rates of its model (0 when no entry matches);
- the cost of a group is the sum of its requests' costs.
"""

from __future__ import annotations

import re
import sqlite3
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson

from meterkit.config import Config
from meterkit.config.payments import Asset, TokenRates
from meterkit.usage.cost import ZERO, assets, from_base_units, paid_amount, priced

DIMENSIONS = ("key", "model", "route", "day")
_RELATIVE = re.compile(r"^(\d+)\s*([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
# Claim statuses that mean money moved (or is queued to): see payments/ledger.py.
PAID_STATUSES = ("settled", "queued")
NO_KEY = "-"


def parse_time(text: str, now: float | None = None) -> float:
    """A report bound as seconds since the epoch: `today`, `yesterday` (UTC midnights), a
    relative `24h` / `7d` / `30m` (that long before now), an ISO date `2025-01-31` (UTC
    midnight) or an ISO time `2025-01-31T12:00[:00][+02:00]` (UTC when no offset)."""
    t = time.time() if now is None else now
    s = text.strip().lower()
    midnight = datetime.fromtimestamp(t, UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    if s == "now":
        return t
    if s == "today":
        return midnight.timestamp()
    if s == "yesterday":
        return (midnight - timedelta(days=1)).timestamp()
    m = _RELATIVE.match(s)
    if m:
        return t - int(m.group(1)) * _UNITS[m.group(2)]
    try:
        if len(s) == 10:
            d = date.fromisoformat(s)
            return datetime(d.year, d.month, d.day, tzinfo=UTC).timestamp()
        dt = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"not a time: {text!r} (today, yesterday, 24h, 7d, 2025-01-31, 2025-01-31T12:00)"
        ) from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


@dataclass(frozen=True)
class Payment:
    """What the ledger says one request paid."""

    asset: str
    amount: Decimal


@dataclass
class Row:
    """One group of the report."""

    group: tuple[str, ...]
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    paid: Decimal = ZERO
    priced: Decimal = ZERO
    paid_by_asset: dict[str, Decimal] = field(default_factory=dict)

    @property
    def cost(self) -> Decimal:
        return self.paid + self.priced

    def as_dict(self, by: Sequence[str]) -> dict[str, Any]:
        return {
            **dict(zip(by, self.group, strict=True)),
            "requests": self.requests,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "paid": str(self.paid),
            "priced": str(self.priced),
            "cost": str(self.cost),
        }


def key_of(record: Mapping[str, Any], aliases: bool) -> str:
    """The key a record is reported under: its budget key, else the identity it was
    attributed to (a registered key, a refused key's hash, a verified payer) — a registered
    key's alias when there is a registry — else `-`."""
    budget = record.get("budget") or {}
    key = budget.get("key") or record.get("identity")
    if isinstance(key, str) and key:
        if aliases and key.startswith("key_"):
            return key[len("key_") :]
        return key
    payer = (record.get("payment") or {}).get("payer")
    if isinstance(payer, str) and payer:
        return f"payer_{payer.lower()}"
    return NO_KEY


def day_of(started_at: float) -> str:
    return datetime.fromtimestamp(started_at, UTC).date().isoformat()


def aggregate(
    records: Iterable[Mapping[str, Any]],
    payments: Mapping[str, Payment],
    prices: Mapping[str, TokenRates],
    paid_routes: frozenset[str],
    by: Sequence[str],
    *,
    aliases: bool = False,
    key: str | None = None,
    known: Mapping[str, Asset] | None = None,
) -> list[Row]:
    """Group `records` by the dimensions `by` (in order), most expensive first. `key` keeps
    only the records of that key (an alias or a budget key). One-time payments are what the
    ledger says (`payments`); a stream paid per token is what its record says its channel
    was charged (`known`: assets by address)."""
    for d in by:
        if d not in DIMENSIONS:
            raise ValueError(f"cannot group by {d!r}; expected {', '.join(DIMENSIONS)}")
    rows: dict[tuple[str, ...], Row] = {}
    for r in records:
        k = key_of(r, aliases)
        if key is not None and key not in (k, f"key_{k}"):
            continue
        values = {
            "key": k,
            "model": r.get("model") or "-",
            "route": r.get("route") or "-",
            "day": day_of(float(r["started_at"])),
        }
        group = tuple(values[d] for d in by)
        row = rows.get(group)
        if row is None:
            row = rows[group] = Row(group)
        row.requests += 1
        row.prompt_tokens += r.get("prompt_tokens") or 0
        row.completion_tokens += r.get("completion_tokens") or 0
        payment = payments.get(str(r["request_id"])) or _session_charge(r, known or {})
        if payment is not None:
            row.paid += payment.amount
            row.paid_by_asset[payment.asset] = (
                row.paid_by_asset.get(payment.asset, ZERO) + payment.amount
            )
        elif (
            r.get("payment") is None
            and r.get("route") not in paid_routes
            and r.get("outcome") != "rejected"  # answered by the gateway: never upstream
        ):
            row.priced += priced(
                prices, r.get("model"), r.get("prompt_tokens"), r.get("completion_tokens")
            )
    return sorted(rows.values(), key=lambda x: (-x.cost, -x.requests, x.group))


def _session_charge(record: Mapping[str, Any], known: Mapping[str, Asset]) -> Payment | None:
    """What a stream paid per token was charged (its record mirrors the channel's `spent`
    for this request; issue 20 #1: session routes reported `paid $0`)."""
    protocol = str((record.get("payment") or {}).get("protocol") or "")
    if not protocol.startswith("mpp-session"):
        return None
    asset, amount = paid_amount(record, known)
    return Payment(asset, amount) if amount else None


def total(rows: Iterable[Row]) -> Row:
    t = Row(("total",))
    for r in rows:
        t.requests += r.requests
        t.prompt_tokens += r.prompt_tokens
        t.completion_tokens += r.completion_tokens
        t.paid += r.paid
        t.priced += r.priced
    return t


# ---- reading the stores ---------------------------------------------------------------


def sqlite_records(
    path: str | Path, since: float | None, until: float | None
) -> list[dict[str, Any]]:
    """Records of a SQLite usage file started in [since, until)."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(2, "No such usage file", str(p))
    conn = sqlite3.connect(f"file:{p}?mode=ro", uri=True, timeout=10)
    try:
        sql, args = _window("SELECT record FROM usage_records", "?", since, until)
        return [orjson.loads(row[0]) for row in conn.execute(sql, args)]
    finally:
        conn.close()


def _window(
    select: str, mark: str, since: float | None, until: float | None
) -> tuple[str, list[float]]:
    where, args = [], []
    for op, value in ((">=", since), ("<", until)):
        if value is not None:
            args.append(value)
            where.append(f"started_at {op} {mark if mark == '?' else f'${len(args)}'}")
    return (select + (" WHERE " + " AND ".join(where) if where else "")), args


async def postgres_records(
    url: str, schema: str | None, since: float | None, until: float | None
) -> list[dict[str, Any]]:
    import asyncpg

    table = f"{schema}.usage_records" if schema else "usage_records"
    sql, args = _window(f"SELECT record::text FROM {table}", "$", since, until)
    conn = await asyncpg.connect(url, timeout=10)
    try:
        return [orjson.loads(row[0]) for row in await conn.fetch(sql, *args)]
    finally:
        await conn.close()


def _payments(rows: Iterable[Sequence[Any]], known: Mapping[str, Asset]) -> dict[str, Payment]:
    out: dict[str, Payment] = {}
    for request_id, amount, address in rows:
        asset = known.get(str(address).lower())
        out[str(request_id)] = Payment(
            asset.symbol if asset else str(address), from_base_units(amount, asset)
        )
    return out


_CLAIMS = (
    "SELECT request_id, amount, asset FROM payment_claims WHERE status IN ('settled', 'queued')"
)


def sqlite_payments(path: str | Path, known: Mapping[str, Asset]) -> dict[str, Payment]:
    """Paid claims of a SQLite ledger by request id (empty when there is no ledger file)."""
    p = Path(path)
    if not p.exists():
        return {}
    conn = sqlite3.connect(f"file:{p}?mode=ro", uri=True, timeout=10)
    try:
        return _payments(conn.execute(_CLAIMS), known)
    finally:
        conn.close()


async def postgres_payments(
    url: str, schema: str | None, known: Mapping[str, Asset]
) -> dict[str, Payment]:
    import asyncpg

    conn = await asyncpg.connect(
        url, timeout=10, server_settings={"search_path": schema} if schema else None
    )
    try:
        exists = await conn.fetchval("SELECT to_regclass('payment_claims') IS NOT NULL")
        return _payments(await conn.fetch(_CLAIMS), known) if exists else {}
    finally:
        await conn.close()


async def report(
    config: Config,
    by: Sequence[str],
    since: float | None,
    until: float | None,
    key: str | None = None,
) -> list[Row]:
    """The report over the config's usage store and ledger."""
    usage = config.usage
    if usage.sink == "sqlite":
        records = sqlite_records(usage.path, since, until)
    elif usage.sink == "postgres":
        assert usage.url is not None
        records = await postgres_records(usage.url, usage.schema, since, until)
    else:
        raise ValueError(
            f"usage.sink is {usage.sink!r}: reports read a sqlite or postgres usage store"
        )
    paid_routes = frozenset(r.key for r in config.routes if r.payment.type != "free")
    payments: dict[str, Payment] = {}
    known = assets(config.accepts)
    if paid_routes:
        if config.ledger.type == "postgres":
            assert config.ledger.url is not None
            payments = await postgres_payments(config.ledger.url, config.ledger.schema, known)
        else:
            payments = sqlite_payments(config.ledger.path, known)
    return aggregate(
        records,
        payments,
        config.prices,
        paid_routes,
        by,
        aliases=config.keys is not None,
        key=key,
        known=known,
    )

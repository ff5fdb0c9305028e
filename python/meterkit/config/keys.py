"""The `keys:` section: a registry of the API keys the gateway accepts.

    keys:
      entries:                         # in the config ...
        alice: {sha256: 2cf24dba…, budgets: {default: {tokens_per_day: 100000}}}
      file: keys.yaml                  # ... or a file holding such an `entries:` mapping
      postgres: {url: "${DATABASE_URL}", table: meterkit_api_keys}   # ... or PostgreSQL
      cache_ttl: 10s                   # PostgreSQL lookups are cached this long

Keys are stored hashed (`sha256` of the key, hex; `meterkit hash-key` prints it), never raw.
The alias names the key everywhere (budgets, records, logs), so a rotated key that keeps its
alias keeps its budget.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from meterkit.config.problems import KeyPath, Problems
from meterkit.config.units import as_number, parse_duration

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_ALIAS = re.compile(r"^[A-Za-z0-9_.@:-]{1,128}$")
_IDENT = re.compile(r"^[a-z_][a-z0-9_]*$")
OVERRIDE_KEYS = ("tokens_per_minute", "tokens_per_day", "burst_tokens", "max_completion_tokens")


@dataclass(frozen=True)
class KeyEntry:
    alias: str
    sha256: str
    # Per budget policy name: the limits this key gets instead of the policy's.
    budgets: Mapping[str, Mapping[str, int]] = field(default_factory=dict)


@dataclass(frozen=True)
class Keys:
    entries: Mapping[str, KeyEntry] = field(default_factory=dict)
    file: str | None = None
    postgres_url: str | None = None
    table: str = "meterkit_api_keys"
    cache_ttl: float = 10.0


def parse_entries(value: Any, path: KeyPath, problems: Problems) -> dict[str, KeyEntry]:
    """`alias: {sha256: HEX, budgets: {policy: {limit: n}}}` → entries keyed by their hash."""
    if not isinstance(value, dict):
        problems.add(path, "expected a mapping of alias to {sha256: …}")
        return {}
    out: dict[str, KeyEntry] = {}
    for alias, spec in value.items():
        p = path / str(alias)
        if not isinstance(alias, str) or not _ALIAS.match(alias):
            problems.add(p, "an alias is 1-128 letters, digits or _.@:-")
            continue
        if not isinstance(spec, dict):
            problems.add(p, "expected {sha256: …, budgets: …}")
            continue
        problems.unknown_keys(p, spec, ("sha256", "budgets"))
        digest = spec.get("sha256")
        if not isinstance(digest, str) or not _HEX64.match(digest.lower()):
            problems.add(
                p / "sha256",
                "expected the key's SHA-256 as 64 hex digits (`meterkit hash-key`), "
                "never the key itself",
            )
            continue
        digest = digest.lower()
        if digest in out:
            problems.add(p / "sha256", f"the same key as {out[digest].alias!r}")
            continue
        budgets: dict[str, Mapping[str, int]] = {}
        bm = spec.get("budgets") or {}
        if not isinstance(bm, dict):
            problems.add(p / "budgets", "expected a mapping of budget name to limits")
            bm = {}
        for name, limits in bm.items():
            bp = p / "budgets" / str(name)
            if not isinstance(limits, dict):
                problems.add(bp, f"expected limits like {{{OVERRIDE_KEYS[1]}: 100000}}")
                continue
            problems.unknown_keys(bp, limits, OVERRIDE_KEYS)
            chosen: dict[str, int] = {}
            for k in OVERRIDE_KEYS:
                if k in limits:
                    v = as_number(limits[k])
                    if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                        problems.add(bp / k, f"expected a positive integer, got {v!r}")
                    else:
                        chosen[k] = v
            budgets[str(name)] = MappingProxyType(chosen)
        out[digest] = KeyEntry(alias, digest, MappingProxyType(budgets))
    return out


def parse_keys(value: Any, path: KeyPath, problems: Problems) -> Keys | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        problems.add(path, "expected {entries: …}, {file: PATH} or {postgres: {url: …}}")
        return None
    problems.unknown_keys(path, value, ("entries", "file", "postgres", "cache_ttl"))
    sources = [k for k in ("entries", "file", "postgres") if k in value]
    if len(sources) != 1:
        problems.add(path, "give exactly one of entries, file or postgres")
        return None
    kw: dict[str, Any] = {}
    if "entries" in value:
        kw["entries"] = MappingProxyType(
            parse_entries(value["entries"], path / "entries", problems)
        )
    if "file" in value:
        if not isinstance(value["file"], str) or not value["file"]:
            problems.add(path / "file", "expected a path")
        else:
            kw["file"] = value["file"]
    if "postgres" in value:
        pg = value["postgres"]
        pp = path / "postgres"
        if not isinstance(pg, dict):
            problems.add(pp, "expected {url: postgresql://…, table: NAME}")
        else:
            problems.unknown_keys(pp, pg, ("url", "table"))
            url = pg.get("url")
            if not isinstance(url, str) or not url.startswith(("postgres://", "postgresql://")):
                problems.add(pp / "url", "expected a postgresql:// URL")
            else:
                kw["postgres_url"] = url
            table = pg.get("table", Keys.table)
            if not isinstance(table, str) or not _IDENT.match(table):
                problems.add(pp / "table", "expected a lowercase SQL identifier")
            else:
                kw["table"] = table
    if "cache_ttl" in value:
        try:
            kw["cache_ttl"] = parse_duration(value["cache_ttl"])
        except ValueError as e:
            problems.add(path / "cache_ttl", str(e))
    return Keys(**kw)

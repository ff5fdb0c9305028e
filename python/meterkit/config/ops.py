"""Operator settings: the admin listener (`admin:`), the price table for reports and spend
metrics (`prices:`), and the opt-in per-key metric label (`metrics.key_label`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from meterkit.config.payments import TokenRates, parse_rates
from meterkit.config.problems import KeyPath, Problems
from meterkit.config.units import as_number

# The admin token is a password for budget grants: refuse one short enough to guess.
MIN_ADMIN_TOKEN = 16
ADMIN_KEYS = ("host", "port", "token")
# off: no per-key series (the default: one series per client is unbounded); hashed: the
# first 12 hex digits of the budget key's SHA-256; alias: a registered key's alias, else hashed.
KEY_LABELS = ("off", "hashed", "alias")


@dataclass(frozen=True)
class Admin:
    """The admin listener: budgets, metrics and readiness, on an address of its own, every
    request but `/healthz` authenticated with `Authorization: Bearer <token>`."""

    token: str
    host: str = "127.0.0.1"
    port: int = 9464


def parse_admin(value: Any, path: KeyPath, problems: Problems) -> Admin | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        problems.add(path, "expected a mapping {host, port, token}")
        return None
    problems.unknown_keys(path, value, ADMIN_KEYS)
    token = value.get("token")
    if not isinstance(token, str) or not token:
        problems.add(path / "token", "required: the bearer token admin requests must carry")
        return None
    if len(token) < MIN_ADMIN_TOKEN:
        problems.add(path / "token", f"too short: use at least {MIN_ADMIN_TOKEN} characters")
        return None
    host = value.get("host", Admin.host)
    if not isinstance(host, str) or not host:
        problems.add(path / "host", "expected an address")
        return None
    port = as_number(value.get("port", Admin.port))
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        problems.add(path / "port", f"expected a port number 0-65535, got {port!r}")
        return None
    return Admin(token=token, host=host, port=port)


def parse_prices(value: Any, path: KeyPath, problems: Problems) -> Mapping[str, TokenRates]:
    """`prices: {gpt-4o: {input: "$2.50", output: "$10.00"}, default: {…}}`: what a token
    costs on routes that take no payment, per `per` tokens (default one million)."""
    if value is None:
        return {}
    return parse_rates(value, path, problems)


def parse_key_label(value: Any, path: KeyPath, problems: Problems) -> str:
    if value is False:
        return "off"
    if value not in KEY_LABELS:
        problems.add(path, f"expected one of {', '.join(KEY_LABELS)}, got {value!r}")
        return "off"
    return str(value)

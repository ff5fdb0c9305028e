"""Unambiguous units for config values: durations in seconds, byte sizes, money as Decimal.

Traps these rules avoid (seen in an existing gateway): a timeout documented in seconds but
read as milliseconds, and a price without a decimal point read as raw base units. Here a bare
number of seconds is seconds, "250ms" is milliseconds, and "$1" is one dollar.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

__all__ = ["as_number", "parse_duration", "parse_money", "parse_size"]

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_DURATION_UNITS = {
    "ms": Decimal("0.001"),
    "s": Decimal(1),
    "m": Decimal(60),
    "h": Decimal(3600),
    # Days, as the CLI's `7d` (issue 20 #8: a config refused `1d`).
    "d": Decimal(86400),
    None: Decimal(1),
}
_SIZE = re.compile(r"^\s*(\d+)\s*(B|KB|KiB|MB|MiB|GB|GiB)?\s*$")
_SIZE_UNITS = {
    None: 1,
    "B": 1,
    "KB": 1000,
    "KiB": 1024,
    "MB": 10**6,
    "MiB": 2**20,
    "GB": 10**9,
    "GiB": 2**30,
}
_MONEY = re.compile(r"^\s*\$\s*(\d+(?:\.\d+)?)\s*$")
_INT = re.compile(r"^\s*[-+]?\d+\s*$")


def as_number(value: object) -> object:
    """An integer written as a string (`"8080"`, what `${PORT}` gives) as an int; anything
    else unchanged. Every integer setting goes through this, so any number can come from the
    environment."""
    if isinstance(value, str) and _INT.match(value):
        return int(value)
    return value


def parse_duration(value: object) -> float:
    """Seconds from a number (seconds) or a string like "30s", "250ms", "5m", "1h"."""
    if isinstance(value, bool):
        raise ValueError("expected a duration (seconds, or a string like '30s'), not a boolean")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError(f"duration must not be negative, got {value}")
        return float(value)
    if isinstance(value, str):
        m = _DURATION.match(value)
        if m:
            return float(Decimal(m.group(1)) * _DURATION_UNITS[m.group(2)])
        raise ValueError(
            f"invalid duration {value!r}: use seconds (30) or a unit (250ms, 30s, 5m, 1h, 1d)"
        )
    raise ValueError(f"expected a duration, got {type(value).__name__}")


def parse_size(value: object) -> int:
    """Bytes from an integer or a string like "4MiB", "512KB"."""
    if isinstance(value, bool):
        raise ValueError("expected a size in bytes, not a boolean")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"size must not be negative, got {value}")
        return value
    if isinstance(value, str):
        m = _SIZE.match(value)
        if m:
            return int(m.group(1)) * _SIZE_UNITS[m.group(2)]
        raise ValueError(
            f"invalid size {value!r}: use bytes (1048576) or a unit (512KiB, 4MiB, 1GB)"
        )
    raise ValueError(f"expected a size, got {type(value).__name__}")


def parse_money(value: object) -> Decimal:
    """A price as an exact Decimal in currency units: "$0.25" is a quarter, "$1" one dollar.

    Numbers are refused (YAML floats are binary fractions); write prices as "$" strings.
    """
    if isinstance(value, str):
        m = _MONEY.match(value)
        if m:
            try:
                return Decimal(m.group(1))
            except InvalidOperation:  # pragma: no cover - the regex admits only digits
                pass
        raise ValueError(f'invalid price {value!r}: write it as a dollar string like "$0.25"')
    raise ValueError(
        f'invalid price {value!r}: write it as a dollar string like "$0.25" (numbers are ambiguous)'
    )

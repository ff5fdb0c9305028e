"""Strict JSON for payment headers: whatever a client sends, decoding either returns a value or
raises `ValueError` (never `RecursionError`, `MemoryError` or an encoding error later on).

The stdlib decoder recurses once per nesting level: `[` × 1100 in a credential raised
`RecursionError`, which escaped every `except ValueError` and answered 500. `orjson` parses
first (it stops at 1024 levels with an ordinary decode error, rejects NaN/Infinity, invalid
UTF-8 and lone surrogates), the depth is then checked without recursion, and only a shallow
document reaches the stdlib parser, which is kept for one job `orjson` cannot do: refusing
duplicate keys (two `amount`s must not mean whichever the parser keeps).
"""

from __future__ import annotations

import json
from typing import Any

import orjson

# A credential is at most four levels deep (credential → challenge/payload → authorization);
# 32 leaves room for extensions and none for abuse.
MAX_DEPTH = 32


class RejectedJSON(ValueError):
    """The bytes are not a JSON document a payment header may carry."""


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise RejectedJSON(f"duplicate key {k!r}")
        out[k] = v
    return out


def depth(value: Any) -> int:
    """Nesting depth of a decoded JSON value (a scalar is 0), without recursion."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, dict):
            d += 1
            stack.extend((x, d) for x in v.values())
        elif isinstance(v, list):
            d += 1
            stack.extend((x, d) for x in v)
        deepest = max(deepest, d)
    return deepest


def loads(raw: bytes, *, max_depth: int = MAX_DEPTH) -> Any:
    try:
        first = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise RejectedJSON(f"not valid JSON: {e}") from None
    if depth(first) > max_depth:
        raise RejectedJSON(f"nested deeper than {max_depth} levels")
    try:
        # Depth is bounded now, so the recursive stdlib parser is safe. Its value is the one
        # returned: it refuses duplicate keys (orjson keeps the last) and keeps integers
        # beyond 64 bits exact (orjson turns them into floats).
        return json.loads(raw, object_pairs_hook=_no_duplicates)
    except RejectedJSON:
        raise
    except (ValueError, RecursionError) as e:
        # ValueError: e.g. an integer longer than `sys.get_int_max_str_digits()`.
        raise RejectedJSON(f"not valid JSON: {e}") from None

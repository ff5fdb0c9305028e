"""The `budgets:` and `budget_store:` sections."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from meterkit.config.problems import KeyPath, Problems
from meterkit.config.units import as_number, parse_duration

KEY_KINDS = ("api_key", "ip", "payer")


@dataclass(frozen=True)
class KeySpec:
    """What a budget is keyed by. Only verified or hashed identities: `api_key` (the bearer
    token or x-api-key, hashed), `ip` (the client address, X-Forwarded-For believed only from
    trusted proxies), `payer` (a verified payment signer), or a named header (hashed)."""

    kind: str
    header: str | None = None


@dataclass(frozen=True)
class StreamingPolicy:
    enforce_mid_stream: bool = True
    buffer_tokens: int = 100
    on_limit_exceeded: str = "graceful_close"
    include_partial_usage: bool = False


@dataclass(frozen=True)
class BudgetPolicy:
    name: str
    key: KeySpec
    tokens_per_minute: int | None = None
    tokens_per_day: int | None = None
    burst_tokens: int | None = None
    max_completion_tokens: int = 4096
    streaming: StreamingPolicy = field(default_factory=StreamingPolicy)
    mode: str = "enforce"
    on_backend_failure: str = "closed"


@dataclass(frozen=True)
class BudgetStore:
    type: str = "memory"
    url: str | None = None
    prefix: str = "meterkit:"
    lease_ttl: float = 120.0
    timeout: float = 0.5


_POLICY_KEYS = (
    "key",
    "tokens_per_minute",
    "tokens_per_day",
    "burst_tokens",
    "max_completion_tokens",
    "streaming",
    "mode",
    "on_backend_failure",
)
_STREAMING_KEYS = (
    "enforce_mid_stream",
    "buffer_tokens",
    "on_limit_exceeded",
    "include_partial_usage",
)


def _positive_int(m: Mapping[str, Any], key: str, path: KeyPath, problems: Problems) -> int | None:
    if key not in m or m[key] is None:
        return None
    v = as_number(m[key])
    if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
        problems.add(path / key, f"expected a positive integer, got {v!r}")
        return None
    return v


def _bool(m: Mapping[str, Any], key: str, default: bool, path: KeyPath, problems: Problems) -> bool:
    v = m.get(key, default)
    if not isinstance(v, bool):
        problems.add(path / key, f"expected true or false, got {v!r}")
        return default
    return v


def _choice(
    m: Mapping[str, Any],
    key: str,
    choices: tuple[str, ...],
    default: str,
    path: KeyPath,
    problems: Problems,
) -> str:
    v = m.get(key, default)
    if v not in choices:
        problems.add(path / key, f"expected one of {', '.join(choices)}, got {v!r}")
        return default
    return str(v)


def _key(value: Any, path: KeyPath, problems: Problems) -> KeySpec:
    if isinstance(value, str) and value in KEY_KINDS:
        return KeySpec(value)
    if (
        isinstance(value, dict)
        and set(value) == {"header"}
        and isinstance(value["header"], str)
        and value["header"]
    ):
        return KeySpec("header", value["header"])
    problems.add(path, f"expected one of {', '.join(KEY_KINDS)} or {{header: NAME}}, got {value!r}")
    return KeySpec("api_key")


def parse_policy(name: str, value: Any, path: KeyPath, problems: Problems) -> BudgetPolicy | None:
    if not isinstance(value, dict):
        problems.add(path, f"expected a mapping, got {type(value).__name__}")
        return None
    problems.unknown_keys(path, value, _POLICY_KEYS)
    if "key" not in value:
        problems.add(
            path / "key",
            "required: what the budget is keyed by (api_key, ip, payer or {header: NAME})",
        )
    key = _key(value.get("key", "api_key"), path / "key", problems)
    tpm = _positive_int(value, "tokens_per_minute", path, problems)
    burst = _positive_int(value, "burst_tokens", path, problems)
    if burst is not None and tpm is None:
        problems.add(path / "burst_tokens", "needs tokens_per_minute (it is the bucket's capacity)")
    streaming = StreamingPolicy()
    sm = value.get("streaming")
    if sm is not None:
        if not isinstance(sm, dict):
            problems.add(path / "streaming", "expected a mapping")
        else:
            problems.unknown_keys(path / "streaming", sm, _STREAMING_KEYS)
            sp = path / "streaming"
            streaming = StreamingPolicy(
                enforce_mid_stream=_bool(sm, "enforce_mid_stream", True, sp, problems),
                buffer_tokens=_positive_int(sm, "buffer_tokens", sp, problems) or 100,
                on_limit_exceeded=_choice(
                    sm,
                    "on_limit_exceeded",
                    ("graceful_close", "error_chunk"),
                    "graceful_close",
                    sp,
                    problems,
                ),
                include_partial_usage=_bool(sm, "include_partial_usage", False, sp, problems),
            )
    return BudgetPolicy(
        name=name,
        key=key,
        tokens_per_minute=tpm,
        tokens_per_day=_positive_int(value, "tokens_per_day", path, problems),
        burst_tokens=burst,
        max_completion_tokens=_positive_int(value, "max_completion_tokens", path, problems) or 4096,
        streaming=streaming,
        mode=_choice(value, "mode", ("enforce", "shadow"), "enforce", path, problems),
        on_backend_failure=_choice(
            value, "on_backend_failure", ("open", "closed"), "closed", path, problems
        ),
    )


def parse_store(value: Any, path: KeyPath, problems: Problems) -> BudgetStore:
    if value is None:
        return BudgetStore()
    if not isinstance(value, dict):
        problems.add(path, "expected a mapping")
        return BudgetStore()
    problems.unknown_keys(path, value, ("type", "url", "prefix", "lease_ttl", "timeout"))
    kind = _choice(value, "type", ("memory", "redis"), "memory", path, problems)
    url = value.get("url") or (os.environ.get("REDIS_URL") if kind == "redis" else None)
    if kind == "redis":
        if not isinstance(url, str) or not url.startswith(("redis://", "rediss://", "unix://")):
            problems.add(
                path / "url", "a redis:// URL is required for type redis (or set REDIS_URL)"
            )
    prefix = value.get("prefix", "meterkit:")
    if not isinstance(prefix, str):
        problems.add(path / "prefix", "expected a string")
        prefix = "meterkit:"
    out: dict[str, float] = {}
    for k, default in (("lease_ttl", 120.0), ("timeout", 0.5)):
        try:
            out[k] = parse_duration(value.get(k, default))
            if out[k] <= 0:
                problems.add(path / k, "must be positive")
        except ValueError as e:
            problems.add(path / k, str(e))
            out[k] = default
    return BudgetStore(type=kind, url=url if isinstance(url, str) else None, prefix=prefix, **out)

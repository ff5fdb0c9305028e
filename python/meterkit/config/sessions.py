"""The top-level `sessions:` section: where session routes find their payment channels.

    sessions:
      channels: prepaid            # the default: deposits credited by the operator
    sessions:
      channels:
        type: onchain              # an escrow contract (contracts/MeterkitEscrow.sol)
        rpc_url: http://127.0.0.1:8545
        escrow: "0x…"
        operator_key: "${OPERATOR_KEY}"   # the channels' payee: settles and closes
        cache: 2s                  # how long a getChannel read is trusted

The escrow pays the channel's payee only, and only the payee may settle or close: the
operator key's address must be the `pay_to` of every accepted asset.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from meterkit.config.payments import (
    DEFAULT_GAS_LIMIT,
    DEFAULT_MAX_FEE,
    DEFAULT_PRIORITY_FEE,
    Accept,
    Chain,
    parse_wei,
)
from meterkit.config.problems import KeyPath, Problems
from meterkit.config.units import parse_duration

_ADDRESS = re.compile(r"^0x[0-9a-fA-F]{40}$")
_KEY = re.compile(r"^(0x)?[0-9a-fA-F]{64}$")
ONCHAIN_KEYS = (
    "type",
    "rpc_url",
    "escrow",
    "operator_key",
    "cache",
    "timeout",
    "confirmations",
    "max_fee_per_gas",
    "max_priority_fee_per_gas",
    "gas_limit",
    "receipt_timeout",
    "poll_interval",
)


@dataclass(frozen=True)
class OnchainChannels:
    """Channels in an escrow contract, read over JSON-RPC (`getChannel`, cached `cache`
    seconds) and settled with the operator's key (`chain.relayer_key`: it pays the gas)."""

    escrow: str
    chain: Chain = field(repr=False)
    cache: float = 2.0
    timeout: float = 10.0


@dataclass(frozen=True)
class Sessions:
    # "prepaid" (the session store's own deposits) or "onchain".
    channels: str = "prepaid"
    onchain: OnchainChannels | None = None


def parse_sessions(value: Any, path: KeyPath, problems: Problems) -> Sessions:
    if value is None:
        return Sessions()
    if not isinstance(value, dict):
        problems.add(path, "expected {channels: prepaid | {type: onchain, rpc_url: …}}")
        return Sessions()
    problems.unknown_keys(path, value, ("channels",))
    ch = value.get("channels", "prepaid")
    cpath = path / "channels"
    if ch == "prepaid" or (isinstance(ch, dict) and ch.get("type") == "prepaid" and len(ch) == 1):
        return Sessions()
    if not isinstance(ch, dict) or ch.get("type") != "onchain":
        problems.add(
            cpath,
            "expected prepaid, or {type: onchain, rpc_url: …, escrow: …, operator_key: …}",
        )
        return Sessions()
    problems.unknown_keys(cpath, ch, ONCHAIN_KEYS)
    ok = True
    url = ch.get("rpc_url")
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        problems.add(cpath / "rpc_url", "the chain node's http(s) JSON-RPC URL")
        ok = False
    escrow = ch.get("escrow")
    if not isinstance(escrow, str) or not _ADDRESS.match(escrow):
        problems.add(cpath / "escrow", "the escrow contract's address (0x + 40 hex digits)")
        ok = False
    key = ch.get("operator_key")
    if not isinstance(key, str) or not _KEY.match(key):
        # Never echo the value: it may be most of a private key.
        problems.add(
            cpath / "operator_key",
            'expected the operator\'s private key as 0x + 64 hex digits, e.g. "${OPERATOR_KEY}"',
        )
        ok = False
    kw: dict[str, Any] = {}
    for k in ("confirmations", "gas_limit"):
        if k in ch:
            v = ch[k]
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                problems.add(cpath / k, "expected a positive integer")
                ok = False
            else:
                kw[k] = v
    for k in ("max_fee_per_gas", "max_priority_fee_per_gas"):
        if k in ch:
            try:
                kw[k] = parse_wei(ch[k])
            except ValueError as e:
                problems.add(cpath / k, str(e))
                ok = False
    times: dict[str, float] = {}
    for k in ("receipt_timeout", "poll_interval", "cache", "timeout"):
        if k in ch:
            try:
                times[k] = parse_duration(ch[k])
            except ValueError as e:
                problems.add(cpath / k, str(e))
                ok = False
    if not ok:
        return Sessions()
    assert isinstance(url, str) and isinstance(key, str) and isinstance(escrow, str)
    kw.setdefault("gas_limit", DEFAULT_GAS_LIMIT)
    kw.setdefault("max_fee_per_gas", DEFAULT_MAX_FEE)
    kw.setdefault("max_priority_fee_per_gas", DEFAULT_PRIORITY_FEE)
    if kw["max_priority_fee_per_gas"] > kw["max_fee_per_gas"]:
        problems.add(cpath / "max_priority_fee_per_gas", "must not exceed max_fee_per_gas")
        return Sessions()
    for k in ("receipt_timeout", "poll_interval"):
        if k in times:
            kw[k] = times[k]
    chain = Chain(rpc_url=url, relayer_key=key, **kw)
    return Sessions(
        "onchain",
        OnchainChannels(
            escrow,
            chain,
            times.get("cache", OnchainChannels.cache),
            times.get("timeout", OnchainChannels.timeout),
        ),
    )


def check_payee(
    sessions: Sessions,
    accepts: tuple[Accept, ...] | list[Accept],
    path: KeyPath,
    problems: Problems,
) -> None:
    """The escrow pays the payee and lets only the payee settle: the operator is the payee."""
    if sessions.onchain is None:
        return
    from meterkit import _core

    operator = _core.address_of(
        bytes.fromhex(sessions.onchain.chain.relayer_key.removeprefix("0x"))
    )
    for i, a in enumerate(accepts):
        if a.pay_to.lower() != operator.lower():
            problems.add(
                path / "channels" / "operator_key",
                f"the escrow pays a channel's payee and only the payee may settle: accepts[{i}] "
                f"pays {a.pay_to}, the operator key is {operator}'s",
            )

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

from meterkit.config.payments import Accept, Chain, parse_chain
from meterkit.config.problems import KeyPath, Problems
from meterkit.config.units import parse_duration

_ADDRESS = re.compile(r"^0x[0-9a-fA-F]{40}$")
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
    escrow = ch.get("escrow")
    if not isinstance(escrow, str) or not _ADDRESS.fullmatch(escrow):
        problems.add(cpath / "escrow", "the escrow contract's address (0x + 40 hex digits)")
        ok = False
    times, times_ok = problems.parsed(cpath, ch, ("cache", "timeout"), parse_duration)
    ok = ok and times_ok
    chain = parse_chain(ch, cpath, problems, key_name="operator_key", who="operator")
    if not ok or chain is None:
        return Sessions()
    assert isinstance(escrow, str)
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

"""`payments.settlement` for on-chain settlement: `type: onchain` (and the same keys on
`type: deferred`, for `meterkit ledger settle`)."""

from __future__ import annotations

from typing import Any

import pytest

from meterkit.config import ConfigError, config_from_dict
from meterkit.config.payments import parse_wei

KEY = "0x" + "ab" * 32


def tree(settlement: dict[str, Any]) -> dict[str, Any]:
    return {
        "wallets": {"base-sepolia": "0x" + "22" * 20},
        "accepts": [{"asset": "USDC", "network": "base-sepolia"}],
        "payments": {"secret": "payment-secret-for-tests-0123456789", "settlement": settlement},
        "upstreams": {"api": {"url": "http://127.0.0.1:9"}},
        "routes": {"POST /v1/chat/completions": {"upstream": "api", "price": "$0.01"}},
    }


def test_onchain_settlement_parses_with_units() -> None:
    s = config_from_dict(
        tree(
            {
                "type": "onchain",
                "rpc_url": "http://127.0.0.1:8545",
                "relayer_key": KEY,
                "confirmations": 3,
                "max_fee_per_gas": "30 gwei",
                "max_priority_fee_per_gas": "0.5 gwei",
                "receipt_timeout": "2m",
            }
        )
    ).payments.settlement
    assert s.type == "onchain"
    assert s.chain is not None
    assert (s.chain.confirmations, s.chain.max_fee_per_gas, s.chain.max_priority_fee_per_gas) == (
        3,
        30 * 10**9,
        5 * 10**8,
    )
    assert s.chain.receipt_timeout == 120
    assert KEY not in repr(s)  # the relayer key never reaches a log line


def test_deferred_may_carry_the_chain_for_ledger_settle() -> None:
    s = config_from_dict(
        tree({"type": "deferred", "rpc_url": "http://127.0.0.1:8545", "relayer_key": KEY})
    ).payments.settlement
    assert s.chain is not None and s.chain.rpc_url == "http://127.0.0.1:8545"
    assert config_from_dict(tree({"type": "deferred"})).payments.settlement.chain is None


@pytest.mark.parametrize(
    ("settlement", "where", "message"),
    [
        ({"type": "onchain", "relayer_key": KEY}, "rpc_url", "JSON-RPC URL"),
        ({"type": "onchain", "rpc_url": "http://x"}, "relayer_key", "64 hex digits"),
        (
            {"type": "onchain", "rpc_url": "http://x", "relayer_key": "0x1234"},
            "relayer_key",
            "64 hex digits",
        ),
        (
            {"type": "onchain", "rpc_url": "http://x", "relayer_key": KEY, "confirmations": 0},
            "confirmations",
            "positive integer",
        ),
        (
            {
                "type": "onchain",
                "rpc_url": "http://x",
                "relayer_key": KEY,
                "max_fee_per_gas": "1 gwei",
                "max_priority_fee_per_gas": "2 gwei",
            },
            "max_priority_fee_per_gas",
            "must not exceed",
        ),
        (
            {"type": "facilitator", "url": "http://x", "rpc_url": "http://y"},
            "rpc_url",
            "applies to type: onchain",
        ),
    ],
)
def test_onchain_settlement_problems(settlement: dict[str, Any], where: str, message: str) -> None:
    with pytest.raises(ConfigError) as e:
        config_from_dict(tree(settlement))
    (problem,) = e.value.problems
    assert where in str(problem) and message in str(problem)
    assert "1234" not in str(problem)  # a wrong key is never echoed


@pytest.mark.parametrize(
    ("text", "wei"),
    [(7, 7), ("100 wei", 100), ("1.5 gwei", 1_500_000_000), ("0.01 ether", 10**16)],
)
def test_parse_wei(text: Any, wei: int) -> None:
    assert parse_wei(text) == wei


@pytest.mark.parametrize("text", ["0.5 wei", "-1", "lots", True, -3])
def test_parse_wei_refuses(text: Any) -> None:
    with pytest.raises(ValueError):
        parse_wei(text)

"""Payment channels on the local chain: a payer with ETH for gas and tokens for the deposit,
channels opened with ordinary transactions, the operator (anvil's second account, the
channels' payee) and the config of an on-chain channel source."""

from __future__ import annotations

import os
from typing import Any

from meterkit import _core
from meterkit.chain import escrow, token
from meterkit.chain.anvil import ACCOUNT_KEYS, ACCOUNTS, rpc_sync
from support.chain import UNIT, LocalChain

# The operator settles and closes; the escrow pays the channel's payee only, so the
# operator's address is the payee (the `pay_to` of the accepted asset).
OPERATOR_KEY = ACCOUNT_KEYS[1]
OPERATOR = ACCOUNTS[1]


def payer(chain: LocalChain, amount: int = 10 * UNIT) -> tuple[bytes, str]:
    """A fresh key holding `amount` of the token and 1 ETH for the approve and open gas."""
    key = os.urandom(31) + b"\x07"
    address = _core.address_of(key)
    rpc_sync(chain.url, "anvil_setBalance", address, hex(10**18))
    token.mint(chain.url, chain.token, address, amount)
    return key, address


def open_channel(
    chain: LocalChain, escrow_address: str, payer_key: bytes, deposit: int, **kw: Any
) -> str:
    cid, _ = escrow.open_channel(
        chain.url, escrow_address, payer_key, OPERATOR, chain.token, deposit, **kw
    )
    return cid


def accepts(chain: LocalChain) -> list[dict[str, Any]]:
    """The chain's accepted asset, paid to the operator (the channels' payee)."""
    return [{**a, "pay_to": OPERATOR} for a in chain.accepts()]


def sessions(chain: LocalChain, escrow_address: str, **over: Any) -> dict[str, Any]:
    """The top-level `sessions:` config of channels in this escrow."""
    return {
        "channels": {
            "type": "onchain",
            "rpc_url": chain.url,
            "escrow": escrow_address,
            "operator_key": OPERATOR_KEY,
            "receipt_timeout": "10s",
            "poll_interval": "0.02s",
            **over,
        }
    }

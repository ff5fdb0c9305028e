"""meterkit's EIP-3009 test token (`contracts/MeterkitUSD.sol`, 6 decimals, EIP-712 version
"2" like USDC) on a development chain: deploy, mint, read balances and nonce states. Setup
code, blocking (`rpc_sync`), run from an unlocked development account (anvil's first)."""

from __future__ import annotations

import json
import time
from functools import cache
from importlib import resources
from typing import Any

from meterkit.chain.abi import decode_uint, encode_call, word
from meterkit.chain.anvil import ACCOUNTS, CHAIN_ID, rpc_sync
from meterkit.config.payments import Asset

DEFAULT_NAME = "USDC"  # the EIP-712 domain name, as USDC on Base Sepolia


@cache
def artifact(name: str = "MeterkitUSD") -> dict[str, Any]:
    text = resources.files("meterkit.chain").joinpath("artifacts", f"{name}.json").read_text()
    data: dict[str, Any] = json.loads(text)
    return data


def _abi_string(s: str) -> bytes:
    raw = s.encode()
    return word(len(raw)) + raw.ljust((len(raw) + 31) // 32 * 32, b"\0")


def wait_receipt(url: str, tx: str, timeout: float = 30.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        receipt = rpc_sync(url, "eth_getTransactionReceipt", tx)
        if receipt is not None:
            if receipt["status"] != "0x1":
                raise RuntimeError(f"transaction {tx} reverted")
            return dict(receipt)
        time.sleep(0.02)
    raise TimeoutError(f"no receipt for {tx}")


def send(url: str, to: str | None, data: str, sender: str = ACCOUNTS[0]) -> dict[str, Any]:
    tx: dict[str, Any] = {"from": sender, "data": data}
    if to is not None:
        tx["to"] = to
    return wait_receipt(url, rpc_sync(url, "eth_sendTransaction", tx))


def deploy(url: str, name: str = DEFAULT_NAME, symbol: str = "USDC") -> str:
    """Deploy a MeterkitUSD; its address."""
    # constructor(string name_, string symbol_): two offsets, then the two strings.
    head_name = _abi_string(name)
    args = word(64) + word(64 + len(head_name)) + head_name + _abi_string(symbol)
    receipt = send(url, None, artifact()["bytecode"] + args.hex())
    return str(receipt["contractAddress"])


def asset(address: str, name: str = DEFAULT_NAME, chain_id: int = CHAIN_ID) -> Asset:
    """The `Asset` a payment config names for the deployed token."""
    return Asset("USDC", "local", chain_id, address, 6, name, "2")


def mint(url: str, token: str, to: str, amount: int) -> None:
    send(url, token, encode_call("mint(address,uint256)", to, amount))


def balance(url: str, token: str, owner: str) -> int:
    return decode_uint(
        rpc_sync(url, "eth_call", {"to": token, "data": encode_call("balanceOf(address)", owner)})
    )


def eth_balance(url: str, owner: str) -> int:
    return int(rpc_sync(url, "eth_getBalance", owner, "latest"), 16)


def authorization_used(url: str, token: str, authorizer: str, nonce: str) -> bool:
    data = encode_call("authorizationState(address,bytes32)", authorizer, nonce)
    return decode_uint(rpc_sync(url, "eth_call", {"to": token, "data": data})) == 1

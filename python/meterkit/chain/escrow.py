"""meterkit's session escrow (`contracts/MeterkitEscrow.sol`): its calls and the decoding of
`getChannel`, shared by the on-chain channel source (async, `meterkit.sessions.sources`), and
setup helpers for a development chain (blocking, `rpc_sync`): deploy, approve + open a
channel from a payer's key with ordinary signed transactions, request a close, withdraw.

The EIP-712 name is the deployment's: `EVM_NAME` for the `evm` session method,
`TEMPO_NAME` for the Tempo v1 profile (mppx's `sessionLegacyManager`)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from meterkit import _core
from meterkit.chain.abi import decode_words, encode_call, encode_call_bytes, word
from meterkit.chain.anvil import CHAIN_ID, rpc_sync
from meterkit.chain.token import _abi_string, artifact, send, wait_receipt

EVM_NAME = "EVM Payment Channel"
TEMPO_NAME = "Tempo Stream Channel"
# How long a payer waits between requestClose and withdraw (the contract's constant).
GRACE_PERIOD = 15 * 60

GET_CHANNEL = "getChannel(bytes32)"
SETTLE = "settle(bytes32,uint128,bytes)"
CLOSE = "close(bytes32,uint128,bytes)"
# The capture variant: close with the highest voucher, take only what was consumed.
CLOSE_CAPTURE = "close(bytes32,uint128,uint128,bytes)"
OPEN = "open(address,address,uint128,bytes32,address)"


@dataclass(frozen=True)
class EscrowChannel:
    """`getChannel`'s answer, in the contract's field order. A channel that was never opened
    reads as all zeros (`exists` is False)."""

    finalized: bool
    close_requested_at: int
    payer: str
    payee: str
    token: str
    authorized_signer: str
    deposit: int
    settled: int

    @property
    def exists(self) -> bool:
        return int(self.payer, 16) != 0


def _address(v: int) -> str:
    return _core.checksum_address("0x" + v.to_bytes(20, "big").hex())


def decode_channel(data: str) -> EscrowChannel:
    w = decode_words(data)
    if len(w) < 8:
        raise ValueError("getChannel returned fewer than 8 words")
    return EscrowChannel(
        bool(w[0]),
        w[1],
        _address(w[2]),
        _address(w[3]),
        _address(w[4]),
        _address(w[5]),
        w[6],
        w[7],
    )


def get_channel_call(escrow: str, channel_id: str) -> dict[str, str]:
    return {"to": escrow, "data": encode_call(GET_CHANNEL, channel_id)}


def signature_bytes(signature: str | None) -> bytes:
    return bytes.fromhex(signature.removeprefix("0x")) if signature else b""


def settle_calldata(channel_id: str, amount: int, signature: str) -> str:
    return encode_call_bytes(SETTLE, channel_id, amount, tail=signature_bytes(signature))


def close_calldata(channel_id: str, voucher: int, capture: int, signature: str | None) -> str:
    """Close with the voucher for `voucher` (signed), taking `capture` of it."""
    return encode_call_bytes(
        CLOSE_CAPTURE, channel_id, voucher, capture, tail=signature_bytes(signature)
    )


# ---- a development chain (blocking) ----------------------------------------------------------


def deploy(url: str, name: str = EVM_NAME) -> str:
    """Deploy a MeterkitEscrow speaking the EIP-712 domain `name`; its address."""
    args = word(32) + _abi_string(name)
    receipt = send(url, None, artifact("MeterkitEscrow")["bytecode"] + args.hex())
    return str(receipt["contractAddress"])


def send_signed(url: str, key: bytes | str, to: str, data: str, gas: int = 300_000) -> str:
    """Sign and send one type-2 transaction from `key` (an ordinary account, not an unlocked
    one), wait for it to mine successfully; the transaction hash."""
    from eth_account import Account

    account = Account.from_key(key)
    nonce = int(rpc_sync(url, "eth_getTransactionCount", account.address, "pending"), 16)
    base = int(rpc_sync(url, "eth_getBlockByNumber", "latest", False)["baseFeePerGas"], 16)
    signed = account.sign_transaction(
        {
            "type": 2,
            "chainId": int(rpc_sync(url, "eth_chainId"), 16),
            "nonce": nonce,
            "to": _core.checksum_address(to),
            "data": data,
            "value": 0,
            "gas": gas,
            "maxFeePerGas": 2 * base + 10**9,
            "maxPriorityFeePerGas": 10**9,
        }
    )
    tx = rpc_sync(url, "eth_sendRawTransaction", "0x" + signed.raw_transaction.hex())
    wait_receipt(url, tx)
    return str(tx)


def open_channel(
    url: str,
    escrow: str,
    payer_key: bytes,
    payee: str,
    token: str,
    deposit: int,
    *,
    salt: str | None = None,
    authorized_signer: str = "0x" + "00" * 20,
) -> tuple[str, str]:
    """approve + open from the payer's key (which needs some ETH for gas): (channelId, the
    open transaction's hash)."""
    salt = salt or "0x" + os.urandom(32).hex()
    payer = _core.address_of(payer_key)
    send_signed(url, payer_key, token, encode_call("approve(address,uint256)", escrow, deposit))
    tx = send_signed(
        url, payer_key, escrow, encode_call(OPEN, payee, token, deposit, salt, authorized_signer)
    )
    chain_id = int(rpc_sync(url, "eth_chainId"), 16)
    channel_id = _core.evm_channel_id(
        payer=payer,
        payee=payee,
        token=token,
        salt=salt,
        authorized_signer=authorized_signer,
        escrow=escrow,
        chain_id=chain_id,
    )
    return channel_id, tx


def read_channel(url: str, escrow: str, channel_id: str) -> EscrowChannel:
    return decode_channel(rpc_sync(url, "eth_call", get_channel_call(escrow, channel_id), "latest"))


def call(url: str, escrow: str, data: str, sender: str) -> Any:
    """An `eth_call` of the escrow from `sender` (a revert raises RuntimeError with the
    node's error, reason included)."""
    return rpc_sync(url, "eth_call", {"from": sender, "to": escrow, "data": data}, "latest")


__all__ = [
    "CHAIN_ID",
    "EVM_NAME",
    "GRACE_PERIOD",
    "TEMPO_NAME",
    "EscrowChannel",
    "close_calldata",
    "decode_channel",
    "deploy",
    "open_channel",
    "read_channel",
    "send_signed",
    "settle_calldata",
]

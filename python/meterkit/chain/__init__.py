"""Talking to an EVM chain: a thin async JSON-RPC client (`rpc`), the few ABI encodings
EIP-3009 settlement needs (`abi`), and the local development chain (`anvil`: a node from
npm; `token`: meterkit's own EIP-3009 test token, whose compiled artifact ships in
`artifacts/`, built from `contracts/` in the repository).

Why a thin client over aiohttp rather than web3.py's `AsyncWeb3`: settlement needs eight
methods (`eth_chainId`, `eth_call`, `eth_estimateGas`, `eth_getTransactionCount`,
`eth_getBlockByNumber`, `eth_sendRawTransaction`, `eth_getTransactionReceipt`, `eth_getLogs`),
and what matters is telling "the request never reached the node" (nothing was broadcast: safe
to refuse with 503 and release the claim) from "no answer after sending" (the transfer may be
on its way: keep the claim). aiohttp's connector errors say exactly that; web3's provider
folds both into one exception, imports in ~1 s and opens its own sessions. Transactions are
signed with `eth-account` (the reference implementation of type-2 transaction encoding).
"""

from __future__ import annotations

from meterkit.chain.rpc import Rpc, RpcError, RpcUnavailable

__all__ = ["Rpc", "RpcError", "RpcUnavailable"]

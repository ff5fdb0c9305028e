"""On-chain settlement by meterkit itself: submit an EIP-3009 `transferWithAuthorization`
signed by a relayer key (which pays the gas), through an Ethereum JSON-RPC node.

Per authorization: simulate the transfer with `eth_call` (a revert costs nothing and is a
clear refusal: a used nonce, an expired or forged authorization, a payer short of funds);
sign a type-2 transaction; write its hash to the journal (the ledger's `settlements` table,
durable before any byte is broadcast, so a crash right after sending leaves the hash to
reconcile with); broadcast it; wait for the receipt and the configured confirmations.

Outcomes, as for every settler (see `settlement`): the transaction hash when it mined
successfully; `SettlementFailed` when the transfer certainly did not happen (the simulation
or the mined transaction reverted and the nonce is still unused on chain); `ChainUnavailable`
(a `SettlementFailed`, 503) when the node could not be reached or gas is above the configured
cap *before anything was broadcast*; `SettlementUnknown` once a transaction may be on its way
(no answer to the broadcast, no receipt in time). Nothing is ever sent twice for one claim:
the chain itself refuses a second use of an EIP-3009 nonce, and `authorizationState(from,
nonce)` is the ground truth `meterkit ledger settle` reconciles the ledger against.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from meterkit import _core
from meterkit.chain.abi import decode_revert, decode_uint, encode_call, topic, word
from meterkit.chain.rpc import Rpc, RpcError, RpcUnavailable
from meterkit.config.payments import Asset, Chain
from meterkit.payments.evm import Authorization
from meterkit.payments.problems import ChainUnavailable, SettlementFailed, SettlementUnknown
from meterkit.payments.settlement import SettlementRequest

# (claim_key, tx_hash): called with the signed transaction's hash before it is broadcast.
Journal = Callable[[str, str], Awaitable[None]]

TRANSFER = "transferWithAuthorization(address,address,uint256,uint256,uint256,bytes32,uint8,bytes32,bytes32)"
AUTHORIZATION_USED = topic("AuthorizationUsed(address,bytes32)")
# How far back `find_transfer` looks for the AuthorizationUsed event (providers cap ranges).
LOG_WINDOW = 50_000
_USED = "used or canceled"


def transfer_calldata(auth: Authorization) -> str:
    """`transferWithAuthorization` with (v, r, s): the overload every FiatToken version has."""
    sig = bytes.fromhex(auth.signature.removeprefix("0x"))
    if len(sig) != 65:
        raise SettlementFailed(
            "on-chain settlement takes a 65-byte ECDSA signature", reason="signature_length"
        )
    v = sig[64] + 27 if sig[64] in (0, 1) else sig[64]
    return encode_call(
        TRANSFER,
        auth.from_address,
        auth.to,
        auth.value,
        auth.valid_after,
        auth.valid_before,
        auth.nonce,
        v,
        sig[:32],
        sig[32:64],
    )


def revert_reason(e: RpcError) -> str | None:
    """The revert reason of a failed `eth_call`, or None if the error is not a revert."""
    data = e.data.get("data") if isinstance(e.data, dict) else e.data
    reason = decode_revert(data)
    if reason is not None:
        return reason
    if e.code == 3 or "revert" in e.message.lower():
        return e.message
    return None


@dataclass(frozen=True)
class Transfer:
    """A transfer found on chain: its transaction and whether it succeeded."""

    tx_hash: str
    ok: bool
    block: int


class OnchainSettler:
    """Settles each authorization while the request waits (`type: onchain`), and submits the
    deferred queue for `meterkit ledger settle`. One relayer, one nonce sequence: broadcasts
    are serialised under a lock, receipts are awaited concurrently."""

    name = "onchain"

    def __init__(self, chain: Chain, timeout: float, journal: Journal | None = None) -> None:
        # eth-account signs the relayer's transactions (imported here: only on-chain
        # settlement needs it).
        from eth_account import Account

        self.chain = chain
        self.rpc = Rpc(chain.rpc_url, timeout)
        self._account = Account.from_key(chain.relayer_key)
        self.relayer: str = self._account.address
        self.journal = journal
        self._lock = asyncio.Lock()
        self._nonce: int | None = None
        self._chain_id: int | None = None

    # ---- the Settler interface ---------------------------------------------------------

    async def verify(self, req: SettlementRequest) -> None:
        """Would the transfer succeed now? (after-response settlement asks before the
        upstream runs)."""
        await self._ready(req.asset)
        await self.simulate(req.asset, req.authorization)

    async def settle(self, req: SettlementRequest) -> tuple[str, str]:
        return "settled", await self.submit(req.asset, req.authorization, req.claim_key)

    async def close(self) -> None:
        await self.rpc.close()

    # ---- steps -------------------------------------------------------------------------

    async def submit(self, asset: Asset, auth: Authorization, claim_key: str) -> str:
        """Simulate, send, confirm: the transaction hash (see the module docstring)."""
        await self._ready(asset)
        await self.simulate(asset, auth)
        tx_hash = await self._send(asset, auth, claim_key)
        await self._confirm(asset, auth, tx_hash)
        return tx_hash

    async def _call(self, method: str, *params: Any) -> Any:
        """A read: any failure means nothing was sent (503)."""
        try:
            return await self.rpc.call(method, *params)
        except RpcUnavailable as e:
            raise ChainUnavailable(
                f"the chain's RPC node did not answer ({e}): nothing was settled",
                reason="rpc_unavailable",
            ) from e

    async def _ready(self, asset: Asset) -> None:
        if self._chain_id is None:
            try:
                self._chain_id = int(await self._call("eth_chainId"), 16)
            except RpcError as e:
                raise ChainUnavailable(f"eth_chainId failed: {e}", reason="rpc_error") from e
        if self._chain_id != asset.chain_id:
            raise ChainUnavailable(
                f"the RPC node is on chain {self._chain_id}, the asset on {asset.chain_id}: "
                "nothing was settled",
                reason="wrong_chain",
            )

    async def would_revert(self, to: str, data: str) -> str | None:
        """Simulate a call from the relayer (`eth_call` at the latest block): None when it
        would succeed, else its revert reason. A node that cannot tell (no answer, an error
        that is not a revert) is `ChainUnavailable`: nothing was sent."""
        try:
            await self._call("eth_call", {"from": self.relayer, "to": to, "data": data}, "latest")
        except RpcError as e:
            reason = revert_reason(e)
            if reason is None:
                raise ChainUnavailable(
                    f"the RPC node refused the simulation: {e}", reason="rpc_error"
                ) from e
            return reason
        return None

    async def simulate(self, asset: Asset, auth: Authorization) -> None:
        reason = await self.would_revert(asset.address, transfer_calldata(auth))
        if reason is not None:
            raise SettlementFailed(
                f"the transfer would revert: {reason}",
                reason="nonce_used" if _USED in reason else "reverted",
            )

    async def authorization_used(self, asset: Asset, authorizer: str, nonce: str) -> bool:
        """`authorizationState(authorizer, nonce)`: the chain's word on whether an
        authorization was used (or canceled)."""
        data = encode_call("authorizationState(address,bytes32)", authorizer, nonce)
        try:
            result = await self._call("eth_call", {"to": asset.address, "data": data}, "latest")
        except RpcError as e:
            raise ChainUnavailable(f"authorizationState failed: {e}", reason="rpc_error") from e
        return decode_uint(str(result)) == 1

    async def _fees(self) -> tuple[int, int]:
        block = await self._call("eth_getBlockByNumber", "latest", False)
        base = int(block.get("baseFeePerGas") or "0x0", 16)
        cap, tip = self.chain.max_fee_per_gas, self.chain.max_priority_fee_per_gas
        if base + tip > cap:
            raise ChainUnavailable(
                f"the base fee ({base} wei) plus the tip is above max_fee_per_gas ({cap} wei): "
                "nothing was sent",
                reason="fee_above_max",
            )
        # Twice the base fee covers six full blocks of increases, within the cap.
        return min(cap, 2 * base + tip), tip

    async def _send(self, asset: Asset, auth: Authorization, claim_key: str) -> str:
        return await self.send_call(
            asset.chain_id, asset.address, transfer_calldata(auth), claim_key
        )

    async def send_call(self, chain_id: int, to: str, data: str, claim_key: str) -> str:
        """Sign and broadcast one call from the relayer (journaled first under `claim_key`
        when a journal is set); the transaction hash. Also what the on-chain session channel
        source sends its escrow `close` with."""
        async with self._lock:
            for attempt in range(2):
                if self._nonce is None:
                    count = await self._call("eth_getTransactionCount", self.relayer, "pending")
                    self._nonce = int(count, 16)
                max_fee, tip = await self._fees()
                signed = self._account.sign_transaction(
                    {
                        "type": 2,
                        "chainId": chain_id,
                        "nonce": self._nonce,
                        # eth-account refuses an address that is not checksummed.
                        "to": _core.checksum_address(to),
                        "data": data,
                        "value": 0,
                        "gas": self.chain.gas_limit,
                        "maxFeePerGas": max_fee,
                        "maxPriorityFeePerGas": tip,
                    }
                )
                tx_hash = "0x" + bytes(signed.hash).hex()
                if self.journal is not None:
                    await self.journal(claim_key, tx_hash)
                try:
                    await self.rpc.call(
                        "eth_sendRawTransaction", "0x" + signed.raw_transaction.hex()
                    )
                except RpcUnavailable as e:
                    self._nonce = None  # whether it was used is unknown: ask the node next time
                    if not e.sent:
                        raise ChainUnavailable(
                            f"the chain's RPC node is unreachable ({e}): nothing was sent",
                            reason="rpc_unavailable",
                        ) from e
                    raise SettlementUnknown(
                        "the transaction may have been broadcast (no answer from the node)",
                        reason="broadcast_unknown",
                    ) from e
                except RpcError as e:
                    self._nonce = None
                    msg = e.message.lower()
                    if "already known" in msg:
                        break  # the node has this very transaction
                    if "nonce" in msg and attempt == 0:
                        continue  # another sender used the relayer's nonce: re-read it
                    raise ChainUnavailable(
                        f"the RPC node refused the transaction: {e.message}",
                        reason="send_refused",
                    ) from e
                self._nonce += 1
                break
        return tx_hash

    async def receipt(self, tx_hash: str) -> dict[str, Any] | None:
        """The transaction's receipt, None while it is not mined (or unknown)."""
        try:
            r = await self.rpc.call("eth_getTransactionReceipt", tx_hash)
        except (RpcUnavailable, RpcError):
            return None
        return r if isinstance(r, dict) else None

    async def _confirm(self, asset: Asset, auth: Authorization, tx_hash: str) -> None:
        r = await self.wait_mined(tx_hash, "`meterkit ledger settle` reconciles it")
        if r.get("status") != "0x1":
            if await self.authorization_used(asset, auth.from_address, auth.nonce):
                # Another transaction used the authorization first: the money went to the
                # same recipient, but not by this transaction.
                raise SettlementUnknown(
                    f"transaction {tx_hash} reverted: the authorization was used by "
                    "another transaction",
                    reason="used_elsewhere",
                )
            raise SettlementFailed(
                f"transaction {tx_hash} reverted on chain: nothing was transferred",
                reason="reverted",
            )

    async def wait_mined(self, tx_hash: str, reconcile: str) -> dict[str, Any]:
        """The receipt once mined and confirmed (a reverted one is returned too: its status
        says so); `SettlementUnknown` when that takes longer than `receipt_timeout`
        (`reconcile` tells the operator what resolves it)."""
        deadline = time.monotonic() + self.chain.receipt_timeout
        while True:
            r = await self.receipt(tx_hash)
            if r is not None and (
                r.get("status") != "0x1" or await self._confirmed(int(r["blockNumber"], 16))
            ):
                return r
            if time.monotonic() >= deadline:
                raise SettlementUnknown(
                    f"transaction {tx_hash} was sent but not confirmed within "
                    f"{self.chain.receipt_timeout:g} s; {reconcile}",
                    reason="receipt_timeout",
                )
            await asyncio.sleep(self.chain.poll_interval)

    async def _confirmed(self, block: int) -> bool:
        if self.chain.confirmations <= 1:
            return True
        try:
            head = int(await self.rpc.call("eth_blockNumber"), 16)
        except (RpcUnavailable, RpcError):
            return False
        return head - block + 1 >= self.chain.confirmations

    async def find_transfer(self, asset: Asset, authorizer: str, nonce: str) -> Transfer | None:
        """The transaction that used an authorization, from its `AuthorizationUsed` event
        (emitted by FiatToken and by meterkit's test token); None if not found in the last
        `LOG_WINDOW` blocks."""
        head = int(await self._call("eth_blockNumber"), 16)
        try:
            logs = await self._call(
                "eth_getLogs",
                {
                    "address": asset.address,
                    "fromBlock": hex(max(0, head - LOG_WINDOW)),
                    "toBlock": "latest",
                    "topics": [AUTHORIZATION_USED, "0x" + word(authorizer).hex(), nonce],
                },
            )
        except RpcError as e:
            raise ChainUnavailable(f"eth_getLogs failed: {e}", reason="rpc_error") from e
        for log in logs or ():
            return Transfer(str(log["transactionHash"]), True, int(log["blockNumber"], 16))
        return None

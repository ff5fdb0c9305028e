"""Where a session's channels come from, behind one interface (`ChannelSource`):

- `PrepaidSource`: deposits the operator credited into the session store (`meterkit channel
  credit`), vouchers signed under the zero-address verifying contract; closing records what
  was captured, to settle later. The zero-setup default.
- `OnchainSource`: channels in an escrow contract (`contracts/MeterkitEscrow.sol`), read over
  JSON-RPC with `getChannel` and a short cache; closed with the operator's key.

Either way the money state of the session — the highest accepted voucher, what was spent,
the units — lives in the session store (`ChannelStore`) (durable before anything is served on it); for an
on-chain channel the store's row is created the first time the channel is seen, from the
escrow's view.
"""

from __future__ import annotations

import time
from typing import Protocol

from meterkit import _core
from meterkit.chain import escrow as esc
from meterkit.chain.rpc import RpcError, RpcUnavailable
from meterkit.config.sessions import OnchainChannels
from meterkit.payments.onchain import OnchainSettler
from meterkit.payments.problems import ChainUnavailable, MethodUnsupported, VerificationFailed
from meterkit.sessions.channels import PREPAID_ESCROW, UINT128_MAX, Channel
from meterkit.sessions.problems import TransactionReverted
from meterkit.sessions.store import ChannelStore


class ChannelSource(Protocol):
    # "prepaid" or "onchain".
    kind: str
    # The vouchers' EIP-712 verifying contract (the zero address for prepaid channels).
    escrow: str

    async def get(self, channel_id: str, *, at_least: int | None = None) -> Channel | None:
        """The channel (the escrow's view merged with the store's money state), None when
        it does not exist. `at_least`: a voucher amount about to be checked against the
        deposit; a cached deposit below it is re-read first."""
        ...

    async def close(self, channel: Channel, capture: int) -> str | None:
        """Capture `capture` (max(spent, settled)) and finalize, with the highest accepted
        voucher; the transaction hash when it happened on chain."""
        ...

    async def topped_up(self, channel_id: str, tx_hash: str) -> Channel | None:
        """The channel after the payer's own top-up transaction `tx_hash` (a `topUp`
        credential of `type: "hash"`); refuses one that reverted or is not a call to this
        source's escrow."""
        ...

    async def aclose(self) -> None: ...


class PrepaidSource:
    kind = "prepaid"
    escrow = PREPAID_ESCROW

    def __init__(self, store: ChannelStore) -> None:
        self.store = store

    async def get(self, channel_id: str, *, at_least: int | None = None) -> Channel | None:
        return await self.store.get(channel_id)

    async def close(self, channel: Channel, capture: int) -> str | None:
        await self.store.finalize(channel.channel_id, capture)
        return None

    async def topped_up(self, channel_id: str, tx_hash: str) -> Channel | None:
        raise MethodUnsupported(
            "this gateway's channels are prepaid: the operator credits deposits",
            reason="top_up",
        )

    async def aclose(self) -> None:
        return None


class OnchainSource:
    """Channels in an escrow contract. Reads are cached `config.cache` seconds per channel
    (a burst of vouchers and pauses costs one `eth_call`); a voucher above the cached
    deposit re-reads it (the payer may have topped up), and so does a close. A close
    request on chain is seen within the cache time: until then, at most that long of
    spending continues against vouchers the payee can still settle during the grace
    period (≥ 10 minutes), so nothing is at risk."""

    kind = "onchain"

    def __init__(self, config: OnchainChannels, store: ChannelStore) -> None:
        self.config = config
        self.store = store
        self.escrow = _core.checksum_address(config.escrow)
        # The relayer plumbing of EIP-3009 settlement: serialised nonces, fee cap, the
        # difference between "never sent" and "maybe sent".
        self.settler = OnchainSettler(config.chain, config.timeout)
        self.operator = self.settler.relayer
        self._cache: dict[str, tuple[float, esc.EscrowChannel]] = {}
        self._chain_id: int | None = None

    async def _rpc(self, method: str, *params: object) -> object:
        try:
            return await self.settler.rpc.call(method, *params)
        except RpcUnavailable as e:
            raise ChainUnavailable(
                f"the chain's RPC node did not answer ({e})", reason="rpc_unavailable"
            ) from e
        except RpcError as e:
            raise ChainUnavailable(f"{method} failed: {e}", reason="rpc_error") from e

    async def chain_id(self) -> int:
        if self._chain_id is None:
            self._chain_id = int(str(await self._rpc("eth_chainId")), 16)
        return self._chain_id

    async def read(self, channel_id: str, *, fresh: bool = False) -> esc.EscrowChannel:
        """`getChannel(channel_id)`, from the cache unless stale or `fresh`."""
        now = time.monotonic()
        hit = self._cache.get(channel_id)
        if hit is not None and not fresh and hit[0] > now:
            return hit[1]
        data = await self._rpc("eth_call", esc.get_channel_call(self.escrow, channel_id), "latest")
        view = esc.decode_channel(str(data))
        self._cache[channel_id] = (now + self.config.cache, view)
        return view

    async def get(self, channel_id: str, *, at_least: int | None = None) -> Channel | None:
        channel_id = channel_id.lower()
        view = await self.read(channel_id)
        if at_least is not None and view.exists and at_least > view.deposit:
            view = await self.read(channel_id, fresh=True)
        if not view.exists:
            return None
        return await self.store.track(
            Channel(
                channel_id=channel_id,
                payer=view.payer,
                payee=view.payee,
                token=view.token,
                authorized_signer=view.authorized_signer,
                chain_id=await self.chain_id(),
                escrow=self.escrow,
                deposit=view.deposit,
                settled=view.settled,
                finalized=view.finalized,
                close_requested=view.close_requested_at != 0,
            )
        )

    async def topped_up(self, channel_id: str, tx_hash: str) -> Channel | None:
        # The deposit is what `getChannel` says, whatever the transaction did; the receipt
        # only turns a top-up that failed into a clear answer instead of a silent no-op.
        receipt = await self.settler.wait_mined(
            tx_hash, "the deposit counts once it mines: send the top-up again then"
        )
        if str(receipt.get("to") or "").lower() != self.escrow.lower():
            raise VerificationFailed(
                f"transaction {tx_hash} is not a call to this gateway's escrow {self.escrow}",
                reason="top_up_target",
            )
        if receipt.get("status") != "0x1":
            raise TransactionReverted(f"the top-up {tx_hash} reverted", reason="reverted")
        return await self.get(channel_id.lower(), at_least=UINT128_MAX)

    async def close(self, channel: Channel, capture: int) -> str | None:
        cid = channel.channel_id
        view = await self.read(cid, fresh=True)
        if view.finalized:
            # Closed already (by an earlier close whose answer was lost, or a withdraw).
            await self.store.finalize(cid, view.settled)
            return None
        capture = max(capture, view.settled)
        data = esc.close_calldata(cid, channel.accepted, capture, channel.signature)
        # The operator is the settler's relayer: the simulation runs as the real close would.
        reason = await self.settler.would_revert(self.escrow, data)
        if reason is not None:
            raise TransactionReverted(
                f"closing the channel would revert: {reason}", reason="close_reverted"
            )
        tx = await self.settler.send_call(await self.chain_id(), self.escrow, data, cid)
        receipt = await self.settler.wait_mined(
            tx, "the channel closes when it mines; `getChannel` tells"
        )
        self._cache.pop(cid, None)
        if receipt.get("status") != "0x1":
            raise TransactionReverted(f"the close transaction {tx} reverted", reason="reverted")
        await self.store.finalize(cid, capture)
        return tx

    async def aclose(self) -> None:
        await self.settler.close()


def make_source(config: OnchainChannels | None, store: ChannelStore) -> ChannelSource:
    return PrepaidSource(store) if config is None else OnchainSource(config, store)

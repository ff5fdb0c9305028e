"""A prepaid channel credited in a session store, as `meterkit channel credit` does: the
payer's channel to the test wallet, in the test asset, its id derived as a payer would."""

from __future__ import annotations

from meterkit import _core
from meterkit.sessions import ChannelStore
from meterkit.sessions.channels import prepaid_channel
from support.payments import ASSET, PAY_TO


async def credit_prepaid(store: ChannelStore, payer_key: bytes, deposit: int, salt: int = 7) -> str:
    """Credit `deposit` to the payer's prepaid channel in the open `store`; its id."""
    channel = prepaid_channel(
        _core.address_of(payer_key), PAY_TO, ASSET.address, ASSET.chain_id, f"0x{salt:064x}"
    )
    await store.credit(channel, deposit)
    return channel.channel_id

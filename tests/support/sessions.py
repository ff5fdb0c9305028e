"""Session helpers: a prepaid channel credited in a session store, as `meterkit channel
credit` does (the payer's channel to the test wallet, in the test asset, its id derived as a
payer would), and the `evm` session challenges of a 402."""

from __future__ import annotations

from typing import Any

from meterkit import _core
from meterkit.payments import mpp
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


def evm_challenges(headers: Any) -> list[mpp.Challenge]:
    """The `evm` session challenges among a 402's `WWW-Authenticate` values (`headers`: a
    multidict)."""
    return [
        c for c in mpp.parse_challenges(headers.getall("WWW-Authenticate")) if c.method == "evm"
    ]

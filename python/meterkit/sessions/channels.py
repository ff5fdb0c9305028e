"""Payment channels and the rule for accepting a voucher on one: pure, with the recovered
signer passed in (the signature is checked in the Rust core by the caller)."""

from __future__ import annotations

from dataclasses import dataclass

from meterkit.sessions.problems import (
    AmountExceedsDeposit,
    ChannelClosing,
    ChannelFinalized,
    ChannelNotFound,
    DeltaTooSmall,
    InvalidSignature,
    SignerMismatch,
)

ZERO_ADDRESS = "0x" + "00" * 20
# Prepaid channels live in the ledger, not in an escrow contract: their vouchers are signed
# under this verifying contract (the zero address), on the asset's chain.
PREPAID_ESCROW = ZERO_ADDRESS


@dataclass(frozen=True)
class Channel:
    """One channel as the gateway knows it: the escrow's view (deposit, settled, closing)
    and the session's (highest accepted voucher, spent so far)."""

    channel_id: str
    payer: str
    payee: str
    token: str
    authorized_signer: str
    chain_id: int
    escrow: str
    deposit: int
    settled: int = 0
    finalized: bool = False
    close_requested: bool = False
    accepted: int = 0
    signature: str | None = None
    spent: int = 0
    units: int = 0

    @property
    def signer(self) -> str:
        """Who signs vouchers: the authorized signer, or the payer when none is set."""
        return (
            self.payer if self.authorized_signer.lower() == ZERO_ADDRESS else self.authorized_signer
        )

    @property
    def available(self) -> int:
        return self.accepted - self.spent


def accept(channel: Channel | None, amount: int, recovered: str | None, min_delta: int) -> bool:
    """Whether a voucher for `amount` raises the channel's accepted total (True), or repeats
    what is accepted already (False: idempotent, buys nothing new). Raises the session problem
    that refuses it, in the order of the session specs: the channel, the signature, then the
    amount."""
    if channel is None:
        raise ChannelNotFound("no such channel here", reason="channel")
    if channel.finalized:
        raise ChannelFinalized("the channel is closed; open a new one", reason="finalized")
    if channel.close_requested:
        raise ChannelClosing("the channel is closing and accepts no new spend", reason="closing")
    if recovered is None:
        raise InvalidSignature("the voucher signature does not recover", reason="signature")
    if recovered.lower() != channel.signer.lower():
        raise SignerMismatch(
            "the voucher is not signed by the channel's authorized signer", reason="signer"
        )
    if amount <= channel.accepted:
        return False
    if amount - channel.accepted < min_delta:
        raise DeltaTooSmall(
            f"a voucher must add at least {min_delta} to {channel.accepted}", reason="delta"
        )
    if amount > channel.deposit:
        raise AmountExceedsDeposit(
            f"the voucher's {amount} exceeds the channel's deposit of {channel.deposit}",
            reason="deposit",
        )
    return True

"""Payment channels and the rule for accepting a voucher on one: pure, with the recovered
signer passed in (the signature is checked in the Rust core by the caller)."""

from __future__ import annotations

from dataclasses import dataclass, replace

from meterkit import _core
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


# Channel amounts are uint128 on chain (the escrow's storage) and in vouchers.
UINT128_MAX = 2**128 - 1


def credited(deposit: int, amount: int) -> int:
    """The deposit after a prepaid credit of `amount` base units: refused (ValueError) when
    the amount is not positive or the deposit would not fit in a uint128, before anything is
    stored (a value past it once broke `channel list` for every channel)."""
    if amount <= 0:
        raise ValueError(f"a credit must be positive, got {amount} base units")
    total = deposit + amount
    if total > UINT128_MAX:
        raise ValueError(
            f"the deposit would be {total} base units, more than a channel holds (2^128 - 1)"
        )
    return total


def prepaid_channel(
    payer: str, payee: str, token: str, chain_id: int, salt: str, signer: str = ZERO_ADDRESS
) -> Channel:
    """A prepaid channel before its first deposit (the store's `credit` adds one). Its id
    follows the escrow's channel-id rule under the zero-address verifying contract, so a payer
    derives it and signs vouchers for it exactly as for an escrow channel."""
    channel_id = _core.evm_channel_id(
        payer=payer,
        payee=payee,
        token=token,
        salt=salt,
        authorized_signer=signer,
        escrow=PREPAID_ESCROW,
        chain_id=chain_id,
    )
    return Channel(channel_id, payer, payee, token, signer, chain_id, PREPAID_ESCROW, deposit=0)


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


# ---- what streams draw from a channel -------------------------------------------------------
#
# A stream paid from a channel holds credit: the part of the accepted vouchers it may deliver
# tokens against before it asks again. Holds live in the session store beside the channel
# (not in one process's memory), so two streams on one channel never spend the same headroom
# even when they run on different instances, and a hold whose process died frees itself when
# its lease runs out. Delivered tokens move from the stream's hold into `spent`.

# How much a stream holds at once, in tokens: it comes back for more after this many, which
# keeps its lease fresh and shares a channel fairly between concurrent streams. One store
# transaction per 2,048 tokens is noise beside the stream (~10 s of a fast model).
HOLD_TOKENS = 2048
# A hold's lease: renewed at every draw (so at least every HOLD_TOKENS tokens and at every
# pause); a hold not renewed this long belongs to a stream whose process died.
HOLD_TTL = 600.0


@dataclass(frozen=True)
class Draw:
    """One step of a stream on its channel, applied atomically by the store.

    `charge`/`units`: delivered since the last step (paid out of the hold into `spent`);
    `upfront`/`upfront_units`: charged now only if `upfront + need` is free (a prompt
    charged before the first upstream byte: refused otherwise, and nothing is granted); `want`: the
    most to add to the hold, in whole multiples of `price`; `release`: the stream ended, give
    the rest of its hold back."""

    price: int
    charge: int = 0
    units: int = 0
    upfront: int = 0
    upfront_units: int = 0
    need: int = 0
    want: int = 0
    release: bool = False
    ttl: float = HOLD_TTL


@dataclass(frozen=True)
class Drawn:
    """A draw's outcome: the channel after it, this stream's hold and the other streams'
    (`others`), what was added to this hold now (`granted`, a multiple of the price),
    whether the upfront part was refused (`refused`), and `lost`: delivered beyond the
    accepted vouchers (a hold that expired while its stream still ran), which cannot be
    charged."""

    channel: Channel
    held: int
    others: int = 0
    granted: int = 0
    refused: bool = False
    lost: int = 0

    @property
    def free(self) -> int:
        """What the accepted vouchers cover beyond what was spent and what streams hold."""
        return self.channel.accepted - self.channel.spent - self.held - self.others


def draw(channel: Channel, others: int, held: int, d: Draw) -> Drawn:
    """Apply `d` to `channel`, where this stream holds `held` and other live holds sum to
    `others`. Pure: the store reads those under its lock and writes the result."""
    spent = channel.spent + d.charge
    lost = max(spent - channel.accepted, 0)
    spent -= lost
    held = max(held - d.charge, 0)
    units = channel.units + d.units
    free = channel.accepted - spent - others - held
    if d.upfront or d.need:
        if free < d.upfront + d.need or channel.finalized or channel.close_requested:
            c = replace(channel, spent=spent, units=units)
            return Drawn(c, held, others, refused=True, lost=lost)
        spent += d.upfront
        units += d.upfront_units
        free -= d.upfront
    granted = 0
    if not d.release and not channel.finalized and not channel.close_requested:
        granted = max(min(free, d.want), 0) // d.price * d.price
    held = 0 if d.release else held + granted
    return Drawn(replace(channel, spent=spent, units=units), held, others, granted, lost=lost)


def follow_escrow(have: Channel, view: Channel) -> Channel:
    """The store's row of an escrow channel after a fresh read of the escrow: its fields
    (deposit, close request) follow the chain while `settled` and `finalized` only ever grow
    (a close this gateway made stays made while a cached view lags behind); the session's
    fields (accepted, spent, units) stay the store's."""
    return replace(
        have,
        deposit=view.deposit,
        settled=max(have.settled, view.settled),
        finalized=have.finalized or view.finalized,
        close_requested=view.close_requested,
    )

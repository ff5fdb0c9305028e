"""Which settler a deployment uses (`make_settler`): the deferred queue, an x402
facilitator, meterkit's own on-chain submission, or an operator's callable."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

from meterkit.config.payments import SettlementConfig
from meterkit.payments.onchain import OnchainSettler
from meterkit.payments.settlement import (
    CallableSettler,
    DeferredSettler,
    FacilitatorSettler,
    Settler,
)


def make_settler(
    cfg: SettlementConfig,
    base: Path | None = None,
    journal: Callable[[str, str], Awaitable[None]] | None = None,
) -> Settler:
    """The settler `cfg` asks for. `journal(claim_key, tx_hash)` records an on-chain
    transaction before it is broadcast (the ledger's `settlements` table)."""
    if cfg.type == "onchain":
        assert cfg.chain is not None
        return OnchainSettler(cfg.chain, cfg.timeout, journal)
    if cfg.type == "facilitator":
        assert cfg.url is not None
        return FacilitatorSettler(cfg.url, cfg.timeout, cfg.headers)
    if cfg.type == "callable":
        assert cfg.callable is not None
        return CallableSettler(cfg.callable, base)
    return DeferredSettler()

"""Settling a verified authorization: through an x402 facilitator over HTTP, on chain by
meterkit itself (`onchain`: see `payments.onchain`), into a deferred queue in the ledger
(submitted with `meterkit ledger settle`, or exported with `meterkit ledger export`), or with
an operator's callable.

Outcomes are three-valued on purpose. `settle` returns a reference when the money moved (or
was queued); raises `SettlementFailed` when it certainly did not (the claim is released and
the client may pay again); raises `SettlementUnknown` when it may have (the claim is kept and
the client is not invited to pay twice). A facilitator that cannot be reached at all (the
connection refused or never established, so no request left) is `FacilitatorUnreachable`,
a `SettlementFailed`: nothing was settled.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import aiohttp
import orjson

from meterkit.config.payments import Asset
from meterkit.payments.callables import call, load_callable
from meterkit.payments.evm import Authorization
from meterkit.payments.problems import (
    SettlementFailed,
    SettlementUnavailable,
    SettlementUnknown,
)

__all__ = [
    "CallableSettler",
    "DeferredSettler",
    "FacilitatorSettler",
    "FacilitatorUnreachable",
    "SettlementFailed",
    "SettlementRequest",
    "Settler",
]


class FacilitatorUnreachable(SettlementUnavailable):
    """The facilitator could not be reached: the connection was refused, failed or timed out
    before any request was sent, so nothing was settled (503, claim released)."""

    code, title = "facilitator-unavailable", "Payment Facilitator Unavailable"


# Errors raised before a request reaches the facilitator: nothing can have been settled.
# (`ConnectionTimeoutError` is aiohttp >= 3.10; a plain `ClientConnectorError` before that.)
_NOT_SENT: tuple[type[BaseException], ...] = (
    aiohttp.ClientConnectorError,
    *((aiohttp.ConnectionTimeoutError,) if hasattr(aiohttp, "ConnectionTimeoutError") else ()),
)


@dataclass(frozen=True)
class SupportCheck:
    """What a facilitator's `GET /supported` says about the configured assets."""

    supported: tuple[str, ...] = ()  # CAIP-2 networks it settles with the scheme
    unsupported: tuple[str, ...] = ()
    error: str | None = None  # /supported could not be read

    @property
    def ok(self) -> bool:
        return self.error is None and not self.unsupported

    def describe(self) -> str:
        if self.error is not None:
            return f"the facilitator's /supported could not be read: {self.error}"
        if self.unsupported:
            return "the facilitator does not support " + ", ".join(self.unsupported)
        return "the facilitator supports " + ", ".join(self.supported)


@dataclass(frozen=True)
class SettlementRequest:
    authorization: Authorization
    asset: Asset
    amount: int
    pay_to: str
    payer: str
    protocol: str
    claim_key: str
    requirements: dict[str, Any] = field(default_factory=dict)

    def payment_payload(self) -> dict[str, Any]:
        return {
            "x402Version": 2,
            "accepted": self.requirements,
            "payload": {
                "authorization": self.authorization.fields(),
                "signature": self.authorization.signature,
            },
        }

    def describe(self) -> dict[str, Any]:
        """What a callable settler receives."""
        return {
            "authorization": self.authorization.fields(),
            "signature": self.authorization.signature,
            "asset": self.asset.address,
            "chain_id": self.asset.chain_id,
            "network": self.asset.caip2,
            "amount": str(self.amount),
            "pay_to": self.pay_to,
            "payer": self.payer,
            "protocol": self.protocol,
            "claim_key": self.claim_key,
        }


class Settler(Protocol):
    name: str

    async def verify(self, req: SettlementRequest) -> None:
        """Ask whether the authorization can still settle (a facilitator's /verify)."""

    async def settle(self, req: SettlementRequest) -> tuple[str, str]:
        """("settled" or "queued", reference)."""

    async def close(self) -> None: ...


class DeferredSettler:
    """Accept a verified, claimed authorization now; submit it later in a batch."""

    name = "deferred"

    async def verify(self, req: SettlementRequest) -> None:
        return None

    async def settle(self, req: SettlementRequest) -> tuple[str, str]:
        return "queued", f"deferred:{req.authorization.nonce}"

    async def close(self) -> None:
        pass


class CallableSettler:
    """An operator's `settle(authorization: dict) -> reference` (sync or async). Raising
    `SettlementFailed` means nothing moved; any other exception is an unknown outcome."""

    name = "callable"

    def __init__(self, ref: str, base: Path | None = None) -> None:
        self.fn = load_callable(ref, base)

    async def verify(self, req: SettlementRequest) -> None:
        return None

    async def close(self) -> None:
        pass

    async def settle(self, req: SettlementRequest) -> tuple[str, str]:
        try:
            ref = await call(self.fn, req.describe())
        except SettlementFailed:
            raise
        except Exception as e:
            raise SettlementUnknown(
                "the settlement callable failed; the outcome is unknown", reason="callable_error"
            ) from e
        if not isinstance(ref, str) or not ref:
            raise SettlementUnknown(
                "the settlement callable returned no reference", reason="callable_error"
            )
        return "settled", ref


# How facilitators say an authorization's nonce is spent: x402's reference facilitator
# (`invalid_exact_evm_nonce_already_used`) and meterkit's own local one.
NONCE_USED = frozenset({"invalid_exact_evm_nonce_already_used", "nonce_used"})


class FacilitatorSettler:
    """An x402 facilitator: POST /verify and /settle with {x402Version, paymentPayload,
    paymentRequirements}. `success: false` is a failure even with HTTP 200."""

    name = "facilitator"

    def __init__(self, url: str, timeout: float, headers: tuple[tuple[str, str], ...] = ()) -> None:
        self.url = url.rstrip("/")
        # A connect timeout of its own: running out of time before the request is sent means
        # nothing was settled (`FacilitatorUnreachable`), unlike a timeout while waiting for
        # the answer (outcome unknown).
        self.timeout = aiohttp.ClientTimeout(total=timeout, sock_connect=min(timeout / 2, 5.0))
        self.headers = dict(headers)
        self._session: aiohttp.ClientSession | None = None

    def _s(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self.timeout, headers=self.headers)
        return self._session

    async def _post(self, path: str, req: SettlementRequest) -> dict[str, Any]:
        body = {
            "x402Version": 2,
            "paymentPayload": req.payment_payload(),
            "paymentRequirements": req.requirements,
        }
        async with self._s().post(
            self.url + path, data=orjson.dumps(body), headers={"Content-Type": "application/json"}
        ) as resp:
            text = await resp.read()
            if resp.status != 200:
                raise RuntimeError(
                    f"facilitator {path} answered HTTP {resp.status}: {text[:200]!r}"
                )
            data = orjson.loads(text)
            if not isinstance(data, dict):
                raise RuntimeError(f"facilitator {path} answered a non-object")
            return data

    async def verify(self, req: SettlementRequest) -> None:
        try:
            data = await self._post("/verify", req)
        except _NOT_SENT as e:
            raise FacilitatorUnreachable(
                f"the facilitator is unreachable ({e}): nothing was verified or settled",
                reason="facilitator_unreachable",
            ) from e
        except (aiohttp.ClientError, TimeoutError, RuntimeError, ValueError) as e:
            raise SettlementUnknown(
                f"the facilitator could not verify the payment: {e}",
                reason="facilitator_unavailable",
            ) from e
        if data.get("isValid") is not True:
            reason = data.get("invalidReason") or "invalid"
            raise SettlementFailed(
                f"the facilitator rejected the payment: {reason}", reason="facilitator_invalid"
            )

    async def used(self, req: SettlementRequest) -> bool | None:
        """Whether the authorization was used, as the facilitator's /verify tells: valid →
        not used (False); refused because its nonce is used → used (True); anything else
        (another refusal, no answer) → cannot tell (None)."""
        try:
            data = await self._post("/verify", req)
        except (aiohttp.ClientError, TimeoutError, RuntimeError, ValueError, OSError):
            return None
        if data.get("isValid") is True:
            return False
        return True if data.get("invalidReason") in NONCE_USED else None

    async def settle(self, req: SettlementRequest) -> tuple[str, str]:
        try:
            data = await self._post("/settle", req)
        except _NOT_SENT as e:
            # The request never left: the transfer cannot have been broadcast.
            raise FacilitatorUnreachable(
                f"the facilitator is unreachable ({e}): nothing was settled",
                reason="facilitator_unreachable",
            ) from e
        except (TimeoutError, aiohttp.ClientError, RuntimeError, ValueError) as e:
            # The transfer may have been broadcast before the failure.
            raise SettlementUnknown(
                "settlement outcome unknown (facilitator error or timeout)",
                reason="facilitator_unavailable",
            ) from e
        if data.get("success") is not True:
            reason = str(data.get("errorReason") or "settlement failed")
            if reason == "settlement_pending":
                raise SettlementUnknown(
                    "the facilitator says the settlement is pending", reason="pending"
                )
            failed = SettlementFailed(
                f"the facilitator did not settle: {reason}", reason="facilitator_failed"
            )
            failed.error_reason = reason
            raise failed
        tx = data.get("transaction")
        if not isinstance(tx, str) or not tx:
            raise SettlementUnknown(
                "the facilitator reported success without a transaction", reason="no_tx"
            )
        return "settled", tx

    async def supported(self, assets: Iterable[Asset], scheme: str = "exact") -> SupportCheck:
        """Does the facilitator settle `scheme` on each asset's network? Reads `GET
        /supported` (`{kinds: [{x402Version, scheme, network}]}`); settlement speaks x402 v2,
        so a kind counts when its version is 2 (or absent) and its network is the CAIP-2 id.
        Never raises: an unreadable answer is `SupportCheck.error`. Meant for startup, to
        refuse or warn before the first payment fails."""
        networks = list(dict.fromkeys(a.caip2 for a in assets))
        try:
            async with self._s().get(self.url + "/supported") as resp:
                if resp.status != 200:
                    return SupportCheck(error=f"HTTP {resp.status}")
                data = orjson.loads(await resp.read())
        except (aiohttp.ClientError, TimeoutError, ValueError) as e:
            return SupportCheck(error=str(e) or type(e).__name__)
        kinds = data.get("kinds") if isinstance(data, dict) else None
        if not isinstance(kinds, list):
            return SupportCheck(error="the answer has no kinds list")
        offered = {
            k.get("network")
            for k in kinds
            if isinstance(k, dict) and k.get("scheme") == scheme and k.get("x402Version", 2) == 2
        }
        return SupportCheck(
            supported=tuple(n for n in networks if n in offered),
            unsupported=tuple(n for n in networks if n not in offered),
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

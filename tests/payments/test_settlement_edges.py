"""Issue 9 #11, facilitator edges: a refused connection settles nothing (`SettlementFailed`,
503, not "outcome unknown"); a timeout after the request left is still unknown; `success:
false` keeps its reason; `/supported` says whether the configured networks are served."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest

from meterkit import _core
from meterkit.config.payments import Asset
from meterkit.mock.facilitator import start_facilitator
from meterkit.payments import evm, x402
from meterkit.payments.problems import SettlementUnknown
from meterkit.payments.settlement import (
    FacilitatorSettler,
    FacilitatorUnreachable,
    SettlementFailed,
    SettlementRequest,
    SupportCheck,
)
from support.payment_values import ASSET, KEY, PAY_TO

T = TypeVar("T")


def request(amount: int = 10_000) -> SettlementRequest:
    fields, sig = evm.sign(KEY, ASSET, to=PAY_TO, value=amount, valid_before=int(time.time()) + 300)
    auth = evm.parse_authorization(fields, sig)
    return SettlementRequest(
        auth,
        ASSET,
        amount,
        PAY_TO,
        _core.address_of(KEY),
        "x402-v2",
        evm.claim_key(auth, ASSET),
        x402.requirements_v2(x402.Offer(ASSET, amount, PAY_TO), 300),
    )


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def with_facilitator(body: Callable[[str], Awaitable[T]]) -> T:
    async def go() -> T:
        runner, port = await start_facilitator("127.0.0.1", 0)
        try:
            return await body(f"http://127.0.0.1:{port}")
        finally:
            await runner.cleanup()

    return asyncio.run(go())


async def settle(url: str, timeout: float = 5.0, **mode: Any) -> tuple[str, str]:
    settler = FacilitatorSettler(url, timeout)
    try:
        if mode:
            async with settler._s().post(url + "/_facilitator/mode", json=mode) as r:
                assert r.status == 200
        return await settler.settle(request())
    finally:
        await settler.close()


@pytest.mark.parametrize("step", ["settle", "verify"])
def test_a_refused_connection_settled_nothing(step: str) -> None:
    async def go() -> None:
        settler = FacilitatorSettler(f"http://127.0.0.1:{closed_port()}", 5)
        try:
            await getattr(settler, step)(request())
        finally:
            await settler.close()

    with pytest.raises(FacilitatorUnreachable) as e:
        asyncio.run(go())
    assert isinstance(e.value, SettlementFailed) and not isinstance(e.value, SettlementUnknown)
    assert (e.value.status, e.value.fresh_challenge) == (503, False)
    assert "nothing was" in e.value.detail


def test_a_timeout_after_sending_is_still_unknown() -> None:
    with pytest.raises(SettlementUnknown):
        with_facilitator(lambda url: settle(url, timeout=0.5, settle="timeout"))


def test_a_500_from_settle_is_unknown() -> None:
    with pytest.raises(SettlementUnknown):
        with_facilitator(lambda url: settle(url, settle="http500"))


def test_success_false_is_a_failure_with_its_reason() -> None:
    with pytest.raises(SettlementFailed) as e:
        with_facilitator(lambda url: settle(url, settle="fail"))
    assert not isinstance(e.value, FacilitatorUnreachable)
    assert e.value.error_reason == "insufficient_funds"


def test_settles_when_all_is_well() -> None:
    status, tx = with_facilitator(lambda url: settle(url))
    assert status == "settled" and tx.startswith("0x")


OTHER = Asset("USDC", "ethereum", 1, "0x" + "a0" * 20, 6, "USD Coin", "2")


def test_supported_reports_each_network() -> None:
    async def check(url: str) -> SupportCheck:
        settler = FacilitatorSettler(url, 5)
        try:
            return await settler.supported([ASSET, OTHER, ASSET])
        finally:
            await settler.close()

    report = with_facilitator(check)
    assert (report.supported, report.unsupported) == (("eip155:84532",), ("eip155:1",))
    assert not report.ok and "eip155:1" in report.describe()

    async def only_known(url: str) -> SupportCheck:
        settler = FacilitatorSettler(url, 5)
        try:
            return await settler.supported([ASSET])
        finally:
            await settler.close()

    assert with_facilitator(only_known).ok


def test_supported_never_raises_when_unreachable() -> None:
    async def go() -> SupportCheck:
        settler = FacilitatorSettler(f"http://127.0.0.1:{closed_port()}", 5)
        try:
            return await settler.supported([ASSET])
        finally:
            await settler.close()

    report = asyncio.run(go())
    assert report.error is not None and not report.ok

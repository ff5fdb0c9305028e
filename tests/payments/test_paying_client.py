"""Issue 9 #9 and #8 (client side): the paying client's caps hold, it shows what it paid, it
pays x402 as well as MPP, any EIP-3009 token the offer describes, and it sends the credential
in the header the challenge names. Servers run in-process over loopback
(`support/paid_server.py`, verifying with meterkit's own code; `pympp` for interop)."""

from __future__ import annotations

import asyncio
import contextlib
import io
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Any, TypeVar

import pytest

from meterkit import _core, cli
from meterkit.client import PaidResult, PayingClient, PaymentDeclined
from meterkit.config.payments import KNOWN_ASSETS, Asset
from support.paid_server import PaidServer, serving

T = TypeVar("T")
KEY = bytes(31) + b"\x09"
USDC = KNOWN_ASSETS[("USDC", "base-sepolia")]
# A token meterkit does not know: 18 decimals, its own EIP-712 domain.
CUSTOM = Asset("EURX", "eip155:84532", 84532, "0x" + "4e" * 20, 18, "Euro Token", "7")


def run(server: PaidServer, body: Callable[[PaidServer], Awaitable[T]]) -> T:
    async def go() -> T:
        async with serving(server) as s:
            return await body(s)

    return asyncio.run(go())


def pay_once(server: PaidServer, **kw: Any) -> PaidResult:
    async def body(s: PaidServer) -> PaidResult:
        async with PayingClient(KEY, **kw) as client:
            return await client.request("POST", s.url, json={"q": 1})

    return run(server, body)


# ---- #9: the cap counts every charged answer ------------------------------------------------


def test_a_receipt_on_a_404_counts_toward_max_total() -> None:
    """Regression: `max_total=0.30` paid 0.25 twice because the paid answer was a 404 (the
    upstream's) and only 2xx counted."""
    server = PaidServer(USDC, Decimal("0.25"), paid_status=404)

    async def body(s: PaidServer) -> tuple[PaidResult, str, Decimal]:
        async with PayingClient(KEY, max_total=Decimal("0.30")) as client:
            first = await client.request("POST", s.url, json={"q": 1})
            with pytest.raises(PaymentDeclined, match="total cap") as e:
                await client.request("POST", s.url, json={"q": 2})
            return first, str(e.value), client.spent

    first, _, spent = run(server, body)
    assert first.status == 404 and first.paid is not None and first.receipt is not None
    assert spent == Decimal("0.25")
    assert server.paid == ["mpp"]


@pytest.mark.parametrize("fails", [False, True])
def test_x402_settlement_response_decides_the_count(fails: bool) -> None:
    server = PaidServer(USDC, Decimal("0.10"), offers=("x402-v2",), settle_fails=fails)

    async def body(s: PaidServer) -> tuple[PaidResult, Decimal]:
        async with PayingClient(KEY, max_total=Decimal("1")) as client:
            r = await client.request("POST", s.url, json={"q": 1})
            return r, client.spent

    r, spent = run(server, body)
    assert r.receipt is not None and r.receipt["success"] is not fails
    if fails:
        assert (r.status, r.paid, spent) == (402, None, Decimal(0))
    else:
        assert (r.status, spent) == (200, Decimal("0.10")) and r.paid is not None


def test_concurrent_requests_cannot_pass_max_total_together() -> None:
    """Two payments in flight reserve 0.50 of a 0.60 cap: a third is refused before it pays."""

    async def body(s: PaidServer) -> tuple[list[Any], Decimal]:
        s.gate = asyncio.Event()
        async with PayingClient(KEY, max_total=Decimal("0.60")) as client:
            tasks = [
                asyncio.create_task(client.request("POST", s.url, json={"q": i})) for i in range(3)
            ]
            # One request is refused while the other two wait, paid, at the gate.
            done, _ = await asyncio.wait(tasks, timeout=30, return_when=asyncio.FIRST_COMPLETED)
            assert len(done) == 1, "no request finished while two payments were in flight"
            s.gate.set()
            results = await asyncio.gather(*tasks, return_exceptions=True)
            return results, client.spent

    results, spent = run(PaidServer(USDC, Decimal("0.25")), body)
    declined = [r for r in results if isinstance(r, PaymentDeclined)]
    paid = [r for r in results if isinstance(r, PaidResult) and r.paid is not None]
    assert (len(declined), len(paid), spent) == (1, 2, Decimal("0.50"))


# ---- #9: no cap, no payment -----------------------------------------------------------------


def test_no_cap_refuses_to_pay() -> None:
    server = PaidServer(USDC, Decimal("0.01"))

    async def body(s: PaidServer) -> None:
        async with PayingClient(KEY) as client:
            with pytest.raises(PaymentDeclined, match="no spending cap"):
                await client.request("POST", s.url, json={})

    run(server, body)
    assert server.paid == []


def test_no_cap_pays_when_asked_explicitly() -> None:
    result = pay_once(PaidServer(USDC, Decimal("0.01")), no_cap=True)
    assert result.status == 200 and result.paid is not None


def test_no_cap_with_a_cap_is_a_contradiction() -> None:
    with pytest.raises(ValueError, match="no_cap"):
        PayingClient(KEY, no_cap=True, max_total=Decimal(1))


def test_dry_run_needs_no_cap() -> None:
    server = PaidServer(USDC, Decimal("0.01"))
    result = pay_once(server, dry_run=True)
    assert result.status == 402 and result.offers and server.paid == []


# ---- #9: x402 offers and any EIP-3009 asset ----------------------------------------------------


@pytest.mark.parametrize("protocol", ["x402-v2", "x402-v1"])
def test_pays_an_x402_only_server(protocol: str) -> None:
    server = PaidServer(USDC, Decimal("0.02"), offers=(protocol,))
    result = pay_once(server, max_per_request=Decimal("0.05"))
    assert result.status == 200, result.body
    assert result.paid is not None and result.paid.protocol == protocol
    assert server.paid == [protocol]
    assert result.receipt is not None and result.receipt["success"] is True


def test_prefers_mpp_at_the_same_price() -> None:
    server = PaidServer(USDC, Decimal("0.02"), offers=("mpp", "x402-v2", "x402-v1"))
    result = pay_once(server, max_per_request=Decimal("0.05"))
    assert [o.protocol for o in result.offers] == ["mpp", "x402-v2"]
    assert server.paid == ["mpp"]


def test_pays_a_token_it_does_not_know_over_x402() -> None:
    """The EIP-712 name/version come from the offer's `extra`, the decimals from
    `extra.decimals`; the server checks the signature under that domain."""
    server = PaidServer(CUSTOM, Decimal("1.5"), offers=("x402-v2",))

    server.describe_domain = True
    result = pay_once(server, max_per_request=Decimal("2"))
    assert result.status == 200, result.body
    assert result.paid is not None and result.paid.protocol == "x402-v2"
    assert result.paid is not None and result.paid.price == Decimal("1.5")
    assert (result.paid.asset.eip712_name, result.paid.asset.decimals) == ("Euro Token", 18)


def test_pays_a_token_it_does_not_know_over_mpp() -> None:
    server = PaidServer(CUSTOM, Decimal("0.75"), describe_domain=True)
    result = pay_once(server, max_per_request=Decimal("1"))
    assert result.status == 200, result.body
    assert result.paid is not None and result.paid.price == Decimal("0.75")


def test_an_unknown_token_without_its_domain_is_not_paid() -> None:
    server = PaidServer(CUSTOM, Decimal("0.75"), offers=("mpp", "x402-v2"))
    with pytest.raises(PaymentDeclined, match="no EIP-3009 payment"):
        pay_once(server, max_per_request=Decimal("1"))
    assert server.paid == []


# ---- #8: the credential goes in the header the challenge names ----------------------------------


def test_payment_authorization_keeps_the_bearer_key() -> None:
    server = PaidServer(USDC, Decimal("0.01"), header_field="Payment-Authorization")

    async def body(s: PaidServer) -> PaidResult:
        async with PayingClient(KEY, max_per_request=Decimal("0.05")) as client:
            return await client.request(
                "POST", s.url, json={}, headers={"Authorization": "Bearer sk-own-key"}
            )

    result = run(server, body)
    assert result.status == 200, result.body
    paid = server.received[-1]
    assert paid["Authorization"] == "Bearer sk-own-key"
    assert paid["Payment-Authorization"].startswith("Payment ")


def test_pays_a_pympp_server_that_requires_auth() -> None:
    """`pympp` with `requires_auth=True` offers `header="Payment-Authorization"` and reads the
    credential only there (the echoed header is bound into the challenge id)."""
    from aiohttp import web
    from mpp.methods.evm import BASE_SEPOLIA_USDC
    from mpp.methods.evm import evm as evm_method
    from mpp.server import Mpp, Request, Response

    from meterkit.runtime import bound_port

    settled: list[str] = []

    def settle(auth: Any) -> str:
        settled.append(auth.payload["from"])
        return "0x" + "ab" * 32

    server = Mpp(
        methods=evm_method(currency=BASE_SEPOLIA_USDC, recipient="0x" + "22" * 20, settle=settle),
        realm="127.0.0.1",
        secret_key="pympp-server-secret",
        requires_auth=True,
    )
    seen: list[str | None] = []

    async def handler(req: web.Request) -> web.Response:
        seen.append(req.headers.get("Authorization"))
        result = await server.charge(amount="0.05")(
            Request(req.method, str(req.url), list(req.headers.items()), await req.read())
        )
        out = (
            result.challenge
            if result.status != 200
            else result.with_receipt(Response.json({"ok": True}))
        )
        return web.Response(
            status=out.status, body=out.body, headers=list(out.headers.multi_items())
        )

    async def go() -> PaidResult:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handler)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        try:
            async with PayingClient(KEY, max_per_request=Decimal("0.10")) as client:
                return await client.request(
                    "POST",
                    f"http://127.0.0.1:{bound_port(site)}/paid",
                    json={"q": 1},
                    headers={"Authorization": "Bearer sk-own-key"},
                )
        finally:
            await runner.cleanup()

    result = asyncio.run(go())
    assert result.status == 200, result.body
    assert result.paid is not None and result.paid.challenge is not None
    assert result.paid.challenge.header_field == "Payment-Authorization"
    assert settled == [_core.address_of(KEY)]
    assert seen == ["Bearer sk-own-key", "Bearer sk-own-key"]


# ---- `meterkit pay` ---------------------------------------------------------------------------


def cli_pay(server: PaidServer, *args: str) -> tuple[int, str, str]:
    """`meterkit pay URL ARGS` in a worker thread (it runs its own event loop) against the
    server on this loop."""

    async def body(s: PaidServer) -> tuple[int, str, str]:
        err = io.StringIO()

        def call() -> tuple[int, bytes]:
            out = io.BytesIO()
            stdout = io.TextIOWrapper(out, write_through=True)
            with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(err):
                code = cli.main(["pay", s.url, "--data", "{}", *args])
            stdout.detach()  # keep `out` open
            return code, out.getvalue()

        code, out = await asyncio.to_thread(call)
        return code, out.decode(), err.getvalue()

    return run(server, body)


@pytest.fixture(autouse=True)
def private_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("METERKIT_PRIVATE_KEY", KEY.hex())


def test_pay_command_shows_the_charge_on_a_non_2xx() -> None:
    server = PaidServer(USDC, Decimal("0.25"), paid_status=404)
    code, _, stderr = cli_pay(server, "--max-amount", "0.30")
    assert code == 1
    assert f"paid: 0.25 USDC from {_core.address_of(KEY)}" in stderr
    assert "receipt:" in stderr and "HTTP 404" in stderr


def test_pay_command_refuses_without_a_cap() -> None:
    server = PaidServer(USDC, Decimal("0.01"))
    code, _, stderr = cli_pay(server)
    assert code == 3 and "--no-cap" in stderr
    assert server.paid == []


def test_pay_command_no_cap_pays() -> None:
    server = PaidServer(USDC, Decimal("0.01"))
    code, stdout, stderr = cli_pay(server, "--no-cap")
    assert code == 0, stderr
    assert server.paid == ["mpp"] and '"ok"' in stdout


def test_pay_command_no_cap_and_max_amount_conflict() -> None:
    server = PaidServer(USDC, Decimal("0.01"))
    with pytest.raises(SystemExit):
        cli_pay(server, "--no-cap", "--max-amount", "1")
    assert server.paid == []

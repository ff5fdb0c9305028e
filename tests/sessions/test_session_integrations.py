"""The session meter in an operator's own app, without the proxy: a real aiohttp app and a
real Starlette app (uvicorn) each sell their own stream per token, paid by meterkit's
`SessionClient` over a prepaid channel in a SQLite store. The same guarantees as through
the proxy: a pause at the exact token the vouchers cover, one need-voucher, a resume, a
receipt for what was delivered, and a client that leaves pays only what it was sent."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from meterkit import SseDecoder, _core, count_tokens
from meterkit.client.session import SessionClient
from meterkit.payments import mpp
from meterkit.sessions.channels import Draw
from support.http import texts
from support.inproc import chat
from support.payments import key
from support.session_apps import CHAT, FRAMEWORKS, PRICE, TEXT, Served, make_meter, serve
from support.sessions import evm_challenges

pytestmark = pytest.mark.parametrize("framework", FRAMEWORKS)


async def _prepaid(served: Served, payer_key: bytes, deposit: int, salt: int = 1) -> str:
    c = await served.meter.credit(_core.address_of(payer_key), deposit, salt="0x" + f"{salt:064x}")
    return c.channel_id


async def _challenge(served: Served, http: aiohttp.ClientSession) -> mpp.Challenge:
    async with http.post(served.url + CHAT, json=chat()) as r:
        assert r.status == 402
        return evm_challenges(r.headers)[0]


def test_a_paid_stream_pauses_asks_for_a_voucher_resumes_and_ends_with_the_receipt(
    tmp_path: Path, framework: str
) -> None:
    async def go() -> None:
        k = key()
        async with serve(framework, make_meter(tmp_path / "s.sqlite3")) as served:
            cid = await _prepaid(served, k, 10_000)
            async with SessionClient(
                k, cid, max_total=Decimal("0.01"), initial=PRICE * 30
            ) as client:
                result = await client.stream("POST", served.url + CHAT, json=chat())
            assert result.status == 200, result.problem
            # 30 tokens covered at first: pauses, each answered by one voucher.
            assert result.needs and len(result.vouchers) == len(result.needs)
            text = texts("openai-chat", result.body)
            assert text == TEXT  # control events never count as text
            tokens = count_tokens(text, "gpt-4o")
            assert result.receipt is not None
            assert (result.receipt["units"], result.receipt["spent"]) == (
                tokens,
                str(tokens * PRICE),
            )
            events = [ev.event for ev in SseDecoder().feed(result.body)]
            assert events[-1] == "payment-receipt"
            assert events.count("payment-need-voucher") == len(result.needs)
            c = await served.channel(cid)
            assert (c.spent, c.units) == (tokens * PRICE, tokens)
            assert c.accepted >= c.spent

    asyncio.run(go())


def test_a_client_gone_while_paused_pays_only_what_it_was_sent(
    tmp_path: Path, framework: str
) -> None:
    async def go() -> None:
        k = key()
        async with serve(framework, make_meter(tmp_path / "s.sqlite3")) as served:
            cid = await _prepaid(served, k, 10_000)
            async with aiohttp.ClientSession() as http:
                ch = await _challenge(served, http)
                client = SessionClient(k, cid, max_total=Decimal("0.01"), session=http)
                auth = client.authorization(ch, PRICE * 6)
                body = b""
                async with http.post(served.url + CHAT, json=chat(), headers=auth) as r:
                    assert r.status == 200
                    async for chunk in r.content.iter_any():
                        body += chunk
                        if b"payment-need-voucher" in body:
                            break  # and leave while the stream waits for a voucher
            # Settled before the relay closes the model's stream: no clock involved.
            await served.stream_closed()
            delivered = count_tokens(texts("openai-chat", body), "gpt-4o")
            assert delivered == 6
            c = await served.channel(cid)
            assert (c.spent, c.units) == (6 * PRICE, 6)
            # Its hold is given back: nothing is held on the channel any more.
            out = await served.meter.store.draw(cid, "probe", Draw(PRICE), 0.0)
            assert out is not None and out.others == 0

    asyncio.run(go())


def test_the_402_lists_the_session_challenges(tmp_path: Path, framework: str) -> None:
    async def go() -> tuple[int, dict[str, Any], list[mpp.Challenge]]:
        async with serve(framework, make_meter(tmp_path / "s.sqlite3")) as served:
            async with aiohttp.ClientSession() as http:
                async with http.post(served.url + CHAT, json=chat()) as r:
                    return (
                        r.status,
                        orjson.loads(await r.read()),
                        mpp.parse_challenges(r.headers.getall("WWW-Authenticate")),
                    )

    status, problem, chs = asyncio.run(go())
    assert status == 402
    assert problem["type"] == "https://paymentauth.org/problems/payment-required"
    assert sorted((c.method, c.intent) for c in chs) == [("evm", "session"), ("tempo", "session")]
    req = chs[0].request_json
    assert (req["amount"], req["unitType"]) == (str(PRICE), "llm_token")
    assert chs[0].realm == "127.0.0.1"


@pytest.mark.parametrize(
    "case", ["forged", "over_deposit", "too_small", "accepted", "insufficient"]
)
def test_vouchers_are_answered_with_a_receipt_or_the_session_problem(
    tmp_path: Path, framework: str, case: str
) -> None:
    async def go() -> tuple[int, Any]:
        k = key()
        meter = make_meter(tmp_path / "s.sqlite3", min_voucher_delta="$0.0001")
        async with serve(framework, meter) as served:
            cid = await _prepaid(served, k, 1_000)
            async with aiohttp.ClientSession() as http:
                ch = await _challenge(served, http)
                signer = key() if case == "forged" else k
                client = SessionClient(signer, cid, max_total=Decimal("1"), session=http)
                amount = {"over_deposit": 2_000, "too_small": 50}.get(case, 500)
                if case == "insufficient":
                    # A paid request whose voucher covers nothing yet: its problem says how
                    # much to sign for, before the model is called.
                    auth = client.authorization(ch, 0)
                    async with http.post(served.url + CHAT, json=chat(), headers=auth) as r:
                        return r.status, (orjson.loads(await r.read()), served.closed)
                async with http.post(
                    served.url + CHAT, headers=client.authorization(ch, amount)
                ) as r:
                    raw = await r.read()
                    if r.status == 204:
                        return 204, mpp.decode_receipt(r.headers["Payment-Receipt"])
                    return r.status, orjson.loads(raw)

    status, out = asyncio.run(go())
    if case == "accepted":
        assert status == 204
        assert (out["acceptedCumulative"], out["spent"], out["intent"]) == ("500", "0", "session")
        return
    if case == "insufficient":
        problem, started = out
        assert (status, problem["type"]) == (
            402,
            "https://paymentauth.org/problems/session/insufficient-balance",
        )
        assert problem["requiredCumulative"] == str(PRICE)
        assert len(started) == 1 and not started[0].is_set()  # the model was never read
        return
    expected = {
        "forged": (402, "signer-mismatch"),
        "over_deposit": (402, "amount-exceeds-deposit"),
        "too_small": (402, "delta-too-small"),
    }[case]
    assert status == expected[0]
    assert out["type"] == "https://paymentauth.org/problems/session/" + expected[1]

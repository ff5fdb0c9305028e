"""The session meter's web-free core, driven directly: headers in, SSE bytes and problems
out. A voucher is a second admission on the same meter (what a POST with no body is to an
app); the relay is iterated as a web framework would, and stopped as a client would."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest

from meterkit import SseDecoder, _core, count_tokens, synth
from meterkit.client.session import SessionClient
from meterkit.payments import mpp
from meterkit.problems import render
from meterkit.sessions.meter import PaidStream, Receipted, SessionMeter
from meterkit.sessions.problems import InsufficientBalance, TooManyVouchers
from meterkit.sessions.store import SessionStore
from support.http import texts
from support.payments import PAY_TO, SECRET, key

ROOT = Path(__file__).resolve().parents[2]
PRICE = 10
REALM = "api.example.test"


def meter_at(db: Path, **terms: Any) -> SessionMeter:
    return SessionMeter.build(
        SessionStore(db),
        price="$0.00001",
        pay_to=PAY_TO,
        secret=SECRET,
        realm=REALM,
        **{"voucher_timeout": 30.0, **terms},
    )


async def reads(fail_after: int | None = None) -> AsyncIterator[bytes]:
    for i, event in enumerate(synth.chat_events(synth.split_deltas(synth.SAMPLE_TEXT))):
        if fail_after is not None and i == fail_after:
            raise ConnectionResetError("the model server went away")
        yield event


class Payer:
    """A payer on a fresh prepaid channel of `meter`, signing with meterkit's client."""

    def __init__(self, meter: SessionMeter, cid: str, k: bytes) -> None:
        self.meter = meter
        self.cid = cid
        (self.ch,) = [c for c in meter.challenges(time.time()) if c.method == "evm"]
        self.client = SessionClient(k, cid, max_total=Decimal("1"))

    @classmethod
    async def on(cls, meter: SessionMeter, deposit: int = 10_000) -> Payer:
        k = key()
        c = await meter.credit(_core.address_of(k), deposit)
        return cls(meter, c.channel_id, k)

    async def admit(self, amount: int, *, body: bool) -> PaidStream | Receipted | None:
        return await self.meter.admit(
            self.client.authorization(self.ch, amount),
            method="POST",
            has_body=body,
            now=time.time(),
        )

    async def stream(self, amount: int) -> PaidStream:
        paid = await self.admit(amount, body=True)
        assert isinstance(paid, PaidStream)
        return paid


def test_the_relay_pauses_asks_once_resumes_on_a_voucher_and_ends_with_the_receipt(
    tmp_path: Path,
) -> None:
    async def go() -> None:
        async with meter_at(tmp_path / "s.sqlite3") as meter:
            payer = await Payer.on(meter)
            paid = await payer.stream(PRICE * 20)
            assert await paid.open() == 20
            assert "Payment-Receipt" in paid.headers
            out = b""
            needs = 0
            async for data in paid.relay(reads(), format="openai-chat", model="gpt-4o"):
                out += data
                if data.startswith(b"event: payment-need-voucher"):
                    needs += 1
                    (event,) = SseDecoder().feed(data)
                    need = orjson.loads(event.data)
                    assert need["choices"] == []  # an OpenAI SDK reads an empty chunk
                    more = int(need["requiredCumulative"]) + PRICE * 19
                    answer = await payer.admit(more, body=False)
                    assert isinstance(answer, Receipted) and answer.status == 204
            tokens = count_tokens(synth.SAMPLE_TEXT, "gpt-4o")
            assert texts("openai-chat", out) == synth.SAMPLE_TEXT
            assert needs == (tokens - 1) // 20  # one per 20 tokens after the first 20
            receipt = orjson.loads(list(SseDecoder().feed(out))[-1].data)
            assert (receipt["units"], receipt["spent"]) == (tokens, str(tokens * PRICE))
            assert (paid.outcome, paid.charged_tokens, paid.spent) == (
                "completed",
                tokens,
                tokens * PRICE,
            )
            c = await meter.store.get(payer.cid)
            assert c is not None and (c.spent, c.units) == (tokens * PRICE, tokens)

    asyncio.run(go())


def test_a_consumer_that_stops_while_paused_is_charged_what_it_was_handed(
    tmp_path: Path,
) -> None:
    async def go() -> None:
        async with meter_at(tmp_path / "s.sqlite3") as meter:
            payer = await Payer.on(meter)
            paid = await payer.stream(PRICE * 7)
            await paid.open()
            out = b""
            async with aclosing(paid.relay(reads(), format="openai-chat")) as relay:
                async for data in relay:
                    out += data
                    if b"payment-need-voucher" in data:
                        break  # the client left: the framework closes the relay
            assert paid.outcome == "client_cancelled"
            assert count_tokens(texts("openai-chat", out), "gpt-4o") == 7
            c = await meter.store.get(payer.cid)
            assert c is not None and (c.spent, c.units) == (7 * PRICE, 7)

    asyncio.run(go())


def test_no_voucher_in_time_ends_with_the_formats_ending_and_the_receipt(tmp_path: Path) -> None:
    async def go() -> None:
        async with meter_at(tmp_path / "s.sqlite3", voucher_timeout=0.05) as meter:
            payer = await Payer.on(meter)
            paid = await payer.stream(PRICE * 5)
            await paid.open()
            out = b"".join([d async for d in paid.relay(reads(), format="openai-chat")])
            events = list(SseDecoder().feed(out))
            assert [e.event for e in events].count("payment-need-voucher") == 1
            assert events[-1].event == "payment-receipt"
            assert events[-2].data == "[DONE]"
            assert b'"finish_reason":"length"' in out
            assert orjson.loads(events[-1].data)["units"] == 5
            assert paid.outcome == "truncated"

    asyncio.run(go())


def test_a_broken_upstream_ends_with_the_error_event_and_charges_what_was_sent(
    tmp_path: Path,
) -> None:
    async def go() -> None:
        async with meter_at(tmp_path / "s.sqlite3") as meter:
            payer = await Payer.on(meter)
            paid = await payer.stream(PRICE * 100)
            await paid.open()
            out = b"".join([d async for d in paid.relay(reads(fail_after=6), format="openai-chat")])
            sent = count_tokens(texts("openai-chat", out), "gpt-4o")
            assert paid.outcome == "upstream_error" and sent > 0
            assert b"upstream stream failed" in out
            receipt = orjson.loads(list(SseDecoder().feed(out))[-1].data)
            assert receipt["units"] == sent

    asyncio.run(go())


def test_the_prompt_is_charged_first_and_only_with_room_for_a_token(tmp_path: Path) -> None:
    async def go() -> None:
        async with meter_at(tmp_path / "s.sqlite3", prompt_price="$0.000002") as meter:
            payer = await Payer.on(meter)
            # 12 prompt tokens at 2 = 24: a voucher for 30 leaves no room for one token.
            paid = await payer.stream(30)
            with pytest.raises(InsufficientBalance) as refused:
                await paid.open(prompt_tokens=12)
            assert refused.value.extra["requiredCumulative"] == str(24 + PRICE)
            c = await meter.store.get(payer.cid)
            assert c is not None and (c.spent, c.units) == (0, 0)
            paid = await payer.stream(24 + PRICE * 3)
            assert await paid.open(prompt_tokens=12) == 3
            c = await meter.store.get(payer.cid)
            assert c is not None and (c.spent, c.units) == (24, 12)

    asyncio.run(go())


def test_refusals_render_as_problem_details_without_a_web_framework(tmp_path: Path) -> None:
    meter = meter_at(tmp_path / "s.sqlite3")
    now = time.time()
    r = render(meter.payment_required(now))
    assert r.status == 402
    names = [n.lower() for n, _ in r.headers]
    assert names.count("www-authenticate") == 2  # evm and tempo
    assert ("Content-Type", "application/problem+json") in r.headers
    assert ("Cache-Control", "no-store") in r.headers
    body = orjson.loads(r.body)
    assert body["type"] == "https://paymentauth.org/problems/payment-required"
    chs = mpp.parse_challenges([v for n, v in r.headers if n == "WWW-Authenticate"])
    assert {c.realm for c in chs} == {REALM}
    # A session problem answered with a retry, not a new payment.
    limited = render(meter.problem(TooManyVouchers("slow down", reason="rate"), now))
    assert limited.status == 429 and ("Retry-After", "1") in limited.headers
    assert "www-authenticate" not in [n.lower() for n, _ in limited.headers]


def test_admission_leaves_requests_without_a_session_credential_to_the_402(
    tmp_path: Path,
) -> None:
    async def go() -> None:
        meter = meter_at(tmp_path / "s.sqlite3")
        assert await meter.admit({}, method="POST", has_body=True, now=time.time()) is None

    asyncio.run(go())


def test_build_refuses_prices_it_would_have_to_round(tmp_path: Path) -> None:
    store = SessionStore(tmp_path / "s.sqlite3")
    with pytest.raises(ValueError, match="base units"):
        SessionMeter.build(store, price="$0.0000001", pay_to=PAY_TO, secret=SECRET)
    with pytest.raises(ValueError, match="unknown asset"):
        SessionMeter.build(store, price="$1", pay_to=PAY_TO, secret=SECRET, network="nowhere")
    m = SessionMeter.build(store, price=Decimal("0.00001"), pay_to=PAY_TO, secret=SECRET)
    assert (m.offers[0].price, m.offers[0].accept.asset.network) == (PRICE, "base-sepolia")


def test_the_core_imports_no_web_framework() -> None:
    code = (
        "import sys, meterkit.sessions.meter, meterkit.integrations;"
        "print(sorted(m for m in ('aiohttp.web', 'starlette') if m in sys.modules))"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT / "python")}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    assert out.stdout.strip() == "[]"

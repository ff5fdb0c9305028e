"""Per-token streamed payments through the proxy, in process (proxy + mock LLM on loopback,
a prepaid channel in the SQLite store): the stream pauses at the exact token the vouchers
cover, asks for a voucher once, resumes when one lands, and ends with a receipt for what
was delivered — nothing more."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest

from meterkit import SseDecoder, count_tokens
from meterkit.client.session import SessionClient, SessionDeclined
from meterkit.payments import mpp
from meterkit.sessions.channels import Channel
from meterkit.sessions.store import SessionStore
from support.http import texts
from support.inproc import chat, gateway, llm_config
from support.payments import ASSET, key, paid
from support.sessions import credit_prepaid, evm_challenges

CHAT = "/v1/chat/completions"
# $0.00001 a completion token = 10 base units of a 6-decimal token; prompts are free here.
PRICE = 10


def tree(db: Path, **session: Any) -> dict[str, Any]:
    t = llm_config("{mock}")
    t["routes"] = {
        f"POST {CHAT}": {
            "upstream": "mock",
            "session": {"price": "$0.00001", "voucher_timeout": "2s", **session},
        }
    }
    return paid(t, str(db))


async def prepaid(db: Path, payer_key: bytes, deposit: int, salt: int = 1) -> str:
    store = SessionStore(db)
    await store.open()
    try:
        return await credit_prepaid(store, payer_key, deposit, salt)
    finally:
        await store.close()


def delivered_text(body: bytes) -> str:
    return texts("openai-chat", body)


async def channel(db: Path, cid: str) -> Channel:
    store = SessionStore(db)
    await store.open()
    try:
        c = await store.get(cid)
        assert c is not None
        return c
    finally:
        await store.close()


def test_a_stream_pauses_asks_for_a_voucher_resumes_and_ends_with_the_receipt(
    tmp_path: Path,
) -> None:
    db = tmp_path / "ledger.sqlite3"

    async def go() -> None:
        k = key()
        cid = await prepaid(db, k, 10_000)
        async with gateway(tree(db)) as g:
            async with SessionClient(
                k, cid, max_total=Decimal("0.01"), initial=PRICE * 10, session=g.session
            ) as client:
                h = {"x-mock-length": "40", "x-mock-tps": "0"}
                result = await client.stream("POST", g.url + CHAT, json=chat(), headers=h)
            assert result.status == 200, result.problem
            # 10 tokens covered at first: at least one pause, one voucher each.
            assert result.needs and len(result.vouchers) == len(result.needs)
            assert result.receipt is not None
            text = delivered_text(result.body)
            tokens = count_tokens(text, "gpt-4o")
            assert tokens == 40
            assert result.receipt["units"] == tokens
            assert result.receipt["spent"] == str(tokens * PRICE)
            assert result.receipt["intent"] == "session" and result.receipt["method"] == "evm"
            # Control events never sit inside an LLM event, and never count as text.
            for ev in SseDecoder().feed(result.body):
                if ev.event == "payment-need-voucher":
                    need = orjson.loads(ev.data)
                    assert set(need) >= {
                        "channelId",
                        "requiredCumulative",
                        "acceptedCumulative",
                        "deposit",
                    }
                    assert all(isinstance(need[f], str) for f in ("requiredCumulative", "deposit"))
            (record,) = [r for r in await g.records(2) if r.status == 200 and r.stream]
            assert record.completion_tokens == tokens
            c = await channel(db, cid)
            assert (c.spent, c.units) == (tokens * PRICE, tokens)
            assert c.accepted >= c.spent

    asyncio.run(go())


def test_no_voucher_in_time_ends_the_stream_at_the_last_covered_token(tmp_path: Path) -> None:
    db = tmp_path / "ledger.sqlite3"

    async def go() -> None:
        k = key()
        cid = await prepaid(db, k, 10_000)
        async with gateway(tree(db, voucher_timeout="0.3s")) as g:
            status, headers, _ = await g.post(CHAT, chat())
            assert status == 402
            (ch,) = evm_challenges(headers)
            client = SessionClient(k, cid, max_total=Decimal("0.01"), session=g.session)
            auth = client.authorization(ch, PRICE * 7)
            status, _, body = await g.post(
                CHAT, chat(), {**auth, "x-mock-length": "40", "x-mock-tps": "0"}
            )
            assert status == 200
            text = delivered_text(body)
            assert count_tokens(text, "gpt-4o") == 7
            events = [ev.event for ev in SseDecoder().feed(body)]
            assert events.count("payment-need-voucher") == 1
            assert events[-1] == "payment-receipt"
            receipt = orjson.loads(list(SseDecoder().feed(body))[-1].data)
            assert (receipt["units"], receipt["spent"]) == (7, str(7 * PRICE))
            (record,) = [r for r in await g.records(2) if r.stream]
            assert (record.outcome, record.truncation) == ("truncated", "payment")

    asyncio.run(go())


@pytest.mark.parametrize(
    "case", ["forged", "other_channel", "over_deposit", "too_small", "closed", "replayed"]
)
def test_bad_vouchers_are_refused_with_the_session_problem(tmp_path: Path, case: str) -> None:
    db = tmp_path / "ledger.sqlite3"

    async def go() -> tuple[int, dict[str, Any]]:
        k = key()
        cid = await prepaid(db, k, 1_000)
        async with gateway(tree(db, min_voucher_delta="$0.0001")) as g:
            status, headers, _ = await g.post(CHAT, chat())
            (ch,) = evm_challenges(headers)
            signer = key() if case == "forged" else k
            target = await prepaid(db, key(), 1_000, salt=2) if case == "other_channel" else cid
            client = SessionClient(signer, target, max_total=Decimal("1"), session=g.session)
            amount = {"over_deposit": 2_000, "too_small": 50}.get(case, 500)
            if case in ("closed", "replayed", "too_small"):
                ok = SessionClient(k, cid, max_total=Decimal("1"), session=g.session)
                assert (
                    await ok.voucher(g.url + CHAT, ch, 500 if case != "too_small" else 200) == 204
                )
                if case == "closed":
                    receipt = await ok.close(g.url + CHAT, ch)
                    assert receipt is not None and receipt["settled"] == "0"
                if case == "too_small":
                    amount = 250
            if case == "replayed":
                # The same voucher again: accepted, idempotent, buys nothing new.
                status = await client.voucher(g.url + CHAT, ch, 500)
                c = await channel(db, cid)
                return status, {"accepted": c.accepted}
            async with g.session.post(g.url + CHAT, headers=client.authorization(ch, amount)) as r:
                return r.status, orjson.loads(await r.read())

    status, problem = asyncio.run(go())
    expected = {
        "forged": (402, "signer-mismatch"),
        "other_channel": (402, "signer-mismatch"),
        "over_deposit": (402, "amount-exceeds-deposit"),
        "too_small": (402, "delta-too-small"),
        "closed": (410, "channel-finalized"),
    }
    if case == "replayed":
        assert (status, problem) == (204, {"accepted": 500})
        return
    assert status == expected[case][0]
    assert problem["type"] == "https://paymentauth.org/problems/session/" + expected[case][1]


def test_the_402_offers_both_session_profiles(tmp_path: Path) -> None:
    async def go() -> list[mpp.Challenge]:
        async with gateway(tree(tmp_path / "l.sqlite3")) as g:
            status, headers, _ = await g.post(CHAT, chat())
            assert status == 402
            return mpp.parse_challenges(headers.getall("WWW-Authenticate"))

    chs = asyncio.run(go())
    assert sorted((c.method, c.intent) for c in chs) == [("evm", "session"), ("tempo", "session")]
    req = chs[0].request_json
    assert req["amount"] == str(PRICE) and req["unitType"] == "llm_token"
    assert req["methodDetails"]["chainId"] == ASSET.chain_id


def test_the_client_refuses_to_sign_past_its_cap(tmp_path: Path) -> None:
    db = tmp_path / "ledger.sqlite3"

    async def go() -> None:
        k = key()
        cid = await prepaid(db, k, 10_000)
        async with gateway(tree(db)) as g:
            async with SessionClient(
                k, cid, max_total=Decimal("0.0002"), initial=PRICE * 10, session=g.session
            ) as client:
                with pytest.raises(SessionDeclined):
                    await client.stream(
                        "POST", g.url + CHAT, json=chat(), headers={"x-mock-length": "40"}
                    )

    asyncio.run(go())


@pytest.mark.parametrize("sdk", ["openai", "anthropic"])
def test_the_official_sdks_read_a_paused_and_resumed_stream(tmp_path: Path, sdk: str) -> None:
    """The SDK reads the stream as any other; the voucher comes from elsewhere meanwhile
    (another task of the paying side, as a wallet would send it)."""
    db = tmp_path / "ledger.sqlite3"
    path = CHAT if sdk == "openai" else "/v1/messages"

    async def go() -> tuple[str, int]:
        k = key()
        cid = await prepaid(db, k, 10_000)
        t = tree(db)
        t["routes"][f"POST {path}"] = t["routes"].pop(f"POST {CHAT}")
        async with gateway(t) as g:
            _, headers, _ = await g.post(path, {})
            ch = evm_challenges(headers)[0]
            client = SessionClient(k, cid, max_total=Decimal("0.01"), session=g.session)
            auth = client.authorization(ch, PRICE * 5)

            def read() -> str:
                if sdk == "openai":
                    import openai

                    oc = openai.OpenAI(base_url=g.url + "/v1", api_key="unused", max_retries=0)
                    stream = oc.chat.completions.create(
                        model="gpt-4o",
                        messages=[{"role": "user", "content": "hi"}],
                        stream=True,
                        extra_headers={**auth, "x-mock-length": "20", "x-mock-tps": "0"},
                    )
                    return "".join((c.choices[0].delta.content or "") for c in stream if c.choices)
                import anthropic

                with (
                    anthropic.Anthropic(base_url=g.url, api_key="unused", max_retries=0) as ac,
                    ac.messages.stream(
                        model="claude-sonnet-4-6",
                        max_tokens=100,
                        messages=[{"role": "user", "content": "hi"}],
                        extra_headers={**auth, "x-mock-length": "20", "x-mock-tps": "0"},
                    ) as s,
                ):
                    return "".join(s.text_stream)

            async def wallet() -> None:
                # Waits for the pause, then pays for the rest.
                for _ in range(200):
                    c = await channel(db, cid)
                    if c.spent >= PRICE * 5:
                        break
                    await asyncio.sleep(0.01)
                assert await client.voucher(g.url + path, ch, PRICE * 100) == 204

            text, _ = await asyncio.gather(asyncio.to_thread(read), wallet())
            return text, count_tokens(text, "gpt-4o")

    text, tokens = asyncio.run(go())
    assert tokens == 20 and text


def test_a_client_gone_while_paused_pays_up_to_the_last_event_it_was_sent(
    tmp_path: Path,
) -> None:
    db = tmp_path / "ledger.sqlite3"

    async def go() -> None:
        k = key()
        cid = await prepaid(db, k, 10_000)
        async with gateway(tree(db, voucher_timeout="30s")) as g:
            _, headers, _ = await g.post(CHAT, chat())
            ch = evm_challenges(headers)[0]
            client = SessionClient(k, cid, max_total=Decimal("0.01"), session=g.session)
            # Paced, so the upstream is still generating when the client leaves.
            h = {**client.authorization(ch, PRICE * 6), "x-mock-length": "400", "x-mock-tps": "100"}
            async with g.session.post(g.url + CHAT, json=chat(), headers=h) as r:
                body = b""
                async for chunk in r.content.iter_any():
                    body += chunk
                    if b"payment-need-voucher" in body:
                        break  # and leave while the stream waits for a voucher
            records = await g.records(2)
            (rec,) = [x for x in records if x.stream]
            assert rec.outcome == "client_cancelled"
            c = await channel(db, cid)
            delivered = count_tokens(delivered_text(body), "gpt-4o")
            assert delivered == 6
            assert (c.spent, c.units) == (6 * PRICE, 6)
            # The upstream was cut too (the mock sees its connection close).
            for _ in range(300):
                async with g.session.get(g.mock_url + "/_mock/stats") as s:
                    (stat,) = [x for x in (await s.json())["requests"] if x["stream"]]
                if not stat["client_open"]:
                    break
                await asyncio.sleep(0.01)
            assert stat["client_open"] is False

    asyncio.run(go())


def test_accepted_vouchers_survive_a_restart(tmp_path: Path) -> None:
    db = tmp_path / "ledger.sqlite3"

    async def go() -> None:
        k = key()
        cid = await prepaid(db, k, 10_000)
        async with gateway(tree(db)) as g:
            status, headers, _ = await g.post(CHAT, chat())
            ch = evm_challenges(headers)[0]
            client = SessionClient(k, cid, max_total=Decimal("0.01"), session=g.session)
            assert await client.voucher(g.url + CHAT, ch, PRICE * 50) == 204
        async with gateway(tree(db)) as g:
            status, headers, _ = await g.post(CHAT, chat())
            ch = evm_challenges(headers)[0]
            client = SessionClient(k, cid, max_total=Decimal("0.01"), session=g.session)
            # The same amount again buys nothing new, but the 50 tokens accepted before the
            # restart are still there to spend.
            h = {**client.authorization(ch, PRICE * 50), "x-mock-length": "30", "x-mock-tps": "0"}
            status, _, body = await g.post(CHAT, chat(), h)
            assert status == 200
            assert count_tokens(delivered_text(body), "gpt-4o") == 30
            assert b"payment-need-voucher" not in body

    asyncio.run(go())


def test_only_vouchers_that_buy_nothing_are_rate_limited(tmp_path: Path) -> None:
    db = tmp_path / "ledger.sqlite3"

    async def go() -> tuple[list[int], list[int]]:
        k = key()
        cid = await prepaid(db, k, 10_000)
        async with gateway(tree(db)) as g:
            _, headers, _ = await g.post(CHAT, chat())
            ch = evm_challenges(headers)[0]
            client = SessionClient(k, cid, max_total=Decimal("0.01"), session=g.session)
            rising = [await client.voucher(g.url + CHAT, ch, PRICE * (i + 1)) for i in range(25)]
            same = [await client.voucher(g.url + CHAT, ch, PRICE * 25) for _ in range(25)]
            return rising, same

    rising, same = asyncio.run(go())
    assert rising == [204] * 25  # each raises the total: never limited
    assert 429 in same and same[0] == 204


def test_a_budget_refusal_after_the_session_stage_charges_nothing(tmp_path: Path) -> None:
    db = tmp_path / "ledger.sqlite3"

    async def go() -> None:
        k = key()
        cid = await prepaid(db, k, 10_000)
        t = tree(db, prompt_price="$0.00001")
        t["budgets"] = {
            "b": {"key": {"header": "X-User"}, "tokens_per_day": 50, "max_completion_tokens": 100}
        }
        t["routes"][f"POST {CHAT}"]["budget"] = "b"
        async with gateway(t) as g:
            _, headers, _ = await g.post(CHAT, chat(), {"X-User": "u"})
            ch = evm_challenges(headers)[0]
            client = SessionClient(k, cid, max_total=Decimal("0.01"), session=g.session)
            status, _, problem = await g.post(
                CHAT, chat(), {**client.authorization(ch, PRICE * 200), "X-User": "u"}
            )
            assert status == 429, problem
            await g.records(2)
            c = await channel(db, cid)
            assert (c.accepted, c.spent, c.units) == (PRICE * 200, 0, 0)

    asyncio.run(go())

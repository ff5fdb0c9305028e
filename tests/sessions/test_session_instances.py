"""Several instances sharing one session store (SQLite file on one machine, PostgreSQL for
several): a voucher that lands on instance B resumes the stream paused on instance A, and
streams on two instances never spend the same credit. Two real gateways (in process, each
with its own mock LLM on loopback) behind a round-robin TCP relay, as behind a load
balancer."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from meterkit import count_tokens
from meterkit.client.session import SessionClient
from meterkit.config import config_from_dict
from meterkit.sessions import ChannelStore, make_store
from meterkit.sessions.channels import PREPAID_ESCROW, ZERO_ADDRESS, Channel, Draw
from meterkit.sessions.postgres import PostgresSessionStore
from meterkit.sessions.store import SessionStore
from support.http import texts
from support.inproc import Gateway, chat, gateway, llm_config
from support.payments import ASSET, PAY_TO, key, paid
from support.sessions import credit_prepaid, evm_challenges
from support.tcpproxy import relay

CHAT = "/v1/chat/completions"
PRICE = 10  # base units per completion token


def tree(ledger: dict[str, Any], timeout: str = "5s") -> dict[str, Any]:
    t = llm_config("{mock}")
    t["routes"] = {
        f"POST {CHAT}": {
            "upstream": "mock",
            "session": {"price": "$0.00001", "voucher_timeout": timeout},
        }
    }
    t = paid(t, "unused")
    t["ledger"] = ledger
    # One realm for both instances, whatever Host the balancer passes on.
    t["payments"] = {**t["payments"], "realm": "meterkit.test"}
    return t


@pytest.fixture(params=["sqlite", "postgres"])
def ledger(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, Any]:
    if request.param == "sqlite":
        return {"type": "sqlite", "path": str(tmp_path / "ledger.sqlite3")}
    url = request.getfixturevalue("postgres_url")
    return {"type": "postgres", "url": url, "schema": f"s_{uuid.uuid4().hex[:12]}"}


@asynccontextmanager
async def store_of(ledger: dict[str, Any]) -> AsyncIterator[ChannelStore]:
    t = tree(ledger)
    t["upstreams"]["mock"]["url"] = "http://127.0.0.1:9"
    store = make_store(config_from_dict(t).ledger)
    await store.open()
    try:
        yield store
    finally:
        await store.close()


async def prepaid(ledger: dict[str, Any], payer_key: bytes, deposit: int) -> str:
    async with store_of(ledger) as store:
        return await credit_prepaid(store, payer_key, deposit)


@asynccontextmanager
async def two_instances(
    ledger: dict[str, Any], timeout: str = "5s"
) -> AsyncIterator[tuple[Gateway, Gateway, str]]:
    async with AsyncExitStack() as stack:
        a = await stack.enter_async_context(gateway(tree(ledger, timeout)))
        b = await stack.enter_async_context(gateway(tree(ledger, timeout)))
        ports = [int(g.url.rsplit(":", 1)[1]) for g in (a, b)]
        lb = await stack.enter_async_context(relay("127.0.0.1", ports[0], ("127.0.0.1", ports[1])))
        yield a, b, f"http://127.0.0.1:{lb.port}"


def vouchers_taken(g: Gateway) -> float:
    return g.metric("meterkit_payments_total", route=f"POST {CHAT}", result="voucher", reason="evm")


def test_a_voucher_on_instance_b_resumes_the_stream_paused_on_instance_a(
    ledger: dict[str, Any],
) -> None:
    async def go() -> None:
        k = key()
        cid = await prepaid(ledger, k, 10_000)
        async with two_instances(ledger) as (a, b, url):
            async with (
                aiohttp.ClientSession() as http,
                SessionClient(
                    k, cid, max_total=Decimal("0.01"), initial=PRICE * 10, session=http
                ) as client,
            ):
                h = {"x-mock-length": "40", "x-mock-tps": "0"}
                result = await client.stream("POST", url + CHAT, json=chat(), headers=h)
            assert result.status == 200, result.problem
            tokens = count_tokens(texts("openai-chat", result.body), "gpt-4o")
            assert tokens == 40
            assert result.needs, "10 tokens were covered at first: the stream must pause"
            assert result.receipt is not None and result.receipt["units"] == tokens
            # The balancer alternated: the stream ran on one instance, and vouchers sent
            # while it was paused (on another connection) landed on the other one.
            streamed = [g for g in (a, b) if any(r.stream for r in g.sink.records)]
            assert len(streamed) == 1
            other = b if streamed[0] is a else a
            assert vouchers_taken(other) >= 1
            async with store_of(ledger) as store:
                c = await store.get(cid)
            assert c is not None and (c.spent, c.units) == (tokens * PRICE, tokens)

    asyncio.run(go())


def test_streams_on_two_instances_never_spend_the_same_credit(ledger: dict[str, Any]) -> None:
    """30 tokens of vouchers, two 40-token streams at once on two instances, no more vouchers:
    together they deliver at most 30 tokens, and the channel's spent is exactly what was
    delivered (with per-process reservations each instance would have sold the same 30)."""

    async def go() -> None:
        k = key()
        cid = await prepaid(ledger, k, 10_000)
        async with two_instances(ledger, timeout="1s") as (_a, _b, url):
            async with (
                aiohttp.ClientSession() as http,
                SessionClient(k, cid, max_total=Decimal("0.01"), session=http) as client,
            ):
                async with http.post(url + CHAT, json=chat()) as r:
                    assert r.status == 402
                    ch = evm_challenges(r.headers)[0]
                auth = client.authorization(ch, 30 * PRICE)

                async def one() -> str:
                    # Fresh connections: the balancer sends them to A and B in turn.
                    async with (
                        aiohttp.ClientSession() as own,
                        own.post(
                            url + CHAT,
                            json=chat(),
                            headers={**auth, "x-mock-length": "40", "x-mock-tps": "0"},
                        ) as resp,
                    ):
                        body = await resp.read()
                        return texts("openai-chat", body) if resp.status == 200 else ""

                bodies = await asyncio.gather(one(), one())
            delivered = sum(count_tokens(t, "gpt-4o") for t in bodies)
            assert 0 < delivered <= 30
            async with store_of(ledger) as store:
                c = await store.get(cid)
            assert c is not None
            assert c.spent == delivered * PRICE <= c.accepted == 30 * PRICE

    asyncio.run(go())


def test_postgres_tells_every_instance_of_an_accepted_voucher(postgres_url: str) -> None:
    async def go() -> None:
        schema = f"s_{uuid.uuid4().hex[:12]}"
        a, b = (
            PostgresSessionStore(postgres_url, schema),
            PostgresSessionStore(postgres_url, schema),
        )
        await a.open()
        await b.open()
        try:
            heard: asyncio.Queue[str] = asyncio.Queue()
            b.on_voucher(heard.put_nowait)
            cid = "0x" + "ab" * 32
            await a.credit(
                Channel(cid, PAY_TO, PAY_TO, ASSET.address, ZERO_ADDRESS, 1, PREPAID_ESCROW, 0),
                1000,
            )
            # The listener connects in the background: accept until it is heard.
            for amount in range(100, 1000, 100):
                assert await a.accept(cid, amount, "0x")
                try:
                    async with asyncio.timeout(1):
                        assert await heard.get() == cid
                    break
                except TimeoutError:
                    continue
            else:
                pytest.fail("instance B never heard of the vouchers instance A accepted")
            # Not accepted (not above the total): nobody is told.
            assert not await a.accept(cid, 100, "0x")
            assert heard.empty()
        finally:
            await a.close()
            await b.close()

    asyncio.run(go())


def test_sqlite_polling_sees_only_other_processes_writes(tmp_path: Path) -> None:
    async def go() -> None:
        db = tmp_path / "l.db"
        a, b = SessionStore(db), SessionStore(db)
        await a.open()
        await b.open()
        try:
            cid = "0x" + "cd" * 32
            await a.credit(
                Channel(cid, PAY_TO, PAY_TO, ASSET.address, ZERO_ADDRESS, 1, PREPAID_ESCROW, 0),
                1000,
            )
            assert await b.accepted([cid], force=True) == {cid: 0}
            assert await b.accepted([cid]) == {}  # nothing changed since
            await b.accept(cid, 100, "0x")
            assert await b.accepted([cid]) == {}  # its own write
            await a.accept(cid, 200, "0x")
            assert await b.accepted([cid]) == {cid: 200}
        finally:
            await a.close()
            await b.close()

    asyncio.run(go())


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_holds_are_shared_expire_and_go_with_the_channel(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    async def go() -> None:
        if kind == "sqlite":
            store: ChannelStore = SessionStore(tmp_path / "l.db")
        else:
            url = request.getfixturevalue("postgres_url")
            store = PostgresSessionStore(url, f"s_{uuid.uuid4().hex[:12]}")
        await store.open()
        try:
            cid = "0x" + "ef" * 32
            await store.credit(
                Channel(cid, PAY_TO, PAY_TO, ASSET.address, ZERO_ADDRESS, 1, PREPAID_ESCROW, 0),
                10**30,
            )
            big = 2**100  # uint128 amounts survive both stores
            assert await store.accept(cid, big, "0x")
            want = Draw(PRICE, want=big, ttl=60)
            first = await store.draw(cid, "one", want, now=1000.0)
            assert first is not None and first.granted == big // PRICE * PRICE
            # The second stream finds everything held by the first...
            second = await store.draw(cid, "two", want, now=1001.0)
            assert second is not None and second.granted == 0 and second.others == first.held
            # ...until the first's lease ends without renewal (its process died).
            third = await store.draw(cid, "two", want, now=1061.0)
            assert third is not None and third.granted == first.granted
            # Delivered tokens move from the hold into spent; a release frees the rest.
            done = await store.draw(
                cid, "two", Draw(PRICE, charge=5 * PRICE, units=5, release=True), now=1062.0
            )
            assert done is not None and done.held == 0
            assert (done.channel.spent, done.channel.units) == (5 * PRICE, 5)
            back = await store.draw(cid, "one", want, now=1063.0)
            assert back is not None and back.granted == (big - 5 * PRICE) // PRICE * PRICE
            await store.finalize(cid, 5 * PRICE)
            closed = await store.draw(cid, "one", want, now=1064.0)
            assert closed is not None and closed.granted == 0 and closed.held == 0
        finally:
            await store.close()

    asyncio.run(go())

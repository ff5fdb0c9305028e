"""Features that compose on one route (issue 18), in process: the proxy app and the mock LLM
on loopback, one-time payments queued in a SQLite ledger, per-token payments from prepaid
channels in the session store, budgets in memory.

First the seven defects found where two features met, each reproduced as it was reported;
then every pair of route features on one route (and keys + budget + session together),
each asserting the refusal order, one record per request carrying each feature's
accounting, budgets kept, hooks fired, and shadow changing nothing on the wire. Budget ×
session across two instances sharing Redis and PostgreSQL is test_composition_shared.py.
"""

from __future__ import annotations

import asyncio
import itertools
import sqlite3
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest

from meterkit import count_request_prompt, count_tokens
from meterkit.budgets import MemoryBackend
from meterkit.budgets.registry import key_sha256
from meterkit.client import PayingClient
from meterkit.client.session import SessionClient
from meterkit.config import ConfigError, config_from_dict
from meterkit.payments import access, mpp
from meterkit.sessions.store import SessionStore
from support import hook_log
from support.http import texts
from support.inproc import Gateway, chat, gateway, llm_config
from support.payments import SECRET, key, paid
from support.sessions import credit_prepaid, evm_challenges

CHAT = "/v1/chat/completions"
ROUTE = f"POST {CHAT}"
ALICE = "sk-alice-0123456789"
# Session: $0.00001 a completion token = 10 base units (6 decimals); prompts free.
SESSION_PRICE = 10
# Token-based: $10 / $20 per million = 10 / 20 base units per prompt / completion token.
RATES = {"default": {"input": "$10", "output": "$20", "per": 1_000_000}}
IN_RATE, OUT_RATE = 10, 20


def route_tree(db: Path, feats: set[str], **budget: Any) -> dict[str, Any]:
    """One route with the named features: keys, budget, shadow, payer_budget, price,
    token_price, session, access, hooks."""
    t = llm_config("{mock}")
    r: dict[str, Any] = {"upstream": "mock"}
    if "keys" in feats:
        t["keys"] = {"entries": {"alice": {"sha256": key_sha256(ALICE)}}}
        r["keys"] = "required"
    policy: dict[str, Any] = {
        "key": "ip",
        "tokens_per_day": 100_000,
        "max_completion_tokens": 40,
        **budget,
    }
    if "shadow" in feats:
        policy["mode"] = "shadow"
    if "payer_budget" in feats:
        policy["key"] = "payer"
    if feats & {"budget", "shadow", "payer_budget"}:
        t["budgets"] = {"b": policy}
        r["budget"] = "b"
    if "price" in feats:
        r["price"] = "$0.001"
    if "token_price" in feats:
        r["type"] = "token-based"
        r["rates"] = RATES
    if "session" in feats:
        r["session"] = {"price": "$0.00001", "voucher_timeout": "2s"}
    if "access" in feats:
        r["access"] = {"require": True}
    if "hooks" in feats:
        r["hooks"] = dict(hook_log.HOOKS)
    t["routes"] = {ROUTE: r}
    return paid(t, str(db))


async def prepaid(db: Path, payer: bytes, deposit: int = 1_000_000, salt: int = 1) -> str:
    store = SessionStore(db)
    await store.open()
    try:
        return await credit_prepaid(store, payer, deposit, salt)
    finally:
        await store.close()


async def spent(db: Path, cid: str) -> int:
    store = SessionStore(db)
    await store.open()
    try:
        c = await store.get(cid)
        assert c is not None
        return c.spent
    finally:
        await store.close()


def claims(db: Path) -> list[tuple[str, str]]:
    with sqlite3.connect(db) as conn:
        return list(conn.execute("SELECT status, amount FROM payment_claims"))


def mock_headers(length: int = 30, **extra: str) -> dict[str, str]:
    return {"x-mock-length": str(length), "x-mock-tps": "0", **extra}


async def upstream_bodies(g: Gateway) -> list[dict[str, Any]]:
    async with g.session.get(g.mock_url + "/_mock/stats") as r:
        return [s["body_fields"] for s in (await r.json())["requests"]]


async def session_stream(
    g: Gateway,
    db: Path,
    payer: bytes,
    headers: dict[str, str],
    body: dict[str, Any] | None = None,
    initial_tokens: int = 10,
    salt: int = 1,
) -> tuple[Any, str]:
    cid = await prepaid(db, payer, salt=salt)
    async with SessionClient(
        payer,
        cid,
        max_total=Decimal("1"),
        initial=SESSION_PRICE * initial_tokens,
        session=g.session,
    ) as client:
        result = await client.stream("POST", g.url + CHAT, json=body or chat(), headers=headers)
    return result, cid


async def pay_once(url: str, headers: dict[str, str], body: dict[str, Any] | None = None) -> Any:
    async with PayingClient(key(), max_total=Decimal("1")) as client:
        return await client.request("POST", url + CHAT, json=body or chat(), headers=headers)


async def served(g: Gateway, count: int, timeout: float = 10) -> list[Any]:
    """The records of served streams (status 200), once `count` of them are written."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        out = [r for r in g.sink.records if r.status == 200 and r.stream]
        if len(out) >= count or loop.time() > deadline:
            return out
        await asyncio.sleep(0.01)


def delivered(body: bytes) -> int:
    return count_tokens(texts("openai-chat", body), "gpt-4o")


# ---- the seven reproduced defects ----------------------------------------------------------


def test_1_session_streams_on_a_shared_budget_stay_within_it(tmp_path: Path) -> None:
    """Before: 631 (and 850) tokens delivered against a budget of 500, because the session's
    credit replaced the budget's lease. Now both gates apply and the stream stops at the
    smaller."""
    db = tmp_path / "ledger.sqlite3"
    budget = 500

    async def go() -> None:
        tree = route_tree(
            db, {"budget", "session"}, tokens_per_day=budget, max_completion_tokens=150
        )
        tree["budgets"]["b"]["streaming"] = {"buffer_tokens": 20}
        backend = MemoryBackend()
        async with gateway(tree, budget_backend=backend) as g:
            h = mock_headers(300, **{"x-mock-ignore-max": "1"})
            results = await asyncio.gather(
                *(
                    session_stream(g, db, key(), h, chat(max_tokens=150), 40, salt=i)
                    for i in range(10)
                )
            )
            await asyncio.sleep(0.2)
            records = await served(g, 1)
            used = sum((r.prompt_tokens or 0) + (r.completion_tokens or 0) for r in records)
            assert records and used <= budget * 1.05, used
            assert used == sum(d.used for d in backend.days.values())
            assert not backend.reservations
            for result, cid in results:
                if result.status != 200:
                    assert result.status == 429
                    continue
                # The payer pays exactly what reached it, whichever gate stopped the stream.
                assert result.receipt is not None
                tokens = delivered(result.body)
                assert int(result.receipt["spent"]) == tokens * SESSION_PRICE
                assert await spent(db, cid) == tokens * SESSION_PRICE
            assert any(r.truncation == "budget" for r in records)

    asyncio.run(go())


def test_2a_a_token_based_quote_prices_the_budgets_cap_not_the_requests(tmp_path: Path) -> None:
    """Before: cap 50, max_tokens 150: paid for 150 completion tokens, got 50."""
    db = tmp_path / "ledger.sqlite3"

    async def go() -> None:
        tree = route_tree(db, {"budget", "token_price"}, max_completion_tokens=50)
        body = chat(max_tokens=150)
        prompt = count_request_prompt(body, "openai-chat", "gpt-4o")
        async with gateway(tree) as g:
            status, headers, _ = await g.post(CHAT, body)
            assert status == 402
            (ch,) = mpp.parse_challenges(headers.getall("WWW-Authenticate"))
            assert int(ch.request_json["amount"]) == prompt * IN_RATE + 50 * OUT_RATE
            h = mock_headers(150, **{"x-mock-ignore-max": "1"})
            result = await pay_once(g.url, h, body)
            assert result.status == 200
            assert delivered(result.body) == 50
            (record,) = await served(g, 1)
            assert record.payment is not None
            assert record.payment["quote"]["max_completion_tokens"] == 50
            assert record.payment["amount"] == str(prompt * IN_RATE + 50 * OUT_RATE)
            # The upstream was asked for what was paid for, no more.
            assert (await upstream_bodies(g))[-1]["max_tokens"] == 50

    asyncio.run(go())


def test_2b_paid_streams_on_a_shared_budget_get_what_they_paid_or_pay_nothing(
    tmp_path: Path,
) -> None:
    """Before: five paid streams each paid the full quote; the budget cut them at 100–121
    tokens. Now each paid stream is reserved whole before its claim, or refused (429) with
    nothing claimed."""
    db = tmp_path / "ledger.sqlite3"
    body = chat(max_tokens=300)
    prompt = count_request_prompt(body, "openai-chat", "gpt-4o")

    async def go() -> None:
        tree = route_tree(
            db,
            {"budget", "token_price"},
            # Room for three whole streams; the budget leases 100 tokens at a time.
            tokens_per_day=3 * (prompt + 300) + 50,
            max_completion_tokens=300,
        )
        async with gateway(tree) as g:
            h = mock_headers(400, **{"x-mock-ignore-max": "1"})
            results = await asyncio.gather(*(pay_once(g.url, h, body) for _ in range(5)))
            statuses = sorted(r.status for r in results)
            assert statuses == [200, 200, 200, 429, 429]
            for r in results:
                if r.status == 200:
                    assert delivered(r.body) == 300
                else:
                    assert r.paid is None
            queued = [c for c in claims(db) if c[0] in ("queued", "settled")]
            assert len(queued) == 3
            assert {int(a) for _, a in queued} == {prompt * IN_RATE + 300 * OUT_RATE}
            records = await served(g, 3)
            assert all(r.truncation in (None, "limit") for r in records)

    asyncio.run(go())


def test_3_a_payer_keyed_budget_admits_session_requests_by_the_channels_payer(
    tmp_path: Path,
) -> None:
    db = tmp_path / "ledger.sqlite3"

    async def go() -> None:
        tree = route_tree(db, {"payer_budget", "session"}, tokens_per_day=10_000)
        async with gateway(tree) as g:
            alice, bob = key(), key()
            r1, _ = await session_stream(g, db, alice, mock_headers(20), salt=1)
            # Another channel of the same payer: the same budget.
            r2, _ = await session_stream(g, db, alice, mock_headers(20), salt=2)
            r3, _ = await session_stream(g, db, bob, mock_headers(20), salt=3)
            assert [r.status for r in (r1, r2, r3)] == [200, 200, 200]
            records = await served(g, 3)
            assert len(records) == 3
            keys = [r.budget["key"] for r in records if r.budget]
            assert len(keys) == 3 and keys[0] == keys[1] != keys[2]

    asyncio.run(go())


@pytest.mark.parametrize("where", ["x-api-key", "payment-authorization"])
def test_4_vouchers_need_no_api_key_the_stream_request_does(tmp_path: Path, where: str) -> None:
    """Before: on a `keys: required` route every voucher POST got 401 and streams stopped at
    the first need-voucher. A voucher is authenticated by its signature and channel; the key
    belongs to the stream request (as `x-api-key`, or as `Authorization: Bearer` beside a
    voucher in `Payment-Authorization`)."""
    db = tmp_path / "ledger.sqlite3"

    async def go() -> None:
        tree = route_tree(db, {"keys", "session"})
        if where == "payment-authorization":
            tree["routes"][ROUTE]["credential_header"] = "Payment-Authorization"
            own = {"Authorization": f"Bearer {ALICE}"}
        else:
            own = {"x-api-key": ALICE}
        async with gateway(tree) as g:
            # Without the key the stream request is refused before anything else.
            status, _, body = await g.post(CHAT, chat(), mock_headers(40))
            assert (status, orjson.loads(body)["type"].rsplit("/", 1)[-1]) == (
                401,
                "api-key-missing",
            )
            result, cid = await session_stream(g, db, key(), {**mock_headers(40), **own})
            assert result.status == 200, result.problem
            assert len(result.needs) >= 2
            assert delivered(result.body) == 40
            assert result.receipt is not None and result.receipt["spent"] == str(40 * 10)
            assert await spent(db, cid) == 40 * SESSION_PRICE

    asyncio.run(go())


def test_5_a_shadow_budget_changes_nothing_on_the_wire(tmp_path: Path) -> None:
    db = tmp_path / "ledger.sqlite3"

    async def go() -> None:
        tree = route_tree(db, {"shadow"}, max_completion_tokens=20)
        async with gateway(tree) as g:
            status, _, body = await g.post(CHAT, chat(), mock_headers(60))
            assert status == 200
            assert delivered(body) == 60
            (seen,) = await upstream_bodies(g)
            assert seen == {}  # no max_tokens, no stream_options: the client's body
            (record,) = await g.records(1)
            assert (record.outcome, record.truncation) == ("completed", None)
            assert record.would_truncate_at == 20
            assert record.completion_tokens == 60

    asyncio.run(go())


def test_6_hooks_fire_on_session_routes(tmp_path: Path) -> None:
    db = tmp_path / "ledger.sqlite3"
    hook_log.CALLS.clear()

    async def go() -> None:
        tree = route_tree(db, {"session", "hooks"})
        async with gateway(tree) as g:
            result, _ = await session_stream(g, db, key(), mock_headers(40))
            assert result.status == 200 and len(result.vouchers) >= 2
            names = hook_log.names()
            # The 402, the paid stream, and every voucher POST.
            assert names.count("onRequest") == 2 + len(result.vouchers)
            settled = [c for c in hook_log.CALLS if c[0] == "onSettled"]
            assert len(settled) == 1
            assert settled[0][3]["amount"] == str(40 * SESSION_PRICE)
            assert "onResponse" in names
            # A refused voucher is an error the operator hears of.
            status, headers, _ = await g.post(CHAT, chat())
            (ch, *_) = evm_challenges(headers)
            forged = SessionClient(key(), "0x" + "ab" * 32, max_total=Decimal("1"))
            status, _, _ = await g.post("/v1/chat/completions", None, forged.authorization(ch, 50))
            assert status in (402, 410)
            errors = [c for c in hook_log.CALLS if c[0] == "onError"]
            assert len(errors) == 1

    asyncio.run(go())


def test_7_a_priced_session_route_records_both_kinds_of_revenue(tmp_path: Path) -> None:
    db = tmp_path / "ledger.sqlite3"

    async def go() -> None:
        tree = route_tree(db, {"price", "session"})
        async with gateway(tree) as g:
            once = await pay_once(g.url, mock_headers(10))
            assert once.status == 200 and once.paid is not None
            result, _ = await session_stream(g, db, key(), mock_headers(20))
            assert result.status == 200 and result.receipt is not None
            records = await served(g, 2)
            assert len(records) == 2
            by_protocol = {r.payment["protocol"]: r.payment for r in records if r.payment}
            assert set(by_protocol) == {"mpp", "mpp-session-evm"}
            assert by_protocol["mpp"]["amount"] == str(1000)
            session = by_protocol["mpp-session-evm"]
            assert session["amount"] == result.receipt["spent"] == str(20 * SESSION_PRICE)
            assert session["payer"] and session["asset"]

    asyncio.run(go())


# ---- every pair of features on one route --------------------------------------------------

FEATURES = (
    "keys",
    "budget",
    "shadow",
    "payer_budget",
    "price",
    "token_price",
    "session",
    "access",
    "hooks",
)
# A route has one budget and one one-time price.
EXCLUSIVE = [{"budget", "shadow", "payer_budget"}, {"price", "token_price"}]


def _pairs() -> list[tuple[str, ...]]:
    out: list[tuple[str, ...]] = [
        p
        for p in itertools.combinations(FEATURES, 2)
        if not any(len(set(p) & e) > 1 for e in EXCLUSIVE)
    ]
    out.append(("keys", "budget", "session"))
    out.append(("keys", "budget", "token_price", "hooks"))
    return out


def _first_refusal(feats: set[str]) -> tuple[int, str] | None:
    """What a request carrying nothing (no key, token or payment) gets first."""
    if "keys" in feats:
        return 401, "api-key-missing"
    if "access" in feats:
        return 401, "access-token-required"
    if feats & {"price", "token_price", "session"}:
        return 402, "payment-required"
    return None


@pytest.mark.parametrize("features", _pairs(), ids=lambda p: "+".join(p))
def test_pairs_of_features_compose_on_one_route(tmp_path: Path, features: tuple[str, ...]) -> None:
    feats = set(features)
    db = tmp_path / "ledger.sqlite3"
    tree = route_tree(db, feats)
    if "payer_budget" in feats and not feats & {"price", "token_price", "session"}:
        # A budget keyed by a payer on a route nothing pays: refused at load, naming the key.
        with pytest.raises(ConfigError, match="keyed by the payer"):
            config_from_dict(tree)
        return
    hook_log.CALLS.clear()

    async def go() -> None:
        backend = MemoryBackend()
        async with gateway(tree, budget_backend=backend) as g:
            h = mock_headers(30)
            # 1. The refusal order, for a request that carries nothing.
            status, _, body = await g.post(CHAT, chat(), h)
            expected = _first_refusal(feats)
            if expected is not None:
                assert status == expected[0], body
                assert orjson.loads(body)["type"].endswith("/" + expected[1]), body
            else:
                assert status == 200
            # 2. A request that satisfies every feature.
            if "keys" in feats:
                h["x-api-key"] = ALICE
            if "access" in feats:
                token, _ = access.mint(SECRET.encode(), scope="default", ttl=60, subject="t")
                h[access.HEADER] = token
            cid = None
            if "session" in feats:
                result, cid = await session_stream(g, db, key(), h)
                status, out = result.status, result.body
                assert result.receipt is not None
            elif feats & {"price", "token_price"}:
                paid_result = await pay_once(g.url, h)
                status, out = paid_result.status, paid_result.body
                assert paid_result.paid is not None
            else:
                status, _, out = await g.post(CHAT, chat(), h)
            assert status == 200, out
            tokens = delivered(out)
            # 3. One record per request that reached the gateway; the served one carries
            # every feature's accounting.
            # The last served stream (a route nothing gates served the first request too).
            served_record = (await served(g, 1 if expected is not None else 2))[-1]
            assert served_record.completion_tokens == tokens == 30
            if feats & {"budget", "payer_budget"}:
                assert served_record.budget is not None and served_record.budget["reserved"]
                assert served_record.budget["actual"] == (served_record.prompt_tokens or 0) + tokens
                every = await served(g, 1 if expected is not None else 2)
                assert sum(d.used for d in backend.days.values()) == sum(
                    r.budget["actual"] for r in every if r.budget
                )
                assert not backend.reservations
            if "shadow" in feats:
                # Shadow still accounts (reserves and reconciles); it never refuses, cuts or
                # rewrites: the upstream got the client's body (plus a paid cap, if any).
                assert served_record.budget is not None
                assert served_record.budget["actual"] == (served_record.prompt_tokens or 0) + 30
                seen = (await upstream_bodies(g))[-1]
                assert "stream_options" not in seen
                capped = "max_tokens" in seen or "max_completion_tokens" in seen
                assert capped == ("token_price" in feats)
            if cid is not None:
                assert served_record.payment is not None
                assert served_record.payment["amount"] == str(tokens * SESSION_PRICE)
                assert await spent(db, cid) == tokens * SESSION_PRICE
            elif feats & {"price", "token_price"}:
                assert served_record.payment is not None and served_record.payment["settled"]
                assert served_record.payment["payer"]
            if "hooks" in feats:
                names = hook_log.names()
                # A key's 401 comes before the operator's code; any other request reaches it.
                assert names.count("onRequest") >= (1 if "keys" in feats else 2)
                assert ("onSettled" in names) == bool(feats & {"price", "token_price", "session"})
                assert "onResponse" in names

    asyncio.run(go())


def test_a_request_the_budget_refuses_charges_no_payer(tmp_path: Path) -> None:
    """A one-time payment and a session on a route whose budget has nothing left: 429, no
    claim settled, no session charge."""
    db = tmp_path / "ledger.sqlite3"

    async def go() -> None:
        tree = route_tree(db, {"budget", "price", "session"}, tokens_per_day=5)
        async with gateway(tree) as g:
            once = await pay_once(g.url, mock_headers(10))
            assert once.status == 429 and once.paid is None
            assert not [c for c in claims(db) if c[0] in ("queued", "settled")]
            result, cid = await session_stream(g, db, key(), mock_headers(10))
            assert result.status == 429
            assert await spent(db, cid) == 0

    asyncio.run(go())


@pytest.mark.parametrize(
    ("route", "where", "words"),
    [
        (
            {"format": "none", "session": {"price": "$0.00001"}},
            "session",
            "per-token payment needs an LLM stream format",
        ),
        (
            {"format": "none", "type": "token-based", "rates": RATES},
            "type",
            "token-based price needs an LLM request format",
        ),
        ({"budget": "payer"}, "budget", "keyed by the payer, and nothing pays on this route"),
    ],
    ids=["session-on-a-plain-route", "token-price-on-a-plain-route", "payer-budget-unpaid"],
)
def test_combinations_that_cannot_be_honoured_are_refused_at_load(
    tmp_path: Path, route: dict[str, Any], where: str, words: str
) -> None:
    tree = route_tree(tmp_path / "l.sqlite3", set())
    tree["budgets"] = {"payer": {"key": "payer", "tokens_per_day": 1000}}
    tree["routes"] = {"POST /x": {"upstream": "mock", **route}}
    tree["upstreams"]["mock"]["url"] = "http://127.0.0.1:9"
    with pytest.raises(ConfigError) as e:
        config_from_dict(tree)
    (problem,) = [str(p) for p in e.value.problems]
    assert problem.startswith(f'routes."POST /x".{where}: ') and words in problem


@pytest.mark.parametrize("missing", ["payments", "accepts"])
def test_a_session_route_that_cannot_be_paid_is_refused_at_load(
    tmp_path: Path, missing: str
) -> None:
    """Issue 20 #4: without a secret or anything to accept, a session route validated and
    served 402s with no challenge at all."""
    tree = route_tree(tmp_path / "l.sqlite3", {"session"})
    tree["upstreams"]["mock"]["url"] = "http://127.0.0.1:9"
    del tree[missing]
    tree.pop("wallets", None)
    with pytest.raises(ConfigError) as e:
        config_from_dict(tree)
    text = " ".join(str(p) for p in e.value.problems)
    where = "payments.secret" if missing == "payments" else "accepts"
    assert f"{where}: required: route 'POST /v1/chat/completions' is paid per token" in text

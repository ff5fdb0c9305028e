"""Paid routes end to end: `meterkit serve` with priced routes, `meterkit mock-llm` and
`meterkit mock-facilitator` as separate processes; paid by meterkit's own client and by the
`pympp` and `x402` clients from PyPI; the ledger read back from its SQLite file or
PostgreSQL."""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import json
import random
import sqlite3
import time
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from meterkit import _core, count_chat_prompt
from meterkit.client import PayingClient
from meterkit.payments import evm, mpp
from support.http import request
from support.payments import ASSET, CHAT, PAY_TO, SECRET, challenge_for, credential, key, pay
from support.processes import Process, running


@pytest.fixture(scope="module")
def facilitator() -> Any:
    with running(["mock-facilitator", "--port", "0"]) as p:
        yield p


def set_mode(facilitator: Process, mode: str) -> None:
    request(facilitator.url, "POST", "/_facilitator/mode", {"settle": mode})


def settlements(facilitator: Process) -> list[dict[str, Any]]:
    return list(
        orjson.loads(request(facilitator.url, "GET", "/_facilitator/settlements")[2])["settlements"]
    )


def paid_config(mock_url: str, facilitator_url: str, ledger: dict[str, Any]) -> dict[str, Any]:
    def route(path: str, **kw: Any) -> dict[str, Any]:
        return {"upstream": "mock", "path": path, **kw}

    return {
        "wallets": {"base-sepolia": PAY_TO},
        "accepts": [{"asset": "USDC", "network": "base-sepolia"}],
        "payments": {
            "secret": SECRET,
            "settlement": {"type": "facilitator", "url": facilitator_url, "timeout": 2},
        },
        "ledger": ledger,
        "upstreams": {
            "mock": {"url": mock_url, "timeout": {"connect": 2, "first_byte": 3, "idle": 5}}
        },
        "routes": {
            "POST /v1/chat/completions": {
                "upstream": "mock",
                "price": "$0.01",
                "description": "chat",
            },
            "POST /after/chat": route(
                "/v1/chat/completions", price="$0.02", settlement="after-response"
            ),
            "POST /quote/chat": route(
                "/v1/chat/completions",
                type="token-based",
                rates={"gpt-4o": {"input": "$2.50", "output": "$10.00"}},
            ),
            "POST /session/start": route(
                "/v1/chat/completions",
                price="$0.25",
                access={"mint": {"ttl": 3600, "scope": "session"}},
            ),
            "POST /session/chat": route(
                "/v1/chat/completions", access={"require": True, "scope": "session"}
            ),
            "GET /v1/models": {"upstream": "mock", "format": "none"},
        },
        "logging": {"level": "warning"},
    }


def start(
    mock_url: str, facilitator_url: str, d: Path, ledger: dict[str, Any] | None = None
) -> Any:
    tree = paid_config(
        mock_url, facilitator_url, ledger or {"type": "sqlite", "path": str(d / "ledger.sqlite3")}
    )
    (d / "c.yaml").write_text(yaml.safe_dump(tree))
    return running(["serve", "--config", str(d / "c.yaml"), "--port", "0"], cwd=d)


@pytest.fixture(scope="module")
def gateway(
    mock_llm: Process, facilitator: Process, tmp_path_factory: pytest.TempPathFactory
) -> Any:
    d = tmp_path_factory.mktemp("paid")
    with start(mock_llm.url, facilitator.url, d) as p:
        p.db = d / "ledger.sqlite3"
        yield p


def claims(db: Path) -> list[dict[str, Any]]:
    with sqlite3.connect(db) as c:
        c.row_factory = sqlite3.Row
        return [dict(r) for r in c.execute("SELECT * FROM payment_claims")]


# ---- the 402 ---------------------------------------------------------------------------------


def test_one_402_offers_every_way_to_pay(gateway: Process) -> None:
    status, headers, body = request(gateway.url, "POST", "/v1/chat/completions", CHAT)
    assert status == 402 and headers["Cache-Control"] == "no-store"
    (ch,) = mpp.parse_challenges(headers.get_all("WWW-Authenticate"))
    assert (ch.method, ch.intent, ch.realm) == ("evm", "charge", "127.0.0.1")
    assert ch.request_json == {
        "amount": "10000",
        "currency": ASSET.address,
        "recipient": _core.checksum_address(PAY_TO),
        "methodDetails": {"chainId": 84532, "credentialTypes": ["authorization"], "decimals": 6},
        # The request it is for, bound by the challenge id (the member pympp servers use).
        "_mppx_scope": {
            "http_method": "POST",
            "route": "/v1/chat/completions",
            "resource": "/v1/chat/completions",
        },
    }
    assert ch.bound(SECRET.encode()) and ch.digest == mpp.body_digest(orjson.dumps(CHAT))
    v2 = orjson.loads(base64.b64decode(headers["PAYMENT-REQUIRED"]))
    assert v2["x402Version"] == 2 and v2["accepts"][0]["amount"] == "10000"
    assert v2["accepts"][0]["network"] == "eip155:84532"
    v1 = orjson.loads(body)
    assert v1["x402Version"] == 1 and v1["accepts"][0]["maxAmountRequired"] == "10000"
    assert v1["accepts"][0]["network"] == "base-sepolia"
    assert v1["type"] == "https://paymentauth.org/problems/payment-required"


# ---- paying ----------------------------------------------------------------------------------


def test_meterkit_client_pays_and_the_ledger_holds_it(
    gateway: Process, facilitator: Process
) -> None:
    before = len(settlements(facilitator))
    k = key()
    result = pay(gateway.url, "/v1/chat/completions", secret_key=k, max_per_request=Decimal("0.05"))
    assert result.status == 200, result.body
    assert result.receipt["status"] == "success" and result.receipt["reference"].startswith("0x")
    assert result.headers["Cache-Control"] == "private"
    assert len(settlements(facilitator)) == before + 1
    (row,) = [c for c in claims(gateway.db) if c["reference"] == result.receipt["reference"]]
    assert (
        row["status"] == "settled"
        and row["payer"] == _core.address_of(k)
        and row["amount"] == "10000"
    )
    with sqlite3.connect(gateway.db) as c:
        stored = c.execute(
            "SELECT receipt_json FROM receipts WHERE claim_key = ?", (row["claim_key"],)
        ).fetchone()
        assert orjson.loads(stored[0])["reference"] == row["reference"]


def test_caps_and_dry_run_pay_nothing(gateway: Process, facilitator: Process) -> None:
    from meterkit.client import PaymentDeclined

    before = len(settlements(facilitator))
    with pytest.raises(PaymentDeclined, match="per-request cap"):
        pay(gateway.url, "/v1/chat/completions", max_per_request=Decimal("0.001"))
    result = pay(gateway.url, "/v1/chat/completions", dry_run=True)
    assert result.status == 402 and result.offers[0].price == Decimal("0.01")
    assert len(settlements(facilitator)) == before


def test_replays_and_bad_payments_are_refused_and_never_recorded(
    gateway: Process, facilitator: Process
) -> None:
    k = key()
    ch = challenge_for(gateway)
    good = credential(ch, k)
    status, headers, _ = request(
        gateway.url, "POST", "/v1/chat/completions", CHAT, {"Authorization": f"Payment {good}"}
    )
    assert status == 200 and "Payment-Receipt" in headers
    count = len(settlements(facilitator))
    status, _, body = request(
        gateway.url, "POST", "/v1/chat/completions", CHAT, {"Authorization": f"Payment {good}"}
    )
    assert status == 403 and "already" in orjson.loads(body)["detail"]

    def refused(token: str, code: str) -> None:
        status, headers, body = request(
            gateway.url, "POST", "/v1/chat/completions", CHAT, {"Authorization": f"Payment {token}"}
        )
        problem = orjson.loads(body)
        assert (status, problem["type"].rsplit("/", 1)[1]) == (402, code), problem
        assert "WWW-Authenticate" in headers  # a fresh challenge to pay properly

    refused(credential(challenge_for(gateway), k, value=9999), "payment-insufficient")
    refused(credential(challenge_for(gateway), k, to="0x" + "33" * 20), "verification-failed")
    ch = challenge_for(gateway)
    other = credential(ch, key())
    forged = json.loads(mpp.b64url_decode(other))
    forged["payload"]["from"] = _core.address_of(k)  # claims to be k, signed by someone else
    refused(mpp.b64url(orjson.dumps(forged)), "verification-failed")
    # An expired challenge (correctly bound: it is ours, just old).
    old = mpp.make_challenge(
        SECRET.encode(),
        realm=ch.realm,
        method="evm",
        intent="charge",
        request=ch.request_json,
        expires=mpp.rfc3339(time.time() - 5),
        digest=ch.digest,
    )
    refused(credential(old, k, valid_before=int(time.time()) + 60), "payment-expired")
    # Terms changed by the client: the HMAC no longer binds them.
    tampered = mpp.Challenge(
        **{**ch.__dict__, "request": mpp.encode_request({**ch.request_json, "amount": "1"})}
    )
    refused(credential(tampered, k, value=1), "invalid-challenge")
    # Another body than the one the challenge was issued for.
    status, _, body = request(
        gateway.url,
        "POST",
        "/v1/chat/completions",
        {**CHAT, "model": "gpt-4o-mini"},
        {"Authorization": f"Payment {credential(challenge_for(gateway), k)}"},
    )
    assert status == 402 and orjson.loads(body)["type"].endswith("/invalid-challenge")
    assert len(settlements(facilitator)) == count
    assert all(c["status"] == "settled" for c in claims(gateway.db))


def pay_at_once(gateways: list[Process], token: str, n: int = 6) -> list[int]:
    """Statuses of `n` simultaneous requests presenting one credential, spread over `gateways`."""
    with concurrent.futures.ThreadPoolExecutor(n) as pool:
        return list(
            pool.map(
                lambda i: request(
                    gateways[i % len(gateways)].url,
                    "POST",
                    "/v1/chat/completions",
                    CHAT,
                    {"Authorization": f"Payment {token}"},
                )[0],
                range(n),
            )
        )


def test_concurrent_retries_settle_once(gateway: Process, facilitator: Process) -> None:
    k = key()
    token = credential(challenge_for(gateway), k)
    before = len(settlements(facilitator))
    assert sorted(pay_at_once([gateway], token)) == [200] + [403] * 5
    assert len(settlements(facilitator)) == before + 1


def test_pympp_client_pays(gateway: Process, facilitator: Process) -> None:
    from eth_account import Account
    from mpp.client import Mpp
    from mpp.methods.evm import BASE_SEPOLIA_USDC
    from mpp.methods.evm import client as evm_client

    account = Account.from_key(key())

    async def go() -> Any:
        async with Mpp(
            methods=[evm_client.charge(currency=BASE_SEPOLIA_USDC, account=account)]
        ) as m:
            return await m.fetch(gateway.url + "/v1/chat/completions", method="POST", json=CHAT)

    resp = asyncio.run(go())
    assert resp.status_code == 200, resp.text
    receipt = mpp.decode_receipt(resp.headers["Payment-Receipt"])
    assert receipt["payer"] == account.address
    assert any(s["payer"] == account.address for s in settlements(facilitator))


def test_x402_client_pays_with_v2_and_v1(gateway: Process, facilitator: Process) -> None:
    from eth_account import Account
    from x402 import x402Client
    from x402.http.clients import x402HttpxClient
    from x402.mechanisms.evm.exact.register import register_exact_evm_client
    from x402.mechanisms.evm.signers import EthAccountSigner

    account = Account.from_key(key())
    client = x402Client()
    register_exact_evm_client(client, EthAccountSigner(account))

    async def go() -> Any:
        async with x402HttpxClient(client) as http:
            return await http.post(gateway.url + "/v1/chat/completions", json=CHAT)

    resp = asyncio.run(go())
    assert resp.status_code == 200, resp.text
    settled = orjson.loads(base64.b64decode(resp.headers["PAYMENT-RESPONSE"]))
    assert settled["success"] is True and settled["payer"] == account.address

    # v1: the X-PAYMENT header, answered with X-PAYMENT-RESPONSE.
    k = key()
    _, _, body = request(gateway.url, "POST", "/v1/chat/completions", CHAT)
    req = orjson.loads(body)["accepts"][0]
    fields, sig = evm.sign(
        k,
        ASSET,
        to=req["payTo"],
        value=int(req["maxAmountRequired"]),
        valid_before=int(time.time()) + 120,
    )
    header = base64.b64encode(
        orjson.dumps(
            {
                "x402Version": 1,
                "scheme": "exact",
                "network": "base-sepolia",
                "payload": {"authorization": fields, "signature": sig},
            }
        )
    ).decode()
    status, headers, _ = request(
        gateway.url, "POST", "/v1/chat/completions", CHAT, {"X-PAYMENT": header}
    )
    assert status == 200
    assert orjson.loads(base64.b64decode(headers["X-PAYMENT-RESPONSE"]))[
        "payer"
    ] == _core.address_of(k)


def test_token_based_quote(gateway: Process, mock_llm: Process) -> None:
    body = {**CHAT, "max_tokens": 100}
    prompt = count_chat_prompt(CHAT["messages"], "gpt-4o")
    expected = Decimal("2.50") / 10**6 * prompt + Decimal("10.00") / 10**6 * 100
    result = pay(gateway.url, "/quote/chat", body=body)
    assert result.status == 200
    assert result.paid.amount == int((expected * 10**6).to_integral_value(rounding="ROUND_CEILING"))
    # Without a max, the quote's default is written into the upstream request.
    rid = uuid.uuid4().hex
    result = pay(gateway.url, "/quote/chat", headers={"X-Request-Id": rid})
    assert result.status == 200
    _, _, stats = request(mock_llm.url, "GET", f"/_mock/stats?request_id={rid}")
    assert orjson.loads(stats)["requests"][0]["body_fields"]["max_completion_tokens"] == 4096


def test_time_window_access(gateway: Process) -> None:
    status, _, body = request(gateway.url, "POST", "/session/chat", CHAT)
    assert status == 401 and orjson.loads(body)["reason"] == "missing"
    result = pay(gateway.url, "/session/start")
    token = result.headers["Meterkit-Access-Token"]
    assert (
        request(gateway.url, "POST", "/session/chat", CHAT, {"Meterkit-Access-Token": token})[0]
        == 200
    )
    status, _, body = request(
        gateway.url, "POST", "/session/chat", CHAT, {"Meterkit-Access-Token": token[:-2] + "xx"}
    )
    assert status == 401 and orjson.loads(body)["reason"] == "invalid"


def test_discovery(gateway: Process) -> None:
    doc = orjson.loads(request(gateway.url, "GET", "/.well-known/x402")[2])
    paths = {r["path"]: r for r in doc["resources"]}
    assert paths["/v1/chat/completions"]["accepts"][0]["amount"] == "10000"
    assert paths["/quote/chat"]["pricing"]["type"] == "token-based"
    spec = orjson.loads(request(gateway.url, "GET", "/openapi.json")[2])
    assert spec["paths"]["/session/start"]["post"]["x-payment"]["price"] == "$0.25"


@pytest.mark.parametrize("header", ["Authorization", "X-PAYMENT", "PAYMENT-SIGNATURE"])
def test_header_fuzz_never_500(gateway: Process, header: str) -> None:
    rng = random.Random(header)
    alphabet = 'abcXYZ019+/=_-.:,"\\ \t{}[]' + "\u00e9\u20ac"
    samples = [
        "",
        "Payment",
        "Payment ",
        "Payment !!!",
        "x" * 65_000,
        "Payment " + base64.urlsafe_b64encode(b'{"challenge":{"id":1},"payload":[]}').decode(),
        base64.b64encode(
            b'{"x402Version":2,"accepted":{"scheme":"exact","network":1},"payload":{}}'
        ).decode(),
        base64.b64encode(b'{"x402Version":true}').decode(),
    ]
    for _ in range(60):
        samples.append(
            ("Payment " if header == "Authorization" else "")
            + "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 300)))
        )
    for value in samples:
        try:
            status, _, _ = request(
                gateway.url, "POST", "/v1/chat/completions", CHAT, {header: value}
            )
        except (http.client.HTTPException, ValueError, UnicodeEncodeError):
            continue  # the HTTP client itself refused to send it
        assert 400 <= status < 500, (value[:80], status)


import http.client  # noqa: E402

# ---- settlement timing -----------------------------------------------------------------------


def test_before_response_settlement_failure_stops_before_the_upstream(
    gateway: Process, facilitator: Process, mock_llm: Process
) -> None:
    set_mode(facilitator, "fail")
    try:
        rid = uuid.uuid4().hex
        result = pay(gateway.url, "/v1/chat/completions", headers={"X-Request-Id": rid})
        assert result.status == 402
        assert "did not settle" in orjson.loads(result.body)["detail"]
        _, _, stats = request(mock_llm.url, "GET", f"/_mock/stats?request_id={rid}")
        assert orjson.loads(stats)["requests"] == [], (
            "the upstream was called although settlement failed"
        )
    finally:
        set_mode(facilitator, "ok")


def test_after_response_no_charge_on_upstream_5xx_then_retry(
    gateway: Process, facilitator: Process
) -> None:
    k = key()
    body = CHAT
    ch = challenge_for(gateway, "/after/chat", body)
    token = credential(ch, k)
    before = len(settlements(facilitator))
    status, headers, _ = request(
        gateway.url,
        "POST",
        "/after/chat",
        body,
        {"Authorization": f"Payment {token}", "x-mock-status": "502"},
    )
    assert status == 502 and headers["X-Payment-Status"] == "not-charged; reason=upstream-502"
    assert len(settlements(facilitator)) == before
    # The authorization was not used: the same credential pays once the upstream recovers.
    status, headers, _ = request(
        gateway.url, "POST", "/after/chat", body, {"Authorization": f"Payment {token}"}
    )
    assert status == 200 and "Payment-Receipt" in headers
    assert len(settlements(facilitator)) == before + 1


def test_after_response_upstream_timeout_is_not_charged(
    gateway: Process, facilitator: Process
) -> None:
    before = len(settlements(facilitator))
    result = pay(gateway.url, "/after/chat", headers={"x-mock-delay-headers": "5"})
    assert result.status == 504
    assert result.headers["X-Payment-Status"] == "not-charged; reason=upstream-timeout"
    assert len(settlements(facilitator)) == before


def test_unknown_settlement_outcome_never_invites_a_second_payment(
    gateway: Process, facilitator: Process
) -> None:
    set_mode(facilitator, "timeout")
    k = key()
    try:
        token = credential(challenge_for(gateway), k)
        status, headers, body = request(
            gateway.url, "POST", "/v1/chat/completions", CHAT, {"Authorization": f"Payment {token}"}
        )
        assert status == 500 and "WWW-Authenticate" not in headers
        assert orjson.loads(body)["type"].endswith("/internal-payment-error")
        (row,) = [c for c in claims(gateway.db) if c["payer"] == _core.address_of(k)]
        assert row["status"] == "unknown"
    finally:
        set_mode(facilitator, "ok")
    status, _, _ = request(
        gateway.url, "POST", "/v1/chat/completions", CHAT, {"Authorization": f"Payment {token}"}
    )
    assert status == 403


# ---- several instances on one PostgreSQL ledger ----------------------------------------------


def test_two_instances_share_a_postgres_ledger(
    mock_llm: Process,
    facilitator: Process,
    tmp_path_factory: pytest.TempPathFactory,
    postgres_url: str,
) -> None:
    ledger = {"type": "postgres", "url": postgres_url, "schema": f"mk_{uuid.uuid4().hex[:10]}"}
    da, db = tmp_path_factory.mktemp("pga"), tmp_path_factory.mktemp("pgb")
    with (
        start(mock_llm.url, facilitator.url, da, ledger) as a,
        start(mock_llm.url, facilitator.url, db, ledger) as b,
    ):
        k = key()
        token = credential(challenge_for(a), k)
        before = len(settlements(facilitator))
        assert sorted(pay_at_once([a, b], token)) == [200] + [403] * 5
        assert len(settlements(facilitator)) == before + 1

    # A restart does not forget the nonce.
    with start(mock_llm.url, facilitator.url, da, ledger) as a:
        status, _, _ = request(
            a.url, "POST", "/v1/chat/completions", CHAT, {"Authorization": f"Payment {token}"}
        )
        assert status == 403


# ---- meterkit's client pays a pympp server ---------------------------------------------------


def test_meterkit_client_pays_a_pympp_server() -> None:
    from aiohttp import web
    from mpp.methods.evm import BASE_SEPOLIA_USDC
    from mpp.methods.evm import evm as evm_method
    from mpp.server import Mpp, Request, Response

    settled: list[str] = []

    def settle(auth: Any) -> str:
        settled.append(auth.payload["from"])
        return "0x" + "ab" * 32

    server = Mpp(
        methods=evm_method(currency=BASE_SEPOLIA_USDC, recipient=PAY_TO, settle=settle),
        realm="127.0.0.1",
        secret_key="pympp-server-secret",
    )

    async def handler(req: web.Request) -> web.Response:
        body = await req.read()
        result = await server.charge(amount="0.05")(
            Request(req.method, str(req.url), list(req.headers.items()), body)
        )
        out = (
            result.challenge
            if result.status != 200
            else result.with_receipt(Response.json({"ok": True}))
        )
        return web.Response(
            status=out.status, body=out.body, headers=list(out.headers.multi_items())
        )

    async def go() -> Any:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handler)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        from meterkit.runtime import bound_port

        url = f"http://127.0.0.1:{bound_port(site)}/paid"
        try:
            k = key()
            async with PayingClient(k, max_per_request=Decimal("0.10")) as client:
                return await client.request("POST", url, json={"q": 1}), _core.address_of(k)
        finally:
            await runner.cleanup()

    result, address = asyncio.run(go())
    assert result.status == 200, result.body
    assert result.receipt is not None and result.receipt["status"] == "success"
    assert settled == [address]


def test_identical_requests_in_one_second_are_two_payments(
    gateway: Process, facilitator: Process
) -> None:
    """Regression (found by the payments benchmark): challenges differing only in time had
    the same id within a second, hence the same EIP-3009 nonce, so a payer's second identical
    request was refused as a replay. Each challenge now carries a random, HMAC-bound nonce."""
    k = key()

    async def go() -> list[int]:
        async with PayingClient(k, max_total=Decimal("1")) as client:
            return [
                (
                    await client.request("POST", gateway.url + "/v1/chat/completions", json=CHAT)
                ).status
                for _ in range(3)
            ]

    before = len(settlements(facilitator))
    assert asyncio.run(go()) == [200, 200, 200]
    assert len(settlements(facilitator)) == before + 3

"""The payment stage in process (proxy app + mock LLM on loopback, deferred settlement into a
SQLite ledger): credentials bound to their resource, never forwarded, read from the header
the route asked for, and no malformed value answered with a 5xx."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
import pytest

from support.inproc import Gateway, chat, gateway, llm_config
from support.payment_values import DEEP, b64, b64url, corpus, x402_obj
from support.payments import challenges, credential, key, paid

CHAT = "/v1/chat/completions"
CREDENTIAL_HEADERS = {
    "authorization",
    "payment-authorization",
    "payment-signature",
    "x-payment",
    "meterkit-access-token",
}


def tree(tmp_path: Path) -> dict[str, Any]:
    t = llm_config("{mock}")
    t["routes"] = {
        "POST /a": {"upstream": "mock", "path": CHAT, "price": "$0.01"},
        "POST /b": {"upstream": "mock", "path": CHAT, "price": "$0.01"},
        "POST /tenant/:id/chat": {"upstream": "mock", "path": CHAT, "price": "$0.01"},
        "POST /keep": {
            "upstream": "mock",
            "path": CHAT,
            "price": "$0.01",
            "credential_header": "Payment-Authorization",
        },
    }
    return paid(t, str(tmp_path / "ledger.sqlite3"))


async def pay_token(g: Gateway, path: str, body: dict[str, Any]) -> tuple[str, Any]:
    status, headers, _ = await g.post(path, body)
    assert status == 402
    (ch,) = challenges(headers.getall("WWW-Authenticate"))
    return credential(ch, key()), ch


async def upstream_headers(g: Gateway) -> list[dict[str, str]]:
    async with g.session.get(g.mock_url + "/_mock/stats") as r:
        return [s["headers"] for s in (await r.json())["requests"]]


def test_the_upstream_never_sees_a_credential(tmp_path: Path) -> None:
    async def go() -> None:
        async with gateway(tree(tmp_path)) as g:
            body = chat(stream=False)
            token, _ = await pay_token(g, "/a", body)
            assert (await g.post("/a", body, {"Authorization": f"Payment {token}"}))[0] == 200
            x402 = {"PAYMENT-SIGNATURE": b64(x402_obj(2))}
            assert (await g.post("/b", body, x402))[0] == 200
            token, _ = await pay_token(g, "/keep", body)
            own = {
                "Authorization": "Bearer client-own-key",
                "Payment-Authorization": f"Payment {token}",
            }
            assert (await g.post("/keep", body, {**own, "Meterkit-Access-Token": "t"}))[0] == 200
            seen = await upstream_headers(g)
            assert len(seen) == 3
            assert not (CREDENTIAL_HEADERS - {"authorization"}) & set().union(*seen)
            assert [h.get("authorization") for h in seen] == [None, None, "Bearer client-own-key"]

    asyncio.run(go())


def test_a_credential_for_one_resource_is_refused_on_another(tmp_path: Path) -> None:
    async def go() -> None:
        async with gateway(tree(tmp_path)) as g:
            body = chat(stream=False)
            for issued, spent in (("/a", "/b"), ("/tenant/1/chat", "/tenant/2/chat")):
                token, _ = await pay_token(g, issued, body)
                auth = {"Authorization": f"Payment {token}"}
                status, _, problem = await g.post(spent, body, auth)
                assert status == 402, problem
                p = orjson.loads(problem)
                assert (
                    p["type"].endswith("/invalid-challenge") and "another resource" in p["detail"]
                )
                # Refused, not spent: it still pays for the resource it was issued for.
                assert (await g.post(issued, body, auth))[0] == 200

    asyncio.run(go())


def test_a_route_can_ask_for_the_credential_in_payment_authorization(tmp_path: Path) -> None:
    async def go() -> None:
        async with gateway(tree(tmp_path)) as g:
            body = chat(stream=False)
            token, ch = await pay_token(g, "/keep", body)
            assert ch.credential_header == "Payment-Authorization"
            status, _, problem = await g.post("/keep", body, {"Authorization": f"Payment {token}"})
            assert status == 402 and b"Payment-Authorization" in problem
            both = {
                "Authorization": f"Payment {token}",
                "Payment-Authorization": f"Payment {token}",
            }
            status, _, problem = await g.post("/keep", body, both)
            assert status == 402 and orjson.loads(problem)["type"].endswith("/malformed-credential")
            ok = {"Payment-Authorization": f"Payment {token}"}
            assert (await g.post("/keep", body, ok))[0] == 200

    asyncio.run(go())


# Values that fit in a request head (aiohttp's 8 KiB field limit); an oversized head is
# refused by the HTTP parser before any handler, which the hostile-client tests cover.
MALFORMED = [raw for raw in [r for _, r in corpus()] + DEEP if len(b64(raw)) < 8000]
# Each value in one header, in turn; an MPP credential is base64url, x402's standard base64.
HEADERS = [
    ("Authorization", "Payment ", b64url),
    ("Payment-Authorization", "Payment ", b64url),
    ("PAYMENT-SIGNATURE", "", b64),
    ("X-PAYMENT", "", b64),
]


def test_no_malformed_payment_header_gets_a_5xx(tmp_path: Path) -> None:
    assert len(MALFORMED) >= 300

    async def go() -> list[tuple[int, str]]:
        bad: list[tuple[int, str]] = []
        paid_for = 0
        async with gateway(tree(tmp_path)) as g:
            body = chat(stream=False)
            for i, raw in enumerate(MALFORMED):
                name, prefix, encode = HEADERS[i % len(HEADERS)]
                status, headers, _ = await g.post("/a", body, {name: prefix + encode(raw)})
                paid_for += status == 200
                if status == 200:
                    continue  # a mutation of a member nothing binds (x402's `extra`, say)
                # x402: 400 malformed, 402 refused, 403 the authorization an earlier mutation
                # of the same header already spent.
                x402_ok = name not in ("PAYMENT-SIGNATURE", "X-PAYMENT") or status in (
                    400,
                    402,
                    403,
                )
                problem = headers["Content-Type"].startswith("application/problem")
                if status >= 500 or not problem or not x402_ok:
                    bad.append((status, name))
            records = await g.records(len(MALFORMED))
            assert len(records) == len(MALFORMED)
            # Only what was paid for reached the upstream.
            assert len(await upstream_headers(g)) == paid_for < len(MALFORMED) // 10
        return bad

    assert asyncio.run(go()) == []


@pytest.mark.parametrize("header", ["Authorization", "PAYMENT-SIGNATURE"])
def test_malformed_is_402_for_mpp_and_400_for_x402(tmp_path: Path, header: str) -> None:
    async def go() -> tuple[int, dict[str, Any]]:
        async with gateway(tree(tmp_path)) as g:
            value = ("Payment " if header == "Authorization" else "") + b64url(b"[" * 1100)
            status, _, body = await g.post("/a", chat(stream=False), {header: value})
            return status, orjson.loads(body)

    status, problem = asyncio.run(go())
    assert problem["type"].endswith("/malformed-credential")
    assert status == (402 if header == "Authorization" else 400)


def test_an_x402_settlement_refusal_says_success_false(tmp_path: Path) -> None:
    import base64

    from meterkit.mock.facilitator import start_facilitator

    async def go() -> None:
        runner, port = await start_facilitator("127.0.0.1", 0)
        try:
            t = tree(tmp_path)
            t["payments"]["settlement"] = {
                "type": "facilitator",
                "url": f"http://127.0.0.1:{port}",
                "timeout": 2,
            }
            async with gateway(t) as g:
                async with g.session.post(
                    f"http://127.0.0.1:{port}/_facilitator/mode", json={"settle": "fail"}
                ) as r:
                    assert r.status == 200
                body = chat(stream=False)
                status, headers, _ = await g.post(
                    "/a", body, {"PAYMENT-SIGNATURE": b64(x402_obj(2))}
                )
                assert status == 402
                answer = orjson.loads(base64.b64decode(headers["PAYMENT-RESPONSE"]))
                assert answer["success"] is False and answer["errorReason"]
                assert await upstream_headers(g) == []
        finally:
            await runner.cleanup()

    asyncio.run(go())

"""Paid requests whose response never arrived: claims are released when nothing settled,
resolved at start after a crash, and a paid-but-undelivered request is served once more by
the same credential without a second charge. A stalled or dead ledger is a 503, not a hang.
In process, with a real SQLite or PostgreSQL ledger."""

from __future__ import annotations

import asyncio
import base64
import sqlite3
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson
import pytest

from meterkit.payments import mpp
from meterkit.payments.ledger import Claim, SqliteLedger
from support.inproc import Gateway, chat, gateway, llm_config
from support.payment_values import b64, x402_obj
from support.payments import challenges, claim_key, credential, key, paid
from support.tcpproxy import relay

CHAT = "/v1/chat/completions"
BODY = chat(stream=False)


def tree(ledger: str, **settlement: Any) -> dict[str, Any]:
    t = llm_config("{mock}")
    t["routes"] = {
        "POST /now": {"upstream": "mock", "path": CHAT, "price": "$0.01"},
        "POST /after": {
            "upstream": "mock",
            "path": CHAT,
            "price": "$0.01",
            "settlement": "after-response",
        },
    }
    t = paid(t, ledger)
    if settlement:
        t["payments"]["settlement"] = settlement
    return t


async def token_for(g: Gateway, path: str) -> str:
    status, headers, _ = await g.post(path, BODY)
    assert status == 402
    (ch,) = challenges(headers.getall("WWW-Authenticate"))
    return credential(ch, key())


def pay(token: str) -> dict[str, str]:
    return {"Authorization": f"Payment {token}"}


async def leave_before_headers(g: Gateway, path: str, token: str) -> None:
    """Pay, then leave while the upstream has not answered yet (it answers after 1 s)."""
    with pytest.raises(asyncio.TimeoutError):
        await g.post(
            path,
            BODY,
            {**pay(token), "x-mock-delay-headers": "1"},
            timeout=aiohttp.ClientTimeout(total=0.2),
        )


def rows(db: Path) -> list[dict[str, Any]]:
    with sqlite3.connect(db) as c:
        c.row_factory = sqlite3.Row
        return [dict(r) for r in c.execute("SELECT * FROM payment_claims")]


def settlements(db: Path) -> list[str]:
    with sqlite3.connect(db) as c:
        return [r[0] for r in c.execute("SELECT outcome FROM settlements ORDER BY at")]


def test_a_client_leaving_before_an_after_response_upstream_leaves_no_claim(
    tmp_path: Path,
) -> None:
    db = tmp_path / "ledger.sqlite3"

    async def go() -> None:
        async with gateway(tree(str(db))) as g:
            token = await token_for(g, "/after")
            await leave_before_headers(g, "/after", token)
            await g.records(2)  # the 402, then the cancelled one
            assert rows(db) == []
            # Nothing was charged: the same credential pays at once, no 15 s wait, no 403.
            t0 = time.monotonic()
            status, headers, _ = await g.post("/after", BODY, pay(token))
            assert status == 200 and "Payment-Receipt" in headers
            assert time.monotonic() - t0 < 10
            assert [c["status"] for c in rows(db)] == ["queued"]

    asyncio.run(go())


@pytest.mark.parametrize("protocol", ["mpp", "x402"])
def test_a_paid_undelivered_request_is_served_after_its_authorization_expired(
    tmp_path: Path, protocol: str
) -> None:
    """Issue 19 #1: a payer charged when the response never came got 402 "expired" once its
    authorization ran out. A payment that settled is proof enough: served once more, free."""
    db = tmp_path / "ledger.sqlite3"

    async def go() -> None:
        t = tree(str(db), type="deferred", max_validity="2s", expiry_margin="1s")
        t["payments"]["expires"] = "2s"
        t["payments"]["max_validity"] = "2s"
        async with gateway(t) as g:
            if protocol == "mpp":
                header = pay(await token_for(g, "/now"))
            else:
                obj = x402_obj(2)
                obj["payload"]["authorization"]["validBefore"] = str(int(time.time()) + 2)
                fields = obj["payload"]["authorization"]
                # Re-sign for the shorter validity.
                from meterkit.payments import evm
                from support.payment_values import ASSET, KEY, PAY_TO

                f, sig = evm.sign(
                    KEY, ASSET, to=PAY_TO, value=10_000, valid_before=int(fields["validBefore"])
                )
                obj["payload"] = {"authorization": f, "signature": sig}
                header = {"PAYMENT-SIGNATURE": b64(obj)}
            status, _, _ = await g.post("/now", BODY, {**header, "x-mock-status": "500"})
            assert status == 500
            await g.records(2 if protocol == "mpp" else 1)
            (claim,) = rows(db)
            assert (claim["status"], claim["delivery"]) == ("queued", "undelivered")
            await asyncio.sleep(2.5)  # the challenge and the authorization have expired
            status, headers, body = await g.post("/now", BODY, header)
            assert status == 200, orjson.loads(body)["detail"]
            if protocol == "mpp":
                assert mpp.decode_receipt(headers["Payment-Receipt"])["redelivery"] is True
            else:
                response = orjson.loads(base64.b64decode(headers["PAYMENT-RESPONSE"]))
                assert response["extensions"] == {"meterkit": {"redelivery": True}}
            assert settlements(db) == ["queued"]  # charged once
            await g.records(3)
            # Delivered now: the expired credential buys nothing more.
            status, _, problem = await g.post("/now", BODY, header)
            assert status in (402, 403), problem
            assert settlements(db) == ["queued"]

    asyncio.run(go())


def test_an_x402_redelivery_says_so_in_its_payment_response(tmp_path: Path) -> None:
    """Issue 19 #10: MPP receipts marked a redelivery, x402's PAYMENT-RESPONSE did not."""
    db = tmp_path / "ledger.sqlite3"

    async def go() -> None:
        async with gateway(tree(str(db))) as g:
            header = {"PAYMENT-SIGNATURE": b64(x402_obj(2))}
            status, headers, _ = await g.post("/now", BODY, {**header, "x-mock-status": "500"})
            assert status == 500
            await g.records(1)
            status, headers, _ = await g.post("/now", BODY, header)
            assert status == 200
            response = orjson.loads(base64.b64decode(headers["PAYMENT-RESPONSE"]))
            assert response["success"] is True
            assert response["extensions"] == {"meterkit": {"redelivery": True}}
            assert settlements(db) == ["queued"]

    asyncio.run(go())


def test_a_paid_request_that_was_not_delivered_is_served_once_more_for_free(
    tmp_path: Path,
) -> None:
    db = tmp_path / "ledger.sqlite3"

    async def go() -> None:
        async with gateway(tree(str(db))) as g:
            token = await token_for(g, "/now")
            # Settled before the response, and the upstream failed: paid, nothing delivered.
            status, _, _ = await g.post("/now", BODY, {**pay(token), "x-mock-status": "500"})
            assert status == 500
            await g.records(2)  # the stages heard how it ended
            (claim,) = rows(db)
            assert (claim["status"], claim["delivery"]) == ("queued", "undelivered")
            status, headers, body = await g.post("/now", BODY, pay(token))
            assert status == 200 and orjson.loads(body)["choices"]
            receipt = mpp.decode_receipt(headers["Payment-Receipt"])
            assert receipt["redelivery"] is True and receipt["reference"] == claim["reference"]
            assert settlements(db) == ["queued"]  # one charge, never two
            await g.records(3)
            (claim,) = rows(db)
            assert claim["delivery"] == "delivered"
            status, _, problem = await g.post("/now", BODY, pay(token))
            assert status == 403
            assert (
                "already paid for a request, which was delivered" in orjson.loads(problem)["detail"]
            )

    asyncio.run(go())


def test_a_client_gone_before_a_before_response_answer_is_served_on_retry(
    tmp_path: Path,
) -> None:
    db = tmp_path / "ledger.sqlite3"

    async def go() -> None:
        async with gateway(tree(str(db))) as g:
            token = await token_for(g, "/now")
            await leave_before_headers(g, "/now", token)
            await g.records(2)
            (claim,) = rows(db)
            assert claim["delivery"] == "undelivered"
            assert (await g.post("/now", BODY, pay(token)))[0] == 200
            assert settlements(db) == ["queued"]

    asyncio.run(go())


def _claim(token: str, status: str, **over: Any) -> Claim:
    return Claim(
        claim_key=claim_key(token),
        status=status,
        protocol="mpp",
        network="eip155:84532",
        asset="0x036CbD53842c5426634e7929541eC2318f3dCF7e",
        payer="0x" + "11" * 20,
        pay_to="0x" + "22" * 20,
        amount="10000",
        nonce="0x" + "00" * 32,
        valid_before=int(time.time()) + 3600,
        route="POST /now",
        request_id="crashed",
        challenge_id=None,
        authorization_json="{}",
        **over,
    )


async def _leave(db: Path, claims: list[Claim]) -> None:
    """What a crashed gateway left in its ledger."""
    ledger = SqliteLedger(db)
    await ledger.open()
    for c in claims:
        await ledger.claim(c)
        if c.status != "pending":
            await ledger.finish_claim(c.claim_key, c.status, c.reference, None)
    await ledger.close()


def test_claims_left_by_a_crash_are_resolved_at_start(tmp_path: Path) -> None:
    db = tmp_path / "ledger.sqlite3"

    async def go() -> None:
        async with gateway(tree(str(db))) as g:
            tokens = [await token_for(g, "/now") for _ in range(3)]
        # Killed: one claim before settlement, one while settling (deferred: nothing left
        # the machine), one settled whose response never went out.
        await _leave(
            db,
            [
                _claim(tokens[0], "pending"),
                _claim(tokens[1], "settling"),
                _claim(tokens[2], "queued", reference="q-1"),
            ],
        )
        async with gateway(tree(str(db))) as g:
            assert {c["claim_key"]: c["delivery"] for c in rows(db)} == {
                claim_key(tokens[2]): "undelivered"
            }
            for t in tokens:
                status, _, problem = await g.post("/now", BODY, pay(t))
                assert status == 200, problem
            assert settlements(db).count("queued") == 2  # the third was paid before the crash

    asyncio.run(go())


def test_an_unknown_outcome_left_by_a_crash_is_never_charged_again_and_says_so(
    tmp_path: Path,
) -> None:
    db = tmp_path / "ledger.sqlite3"
    (tmp_path / "billing.py").write_text(
        "async def settle(request):\n    return 'settled', 'tx-' + request['authorization']['nonce']\n"
    )
    settler = {"type": "callable", "callable": str(tmp_path / "billing.py") + ":settle"}

    async def go() -> None:
        async with gateway(tree(str(db), **settler)) as g:
            token = await token_for(g, "/now")
        await _leave(db, [_claim(token, "settling")])
        async with gateway(tree(str(db), **settler)) as g:
            (claim,) = rows(db)
            assert claim["status"] == "unknown"
            status, _, problem = await g.post("/now", BODY, pay(token))
            assert status == 403
            assert "unknown outcome" in orjson.loads(problem)["detail"]

    asyncio.run(go())


def test_a_frozen_or_dead_postgres_ledger_is_a_503_not_a_hang(postgres_url: str) -> None:
    import uuid

    u = urlsplit(postgres_url)

    async def go() -> None:
        async with relay(u.hostname or "127.0.0.1", u.port or 5432) as r:
            url = postgres_url.replace(f"{u.hostname}:{u.port}", f"127.0.0.1:{r.port}")
            t = tree("unused")
            t["ledger"] = {
                "type": "postgres",
                "url": url,
                "schema": f"l_{uuid.uuid4().hex[:10]}",
                "timeout": 0.5,
            }
            async with gateway(t) as g:
                token = await token_for(g, "/now")
                r.frozen.set()
                t0 = time.monotonic()
                status, headers, problem = await g.post("/now", BODY, pay(token))
                assert time.monotonic() - t0 < 5
                assert status == 503 and headers["Retry-After"]
                assert orjson.loads(problem)["type"].endswith("/ledger-unavailable")
                r.cut()
                for _ in range(3):
                    status, _, _ = await g.post("/now", BODY, pay(token))
                    assert status == 503
                r.restore()
                await asyncio.sleep(0.2)
                status, _, problem = await g.post("/now", BODY, pay(token))
                assert status == 200, problem

    asyncio.run(go())

"""Sessions over channels in meterkit's escrow on anvil (`sessions.channels: {type:
onchain}`): meterkit's own `SessionClient` streams a completion paid per token from a channel
opened with ordinary transactions, through need-voucher → voucher → resume, and the close
settles on chain exactly what was delivered (receipt with `txHash`), refunding the rest.
Vouchers above the deposit, on unknown or closing channels, or signed for another contract
are refused with the session problems; a top-up on chain is seen by the next voucher."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest

from meterkit import count_tokens
from meterkit.chain import escrow
from meterkit.chain.abi import encode_call
from meterkit.client.session import SessionClient
from meterkit.config import ConfigError, config_from_dict
from meterkit.payments import mpp
from meterkit.sessions.channels import PREPAID_ESCROW
from meterkit.sessions.store import SessionStore
from meterkit.sessions.wire import sign_voucher
from support.chain import SECRET, UNIT, LocalChain
from support.escrow import OPERATOR, accepts, open_channel, payer, sessions
from support.http import texts
from support.inproc import Gateway, chat, gateway, llm_config

CHAT = "/v1/chat/completions"
PRICE = 10  # $0.00001 a completion token, in base units of the 6-decimal token
PROBLEM = "https://paymentauth.org/problems/session/"


def tree(chain: LocalChain, esc: str, db: Path, **channels: Any) -> dict[str, Any]:
    t = llm_config("{mock}")
    t["routes"] = {
        f"POST {CHAT}": {
            "upstream": "mock",
            "session": {"price": "$0.00001", "voucher_timeout": "5s"},
        }
    }
    return {
        **t,
        "accepts": accepts(chain),
        "payments": {"secret": SECRET, "settlement": {"type": "deferred"}},
        "ledger": {"type": "sqlite", "path": str(db)},
        "sessions": sessions(chain, esc, **channels),
    }


async def challenge(g: Gateway, method: str = "evm") -> mpp.Challenge:
    status, headers, _ = await g.post(CHAT, chat())
    assert status == 402
    (ch,) = [
        c
        for c in mpp.parse_challenges(headers.getall("WWW-Authenticate"))
        if c.intent == "session" and c.method == method
    ]
    return ch


def test_session_client_streams_from_an_onchain_channel_and_close_settles_what_was_delivered(
    chain: LocalChain, chain_escrows: dict[str, str], tmp_path: Path
) -> None:
    esc = chain_escrows["evm"]
    key, address = payer(chain)
    cid = open_channel(chain, esc, key, UNIT)
    before = chain.balance(OPERATOR)

    async def go() -> None:
        async with gateway(tree(chain, esc, tmp_path / "l.db")) as g:
            ch = await challenge(g)
            assert ch.request_json["methodDetails"]["escrowContract"].lower() == esc.lower()
            async with SessionClient(
                key, cid, max_total=Decimal("1"), initial=PRICE * 15, session=g.session
            ) as client:
                h = {"x-mock-length": "40", "x-mock-tps": "0"}
                result = await client.stream("POST", g.url + CHAT, json=chat(), headers=h)
                assert result.status == 200, result.problem
                assert result.needs and len(result.vouchers) == len(result.needs)
                tokens = count_tokens(texts("openai-chat", result.body), "gpt-4o")
                assert tokens == 40
                assert result.receipt is not None
                assert result.receipt["spent"] == str(tokens * PRICE)
                assert int(result.receipt["acceptedCumulative"]) > tokens * PRICE
                # The client closes with its highest voucher; the gateway takes what was spent.
                receipt = await client.close(g.url + CHAT, ch)
            assert receipt is not None and receipt["txHash"].startswith("0x")
            assert receipt["settled"] == str(tokens * PRICE)
            tx = chain.node.call("eth_getTransactionReceipt", receipt["txHash"])
            assert tx["status"] == "0x1"
            on_chain = escrow.read_channel(chain.url, esc, cid)
            assert on_chain.finalized and on_chain.settled == tokens * PRICE
            assert chain.balance(OPERATOR) - before == tokens * PRICE
            assert chain.balance(address) == 10 * UNIT - tokens * PRICE
            # A finalized channel takes no more vouchers.
            async with g.session.post(g.url + CHAT, headers=client.authorization(ch, UNIT)) as r:
                assert r.status == 410

    asyncio.run(go())


def test_onchain_vouchers_are_checked_against_the_escrow(
    chain: LocalChain, chain_escrows: dict[str, str], tmp_path: Path
) -> None:
    esc = chain_escrows["evm"]
    key, address = payer(chain)
    cid = open_channel(chain, esc, key, 1000)

    async def go() -> None:
        # A long cache: what the escrow says is re-read only when a voucher needs it.
        async with gateway(tree(chain, esc, tmp_path / "l.db", cache="1h")) as g:
            ch = await challenge(g)
            client = SessionClient(key, cid, max_total=Decimal("1"), session=g.session)

            async def send(headers: dict[str, str]) -> tuple[int, dict[str, Any] | None]:
                async with g.session.post(g.url + CHAT, headers=headers) as r:
                    raw = await r.read()
                    return r.status, (orjson.loads(raw) if raw else None)

            status, _ = await send(client.authorization(ch, 500))
            assert status == 204
            status, problem = await send(client.authorization(ch, 1500))
            assert status == 402 and problem is not None
            assert problem["type"] == PROBLEM + "amount-exceeds-deposit"
            # A top-up on chain: the same voucher now fits (the cached deposit is re-read).
            escrow.send_signed(
                chain.url, key, chain.token, encode_call("approve(address,uint256)", esc, 1000)
            )
            escrow.send_signed(
                chain.url, key, esc, encode_call("topUp(bytes32,uint128)", cid, 1000)
            )
            status, _ = await send(client.authorization(ch, 1500))
            assert status == 204
            # Signed for another verifying contract (a prepaid channel's): not the payer's
            # signature on this escrow.
            wrong = sign_voucher(key, "evm", chain.node.chain_id, PREPAID_ESCROW, cid, 1600)
            token = mpp.credential_token(
                ch,
                {
                    "action": "voucher",
                    "channelId": cid,
                    "cumulativeAmount": "1600",
                    "signature": wrong,
                },
            )
            status, problem = await send({"Authorization": f"Payment {token}"})
            assert status == 402 and problem is not None
            assert problem["type"] == PROBLEM + "signer-mismatch"
            # A channel the escrow does not know.
            other = SessionClient(key, "0x" + "ab" * 32, max_total=Decimal("1"), session=g.session)
            status, problem = await send(other.authorization(ch, 100))
            assert status == 410 and problem is not None
            assert problem["type"] == PROBLEM + "channel-not-found"

        store = SessionStore(tmp_path / "l.db")
        await store.open()
        row = await store.get(cid)
        await store.close()
        assert row is not None and (row.accepted, row.deposit, row.spent) == (1500, 2000, 0)
        assert row.payer.lower() == address.lower()

    asyncio.run(go())


def test_a_top_up_credential_re_reads_the_deposit_at_once(
    chain: LocalChain, chain_escrows: dict[str, str], tmp_path: Path
) -> None:
    """`action: topUp` with the hash of the payer's own topUp transaction: the deposit is
    read again at once (even with a long cache), so the next voucher may use it; a hash of
    anything but a call to the escrow, and relayed top-ups, are refused."""
    esc = chain_escrows["evm"]
    key, _ = payer(chain)
    cid = open_channel(chain, esc, key, 1000)

    async def go() -> None:
        async with gateway(tree(chain, esc, tmp_path / "l.db", cache="1h")) as g:
            ch = await challenge(g)

            async def top_up(payload: dict[str, Any]) -> tuple[int, Any, Any]:
                token = mpp.credential_token(ch, {"action": "topUp", "channelId": cid, **payload})
                async with g.session.post(
                    g.url + CHAT, headers={"Authorization": f"Payment {token}"}
                ) as r:
                    raw = await r.read()
                    return r.status, r.headers, orjson.loads(raw) if raw else None

            approve = escrow.send_signed(
                chain.url, key, chain.token, encode_call("approve(address,uint256)", esc, 500)
            )
            tx = escrow.send_signed(
                chain.url, key, esc, encode_call("topUp(bytes32,uint128)", cid, 500)
            )
            status, headers, _ = await top_up(
                {"type": "hash", "hash": tx, "additionalDeposit": "500"}
            )
            assert status == 204
            receipt = mpp.decode_receipt(headers["Payment-Receipt"])
            assert receipt["channelId"] == cid and receipt["intent"] == "session"
            store = SessionStore(tmp_path / "l.db")
            await store.open()
            row = await store.get(cid)
            await store.close()
            assert row is not None and row.deposit == 1500
            # The approve went to the token, not the escrow: no top-up.
            status, _, problem = await top_up(
                {"type": "hash", "hash": approve, "additionalDeposit": "500"}
            )
            assert status == 402, problem
            assert problem["type"].endswith("/verification-failed")
            assert esc.lower() in problem["detail"].lower()
            status, _, problem = await top_up({"type": "authorization", "additionalDeposit": "500"})
            assert problem["type"].endswith("/method-unsupported"), problem
            assert "type: hash" in problem["detail"]

    asyncio.run(go())


def test_a_channel_closing_on_chain_takes_no_new_vouchers(
    chain: LocalChain, chain_escrows: dict[str, str], tmp_path: Path
) -> None:
    esc = chain_escrows["evm"]
    key, _ = payer(chain)
    cid = open_channel(chain, esc, key, 1000)

    async def go() -> None:
        async with gateway(tree(chain, esc, tmp_path / "l.db", cache="0s")) as g:
            ch = await challenge(g)
            client = SessionClient(key, cid, max_total=Decimal("1"), session=g.session)
            async with g.session.post(g.url + CHAT, headers=client.authorization(ch, 100)) as r:
                assert r.status == 204
            escrow.send_signed(chain.url, key, esc, encode_call("requestClose(bytes32)", cid))
            async with g.session.post(g.url + CHAT, headers=client.authorization(ch, 200)) as r:
                assert r.status == 410
                assert (await r.json())["title"] == "Channel Closing"

    asyncio.run(go())


def test_the_challenge_names_the_channel_a_request_says_it_pays_from(
    chain: LocalChain, chain_escrows: dict[str, str], tmp_path: Path
) -> None:
    esc = chain_escrows["tempo"]
    cid = "0x" + "cd" * 32

    async def go() -> None:
        async with gateway(tree(chain, esc, tmp_path / "l.db")) as g:
            status, headers, _ = await g.post(CHAT, chat(), {"Payment-Channel-Id": cid})
            assert status == 402
            found = [
                c.request_json["methodDetails"].get("channelId")
                for c in mpp.parse_challenges(headers.getall("WWW-Authenticate"))
                if c.intent == "session"
            ]
            assert found and set(found) == {cid}
            # Garbage is not echoed.
            status, headers, _ = await g.post(CHAT, chat(), {"Payment-Channel-Id": "0x12"})
            assert all(
                "channelId" not in c.request_json["methodDetails"]
                for c in mpp.parse_challenges(headers.getall("WWW-Authenticate"))
                if c.intent == "session"
            )

    asyncio.run(go())


def test_the_onchain_channels_config_is_validated_with_key_paths(
    chain: LocalChain, chain_escrows: dict[str, str], tmp_path: Path
) -> None:
    esc = chain_escrows["evm"]
    base = tree(chain, esc, tmp_path / "l.db")
    base["upstreams"]["mock"]["url"] = "http://127.0.0.1:9"
    config = config_from_dict(base)
    assert config.sessions.onchain is not None and config.sessions.channels == "onchain"
    assert "operator_key" not in repr(config.sessions) and "relayer_key" not in repr(
        config.sessions
    )
    bad = {
        **base,
        "sessions": {
            "channels": {"type": "onchain", "rpc_url": "ftp://x", "escrow": "0x12", "cach": "1s"}
        },
    }
    with pytest.raises(ConfigError) as e:
        config_from_dict(bad)
    paths = {p.path for p in e.value.problems}
    assert {
        "sessions.channels.rpc_url",
        "sessions.channels.escrow",
        "sessions.channels.operator_key",
        "sessions.channels.cach",
    } <= paths
    # The escrow pays the payee only: the operator must be the accepted asset's pay_to.
    other = {**base, "accepts": [{**a, "pay_to": "0x" + "77" * 20} for a in accepts(chain)]}
    with pytest.raises(ConfigError) as e:
        config_from_dict(other)
    assert {p.path for p in e.value.problems} == {"sessions.channels.operator_key"}
    assert config_from_dict({**base, "sessions": {"channels": "prepaid"}}).sessions.onchain is None

"""`settlement: {type: onchain}` end to end on a local anvil: `meterkit serve` settles each
payment itself (simulate, send signed by the relayer, wait for the receipt) and the balances
on chain move by exactly the price."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from support.chain import (
    RELAYER,
    UNIT,
    WALLET,
    LocalChain,
    claims,
    credential,
    settlement_rows,
)
from support.http import request
from support.payments import CHAT, pay

PRICE = 10_000  # $0.01 in base units
PATH = "/v1/chat/completions"


def tree(mock_url: str, **route: Any) -> dict[str, Any]:
    return {
        "upstreams": {"mock": {"url": mock_url}},
        "routes": {f"POST {PATH}": {"upstream": "mock", "price": "$0.01", **route}},
    }


@pytest.mark.parametrize("moment", ["before-response", "after-response"])
def test_settlement_moves_the_price_and_the_relayer_pays_gas(
    chain: LocalChain, mock_llm: Any, start_proxy: Any, tmp_path: Any, moment: str
) -> None:
    db = str(tmp_path / "ledger.sqlite3")
    proxy = start_proxy(chain.paid(tree(mock_llm.url, settlement=moment), db))
    key, payer = chain.payer(1 * UNIT)
    relayer_eth = chain.eth(RELAYER)

    result = pay(proxy.url, PATH, secret_key=key)

    assert result.status == 200, "".join(proxy.output)
    assert chain.balance(payer) == 1 * UNIT - PRICE
    assert chain.balance(WALLET) == PRICE
    assert chain.eth(RELAYER) < relayer_eth  # the relayer paid the gas
    tx = result.receipt["reference"]
    receipt = chain.node.call("eth_getTransactionReceipt", tx)
    assert receipt["status"] == "0x1"
    assert receipt["from"].lower() == RELAYER.lower()
    (claim,) = claims(db)
    assert (claim["status"], claim["reference"]) == ("settled", tx)
    assert chain.used(payer, claim["nonce"])
    outcomes = [(s, o) for s, o, _ in settlement_rows(db)]
    assert outcomes == [("onchain", "sent"), ("onchain", "settled")]


def test_a_replay_is_refused_by_the_ledger_and_the_chain_agrees(
    chain: LocalChain, mock_llm: Any, start_proxy: Any, tmp_path: Any
) -> None:
    from meterkit.payments.onchain import OnchainSettler
    from meterkit.payments.problems import SettlementFailed

    db = str(tmp_path / "ledger.sqlite3")
    proxy = start_proxy(chain.paid(tree(mock_llm.url), db))
    key, payer = chain.payer(1 * UNIT)
    header, auth = credential(proxy.url, PATH, key, chain.asset)

    first = request(proxy.url, "POST", PATH, CHAT, {"Authorization": header})
    again = request(proxy.url, "POST", PATH, CHAT, {"Authorization": header})

    assert first[0] == 200
    assert again[0] == 403
    assert orjson.loads(again[2])["type"].endswith("/verification-failed")
    assert "WWW-Authenticate" not in again[1]  # no invitation to pay again
    assert chain.balance(payer) == 1 * UNIT - PRICE  # charged once
    assert chain.used(payer, auth.nonce)

    # The chain itself refuses the same authorization: its simulation reverts.
    settler = OnchainSettler(chain.settlement_config(), 5.0)

    async def simulate() -> None:
        try:
            await settler.simulate(chain.asset, auth)
        finally:
            await settler.close()

    with pytest.raises(SettlementFailed) as e:
        asyncio.run(simulate())
    assert e.value.reason == "nonce_used"


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections and never answers (a node that hangs)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        srv.settimeout(0.1)
        while not stop.is_set():
            try:
                held.append(srv.accept()[0])
            except OSError:
                continue

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    yield int(srv.getsockname()[1])
    stop.set()
    t.join(2)
    for s in held:
        s.close()
    srv.close()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("node", ["unreachable", "hanging"])
def test_an_rpc_outage_is_a_503_and_the_claim_is_released(
    chain: LocalChain,
    mock_llm: Any,
    start_proxy: Any,
    tmp_path: Any,
    silent_port: int,
    node: str,
) -> None:
    db = str(tmp_path / "ledger.sqlite3")
    port = _closed_port() if node == "unreachable" else silent_port
    down = start_proxy(
        chain.paid(tree(mock_llm.url), db, rpc_url=f"http://127.0.0.1:{port}", timeout="1s")
    )
    key, payer = chain.payer(1 * UNIT)
    header, auth = credential(down.url, PATH, key, chain.asset)

    status, headers, body = request(down.url, "POST", PATH, CHAT, {"Authorization": header})

    assert status == 503
    problem = orjson.loads(body)
    assert problem["type"].endswith("/chain-unavailable")
    assert headers["Retry-After"] == "5"
    assert "WWW-Authenticate" not in headers
    assert claims(db) == []  # released: nothing was sent
    assert chain.balance(payer) == 1 * UNIT
    assert not chain.used(payer, auth.nonce)

    # Once the node is back, the same credential pays, once.
    down.stop()
    up = start_proxy(chain.paid(tree(mock_llm.url), db))
    status, _, body = request(up.url, "POST", PATH, CHAT, {"Authorization": header})
    assert status == 200, body
    assert chain.balance(payer) == 1 * UNIT - PRICE
    assert chain.balance(WALLET) == PRICE

"""`meterkit ledger settle` on a local anvil: the deferred queue reaches the chain once, and
after a `kill -9` between broadcast and receipt the ledger is reconciled with the chain
(`authorizationState` is the ground truth) without settling anything twice."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from meterkit.payments import mpp
from meterkit.payments.evm import parse_authorization
from meterkit.payments.onchain import OnchainSettler
from support.chain import (
    RELAYER,
    UNIT,
    WALLET,
    LocalChain,
    claims,
    credential,
    ledger_settle,
    settlement_rows,
)
from support.http import request
from support.payments import CHAT, pay

PRICE = 10_000
PATH = "/v1/chat/completions"


def tree(mock_url: str) -> dict[str, Any]:
    return {
        "upstreams": {"mock": {"url": mock_url}},
        "routes": {f"POST {PATH}": {"upstream": "mock", "price": "$0.01"}},
    }


def relayer_nonce(chain: LocalChain) -> int:
    return int(chain.node.call("eth_getTransactionCount", RELAYER, "latest"), 16)


def config_of(proxy: Any) -> Path:
    return Path(proxy.db).parent / "config.yaml"


def test_settle_twice_settles_once(
    chain: LocalChain, mock_llm: Any, start_proxy: Any, tmp_path: Path
) -> None:
    db = str(tmp_path / "ledger.sqlite3")
    proxy = start_proxy(chain.paid(tree(mock_llm.url), db, type="deferred"))
    payers = [chain.payer(1 * UNIT) for _ in range(3)]
    for key, _ in payers:
        assert pay(proxy.url, PATH, secret_key=key).status == 200
    queued = claims(db)
    assert [c["status"] for c in queued] == ["queued"] * 3
    assert chain.balance(WALLET) == 0  # deferred: nothing moved yet

    # One authorization reaches the chain outside `ledger settle` (as after a crash of an
    # earlier run right after it broadcast): it must be recorded, never sent again.
    first = queued[0]
    data = orjson.loads(first["authorization_json"])
    settler = OnchainSettler(chain.settlement_config(), 5.0)

    async def submit_one() -> str:
        try:
            auth = parse_authorization(data["authorization"], data["signature"])
            return await settler.submit(chain.asset, auth, first["claim_key"])
        finally:
            await settler.close()

    early_tx = asyncio.run(submit_one())
    sent_before = relayer_nonce(chain)

    code, rows, err = ledger_settle(config_of(proxy), "--concurrency", "2")

    assert code == 0, err
    assert sorted(r["status"] for r in rows) == ["settled"] * 3
    by_key = {r["claim_key"]: r for r in rows}
    assert by_key[first["claim_key"]]["reference"] == early_tx
    assert relayer_nonce(chain) == sent_before + 2  # two transfers sent, not three
    for _, address in payers:
        assert chain.balance(address) == 1 * UNIT - PRICE
    assert chain.balance(WALLET) == 3 * PRICE
    after = {c["claim_key"]: c for c in claims(db)}
    assert {c["status"] for c in after.values()} == {"settled"}
    assert all(c["reference"] == by_key[k]["reference"] for k, c in after.items())

    code, rows, err = ledger_settle(config_of(proxy))

    assert (code, rows) == (0, []), err
    assert "nothing to do" in err
    assert relayer_nonce(chain) == sent_before + 2
    assert chain.balance(WALLET) == 3 * PRICE


def test_settle_marks_a_row_the_chain_refuses_failed(
    chain: LocalChain, mock_llm: Any, start_proxy: Any, tmp_path: Path
) -> None:
    db = str(tmp_path / "ledger.sqlite3")
    proxy = start_proxy(chain.paid(tree(mock_llm.url), db, type="deferred"))
    (broke_key, broke), (ok_key, ok) = chain.payer(PRICE), chain.payer(1 * UNIT)
    assert pay(proxy.url, PATH, secret_key=broke_key).status == 200
    assert pay(proxy.url, PATH, secret_key=ok_key).status == 200
    # The broke payer spends its balance elsewhere before the batch runs.
    chain.node.call("anvil_impersonateAccount", broke)
    chain.node.call("anvil_setBalance", broke, hex(10**18))
    from meterkit.chain import token
    from meterkit.chain.abi import encode_call

    token.send(
        chain.url, chain.token, encode_call("transfer(address,uint256)", ok, PRICE), sender=broke
    )

    code, rows, _ = ledger_settle(config_of(proxy), "--retries", "0")

    statuses = {r["claim_key"].rsplit(":", 2)[1]: r["status"] for r in rows}
    assert statuses == {broke.lower(): "failed", ok.lower(): "settled"}
    assert code == 0
    failed = next(r for r in rows if r["status"] == "failed")
    assert "revert" in failed["error"]
    assert chain.balance(WALLET) == PRICE


def test_kill_9_between_broadcast_and_receipt_then_reconcile(
    chain: LocalChain, mock_llm: Any, start_proxy: Any, tmp_path: Path
) -> None:
    db = str(tmp_path / "ledger.sqlite3")
    cfg = chain.paid(tree(mock_llm.url), db, receipt_timeout="60s")
    proxy = start_proxy(cfg)
    key, payer = chain.payer(1 * UNIT)
    header, auth = credential(proxy.url, PATH, key, chain.asset)

    chain.node.call("evm_setAutomine", False)  # the transfer waits in the mempool
    try:
        answer: list[Any] = []
        t = threading.Thread(
            target=lambda: answer.append(
                _quietly(lambda: request(proxy.url, "POST", PATH, CHAT, {"Authorization": header}))
            ),
            daemon=True,
        )
        t.start()
        tx = _wait_for_broadcast(chain, db)
        os.kill(proxy.pid, signal.SIGKILL)
        proxy.proc.wait(10)
        t.join(20)
        assert not isinstance(answer[0], tuple)  # the client got no answer
        (claim,) = claims(db)
        assert claim["status"] == "settling"  # sent to the settler, outcome not known
        chain.node.call("evm_mine")
    finally:
        chain.node.call("evm_setAutomine", True)
    assert chain.balance(payer) == 1 * UNIT - PRICE  # the transfer landed, once
    assert chain.used(payer, auth.nonce)

    code, rows, err = ledger_settle(config_of(proxy), "--stale-after", "0")

    assert code == 0, err
    assert rows == [
        {
            "claim_key": claim["claim_key"],
            "status": "settled",
            "step": "reconcile",
            "reference": tx,
            "error": None,
        }
    ]
    (claim,) = claims(db)
    assert (claim["status"], claim["reference"]) == ("settled", tx)
    assert ledger_settle(config_of(proxy), "--stale-after", "0")[1] == []

    # The client never got its answer: a restarted proxy serves the same credential once
    # more, with the receipt of the transfer that landed, and charges nothing new.
    again = start_proxy(cfg)
    status, headers, _ = request(again.url, "POST", PATH, CHAT, {"Authorization": header})
    assert status == 200
    receipt = mpp.decode_receipt(headers["Payment-Receipt"])
    assert (receipt["reference"], receipt["redelivery"]) == (tx, True)
    # Delivered now: the credential is spent.
    status, _, body = request(again.url, "POST", PATH, CHAT, {"Authorization": header})
    assert status == 403
    assert orjson.loads(body)["reference"] == tx
    assert chain.balance(payer) == 1 * UNIT - PRICE
    assert chain.balance(WALLET) == PRICE
    outcomes = [o for _, o, _ in settlement_rows(db)]
    assert outcomes == ["sent", "settled"]


def _quietly(fn: Any) -> Any:
    try:
        return fn()
    except Exception as e:  # the connection dies with the proxy
        return e


def _wait_for_broadcast(chain: LocalChain, db: str) -> str:
    """The journaled transaction, once the node has it in its mempool."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        sent = [ref for _, outcome, ref in settlement_rows(db) if outcome == "sent"]
        if sent and chain.node.call("eth_getTransactionByHash", sent[0]) is not None:
            return str(sent[0])
        time.sleep(0.02)
    pytest.fail("the proxy never broadcast the transfer")

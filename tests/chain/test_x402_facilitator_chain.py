"""meterkit's facilitator settler against a real x402 facilitator (the `x402` PyPI package's
facilitator logic, `support/x402_facilitator.py`) settling on the local anvil: balances
really move, and the facilitator (and the chain behind it) refuses a second settlement."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from meterkit.chain.anvil import funded_key
from support.chain import UNIT, WALLET, LocalChain, claims
from support.http import request
from support.payments import pay
from support.processes import Process, running

PRICE = 10_000
PATH = "/v1/chat/completions"


@pytest.fixture
def x402_facilitator(chain: LocalChain) -> Iterator[Process]:
    """The facilitator, with a funded key of its own (`.address`)."""
    key, address = funded_key(chain.url)
    with running(
        ["--rpc-url", chain.url, "--key", key, "--network", "eip155:31337"],
        module="support.x402_facilitator",
    ) as p:
        p.address = address  # type: ignore[attr-defined]
        yield p


@pytest.mark.parametrize("protocol", ["mpp", "x402"])
def test_paying_through_a_real_facilitator_moves_balances(
    chain: LocalChain,
    x402_facilitator: Process,
    mock_llm: Any,
    start_proxy: Any,
    tmp_path: Any,
    protocol: str,
) -> None:
    db = str(tmp_path / "ledger.sqlite3")
    tree = chain.paid(
        {
            "upstreams": {"mock": {"url": mock_llm.url}},
            "routes": {f"POST {PATH}": {"upstream": "mock", "price": "$0.01"}},
        },
        db,
    )
    tree["payments"]["settlement"] = {"type": "facilitator", "url": x402_facilitator.url}
    tree["payments"]["protocols"] = [protocol]
    proxy = start_proxy(tree)
    key, payer = chain.payer(1 * UNIT)
    facilitator = x402_facilitator.address  # type: ignore[attr-defined]
    facilitator_eth = chain.eth(facilitator)

    result = pay(proxy.url, PATH, secret_key=key)

    assert result.status == 200, "".join(x402_facilitator.output)
    assert chain.balance(payer) == 1 * UNIT - PRICE
    assert chain.balance(WALLET) == PRICE
    assert chain.eth(facilitator) < facilitator_eth  # the facilitator paid the gas
    tx = result.receipt["reference"] if protocol == "mpp" else result.receipt["transaction"]
    mined = chain.node.call("eth_getTransactionReceipt", tx)
    assert (mined["status"], mined["from"].lower()) == ("0x1", facilitator.lower())
    (claim,) = claims(db)
    assert (claim["status"], claim["reference"]) == ("settled", tx)
    assert chain.used(payer, claim["nonce"])

    # The same authorization sent to the facilitator again: refused, nothing moves.
    data = orjson.loads(claim["authorization_json"])
    requirements = {
        "scheme": "exact",
        "network": "eip155:31337",
        "amount": str(PRICE),
        "asset": chain.token,
        "payTo": WALLET,
        "maxTimeoutSeconds": 300,
        "extra": {"name": "USDC", "version": "2"},
    }
    body = {
        "x402Version": 2,
        "paymentPayload": {
            "x402Version": 2,
            "accepted": requirements,
            "payload": {"authorization": data["authorization"], "signature": data["signature"]},
        },
        "paymentRequirements": requirements,
    }
    status, _, raw = request(x402_facilitator.url, "POST", "/settle", body)
    answer = orjson.loads(raw)
    assert status == 200 and answer["success"] is False, answer
    assert chain.balance(payer) == 1 * UNIT - PRICE
    assert chain.balance(WALLET) == PRICE


def test_mock_facilitator_with_an_rpc_url_settles_for_real(
    chain: LocalChain, mock_llm: Any, start_proxy: Any, tmp_path: Any
) -> None:
    key_hex, relayer = funded_key(chain.url)
    with running(
        ["mock-facilitator", "--port", "0", "--rpc-url", chain.url],
        env={"METERKIT_RELAYER_KEY": key_hex},
    ) as fac:
        assert "on chain 31337" in "".join(fac.output)
        status, _, raw = request(fac.url, "GET", "/supported")
        assert status == 200, "".join(fac.output)
        supported = orjson.loads(raw)
        assert supported["kinds"] == [
            {"x402Version": 2, "scheme": "exact", "network": "eip155:31337"}
        ]
        tree = chain.paid(
            {
                "upstreams": {"mock": {"url": mock_llm.url}},
                "routes": {f"POST {PATH}": {"upstream": "mock", "price": "$0.01"}},
            },
            str(tmp_path / "ledger.sqlite3"),
        )
        tree["payments"]["settlement"] = {"type": "facilitator", "url": fac.url}
        proxy = start_proxy(tree)
        key, payer = chain.payer(1 * UNIT)

        first = pay(proxy.url, PATH, secret_key=key)

    assert first.status == 200, first.body
    assert chain.balance(payer) == 1 * UNIT - PRICE
    assert chain.balance(WALLET) == PRICE
    mined = chain.node.call("eth_getTransactionReceipt", first.receipt["reference"])
    assert (mined["status"], mined["from"].lower()) == ("0x1", relayer.lower())

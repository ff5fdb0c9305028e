"""`meterkit bench payments`, section 3: settlement on a local chain (anvil, automine: a block
per transaction, so the figures measure meterkit and the node, not block times).

- Settlement latency, p50/p99, per path: `deferred` (queue the authorization: no network),
  `onchain` (meterkit's own settler: eth_call simulation, fee lookup, signed broadcast,
  receipt), `facilitator` (meterkit's facilitator settler over HTTP to `meterkit
  mock-facilitator --rpc-url`, which settles on the same chain).
- The pay-and-retry round trip through the proxy with on-chain settlement (402, sign, retry,
  settle on chain, answer), beside the same route unpaid.

Needs anvil (`make chain`); without it the section says so and is skipped.
"""

from __future__ import annotations

import os
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import yaml

from meterkit import _core
from meterkit.bench.processes import running
from meterkit.bench.proxy import _pct
from meterkit.bench.roundtrips import round_trips
from meterkit.bench.timing import progress, table
from meterkit.chain import token
from meterkit.chain.anvil import ACCOUNT_KEYS, Anvil, find_anvil, funded_key
from meterkit.config.payments import Asset, Chain
from meterkit.payments import evm
from meterkit.payments.settlement import (
    DeferredSettler,
    FacilitatorSettler,
    SettlementRequest,
    Settler,
)
from meterkit.payments.x402 import Offer, requirements_v2
from meterkit.runtime import new_event_loop

PAY_TO = "0x" + "22" * 20
PRICE = 10_000
BODY = {"model": "gpt-4o", "messages": [{"role": "user", "content": "Hello"}]}


def _requests(asset: Asset, n: int, key: bytes) -> list[SettlementRequest]:
    payer = _core.address_of(key)
    out = []
    for _ in range(n):
        fields, sig = evm.sign(
            key, asset, to=PAY_TO, value=PRICE, valid_before=int(time.time()) + 3600
        )
        auth = evm.parse_authorization(fields, sig)
        out.append(
            SettlementRequest(
                auth,
                asset,
                PRICE,
                PAY_TO,
                payer,
                "x402-v2",
                evm.claim_key(auth, asset),
                requirements_v2(Offer(asset, PRICE, PAY_TO), 300),
            )
        )
    return out


async def _latencies(settler: Settler, reqs: list[SettlementRequest]) -> list[float]:
    out = []
    try:
        for r in reqs:
            t0 = time.perf_counter()
            await settler.settle(r)
            out.append(time.perf_counter() - t0)
    finally:
        await settler.close()
    return out


def main(quick: bool = False) -> dict[str, Any] | None:
    """Print section 3; its figures, or None when anvil is missing."""
    n = 20 if quick else 200
    print(f"\n3. Settlement on a local chain (anvil, automine; {n} settlements per path)")
    if find_anvil() is None:
        print("   skipped: anvil not found (`make chain` installs it into .chain/)")
        return None
    results: dict[str, Any] = {}
    with ExitStack() as stack:
        node = stack.enter_context(Anvil())
        address = token.deploy(node.url)
        asset = token.asset(address)
        payer_key = os.urandom(31) + b"\x09"
        token.mint(node.url, address, _core.address_of(payer_key), 10**12)
        relayer_key, _ = funded_key(node.url)
        fac_key, _ = funded_key(node.url)
        fac = stack.enter_context(
            running(
                ["mock-facilitator", "--port", "0", "--rpc-url", node.url],
                env={"METERKIT_RELAYER_KEY": fac_key},
            )
        )
        from meterkit.payments.onchain import OnchainSettler

        chain = Chain(rpc_url=node.url, relayer_key=relayer_key, poll_interval=0.01)
        paths: list[tuple[str, Settler]] = [
            ("deferred", DeferredSettler()),
            ("onchain", OnchainSettler(chain, 10.0)),
            ("facilitator", FacilitatorSettler(fac.url, 10.0)),
        ]
        loop = new_event_loop()
        rows = []
        try:
            for name, settler in paths:
                progress(f"settlement on anvil, {name}")
                lat = loop.run_until_complete(_latencies(settler, _requests(asset, n, payer_key)))
                results[f"settle_{name}"] = {
                    "p50_ms": _pct(lat, 0.5) * 1e3,
                    "p99_ms": _pct(lat, 0.99) * 1e3,
                }
                rows.append(
                    [
                        name,
                        f"{results[f'settle_{name}']['p50_ms']:.2f}",
                        f"{results[f'settle_{name}']['p99_ms']:.2f}",
                    ]
                )
            print(table(["settlement", "p50 ms", "p99 ms"], rows))
            progress("round trip with on-chain settlement")
            trips = _proxy_round_trips(stack, loop, node, asset, payer_key, n)
            results["round_trip_onchain"] = trips
        finally:
            loop.close()
    print(f"\n   pay-and-retry round trip through the proxy, on-chain settlement ({n} requests):")
    print(
        table(
            ["unpaid p50 ms", "paid p50 ms", "added p50", "paid p99 ms"],
            [
                [
                    f"{trips['free_p50_ms']:.2f}",
                    f"{trips['paid_p50_ms']:.2f}",
                    f"{trips['added_p50_ms']:.2f}",
                    f"{trips['paid_p99_ms']:.2f}",
                ]
            ],
        )
    )
    return results


def _proxy_round_trips(
    stack: ExitStack, loop: Any, node: Anvil, asset: Asset, payer_key: bytes, n: int
) -> dict[str, float]:
    d = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="meterkit-bench-chain-")))
    mock = stack.enter_context(running(["mock-llm", "--port", "0", "--ttft", "0", "--length", "5"]))
    tree = {
        "accepts": [
            {
                "asset": "USDC",
                "network": "local",
                "chain_id": asset.chain_id,
                "address": asset.address,
                "decimals": 6,
                "name": asset.eip712_name,
                "version": "2",
                "pay_to": PAY_TO,
            }
        ],
        "payments": {
            "secret": "bench-secret-0123456789abcdef",
            "settlement": {
                "type": "onchain",
                "rpc_url": node.url,
                "relayer_key": ACCOUNT_KEYS[1],
                "poll_interval": "10ms",
            },
        },
        "ledger": {"type": "sqlite", "path": str(d / "ledger.sqlite3")},
        "upstreams": {"mock": {"url": mock.url}},
        "routes": {
            "POST /paid": {"upstream": "mock", "path": "/v1/chat/completions", "price": "$0.01"},
            "POST /free": {"upstream": "mock", "path": "/v1/chat/completions"},
        },
        "usage": {"sink": "none"},
        "logging": {"level": "warning"},
    }
    (d / "onchain.yaml").write_text(yaml.safe_dump(tree))
    proxy = stack.enter_context(
        running(["serve", "--config", str(d / "onchain.yaml"), "--port", "0"], cwd=d)
    )
    result: dict[str, float] = loop.run_until_complete(round_trips(proxy.url, n, payer_key))
    return result

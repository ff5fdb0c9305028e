"""`meterkit bench payments`:

1. Signature verifications per second: an EIP-3009 authorization's EIP-712 digest plus
   secp256k1 recovery in the Rust core, versus `eth-account` (encode_typed_data +
   recover_message) on the same signatures, in the same run; and recovery alone, also versus
   libsecp256k1 through `coincurve` plus pycryptodome's keccak (public key → address bytes,
   no checksum and no low-s check: favourable to that baseline).
2. The pay-and-retry round trip through the proxy: a paid request (402, sign, retry,
   settle) versus the same route unpaid, p50/p99 — with the deferred settler (no network)
   and with the mock facilitator (one extra HTTP round trip).
3. Settlement on a local anvil: latency p50/p99 of the deferred, on-chain and facilitator
   paths, and the round trip with on-chain settlement (`bench/chain.py`).
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import orjson
import yaml

from meterkit import _core
from meterkit.bench import plots as draw
from meterkit.bench.plots import Output
from meterkit.bench.processes import running
from meterkit.bench.roundtrips import round_trips
from meterkit.bench.timing import best_of, environment, progress, table
from meterkit.config.payments import KNOWN_ASSETS
from meterkit.payments import evm
from meterkit.runtime import new_event_loop

ASSET = KNOWN_ASSETS[("USDC", "base-sepolia")]
PAY_TO = "0x" + "22" * 20


def signatures(n: int) -> list[tuple[evm.Authorization, dict[str, str], str]]:
    out = []
    for i in range(n):
        key = os.urandom(31) + bytes([i % 255 + 1])
        fields, sig = evm.sign(key, ASSET, to=PAY_TO, value=10_000 + i, valid_before=2_000_000_000)
        out.append((evm.parse_authorization(fields, sig), fields, sig))
    return out


def verify_rate(n: int, repeat: int) -> dict[str, float]:
    from eth_account import Account
    from eth_account.messages import encode_typed_data

    sigs = signatures(n)
    types = evm.TRANSFER_WITH_AUTHORIZATION
    domain = evm.eip712_domain(ASSET)
    raw = [(a, bytes.fromhex(s[2:])) for a, _, s in sigs]

    def meterkit_full() -> None:
        for a, sig in raw:
            assert _core.recover_address(evm.digest(a, ASSET), sig) == a.from_address

    def eth_full() -> None:
        for a, f, s in sigs:
            msg = {
                "from": f["from"],
                "to": f["to"],
                "value": int(f["value"]),
                "validAfter": 0,
                "validBefore": int(f["validBefore"]),
                "nonce": bytes.fromhex(f["nonce"][2:]),
            }
            signable = encode_typed_data(domain_data=domain, message_types=types, message_data=msg)
            assert Account.recover_message(signable, signature=s) == a.from_address

    digests = [(evm.digest(a, ASSET), sig) for a, sig in raw]

    def meterkit_recover() -> None:
        for d, sig in digests:
            _core.recover_address(d, sig)

    def eth_recover() -> None:
        for d, sig in digests:
            Account._recover_hash(d, signature=sig)

    fns = [
        ("meterkit_full", meterkit_full),
        ("eth_full", eth_full),
        ("meterkit_recover", meterkit_recover),
        ("eth_recover", eth_recover),
    ]
    libsecp = _libsecp_recover(digests)
    if libsecp is not None:
        fns.append(("libsecp256k1_recover", libsecp))
    t = {}
    for i, (name, fn) in enumerate(fns):
        progress(f"signature verifications, {name}", i + 1, len(fns))
        t[name] = best_of(fn, repeat)
    return {k: n / v for k, v in t.items()}


def _libsecp_recover(digests: list[tuple[bytes, bytes]]) -> Callable[[], None] | None:
    """Recovery with libsecp256k1 (coincurve) + keccak, checked against meterkit once;
    `None` when coincurve (the `bench` extra) is not installed."""
    try:
        from coincurve import PublicKey
        from Crypto.Hash import keccak
    except ImportError:
        print("(coincurve not installed: no libsecp256k1 baseline)", file=sys.stderr)
        return None
    # coincurve takes r ‖ s ‖ recovery id (0/1), not Ethereum's v.
    prepared = [(d, sig[:64] + bytes([sig[64] - 27])) for d, sig in digests]

    def address(d: bytes, sig: bytes) -> bytes:
        point = PublicKey.from_signature_and_message(sig, d, hasher=None).format(compressed=False)
        return keccak.new(data=point[1:], digest_bits=256).digest()[12:]

    for (d, sig), (_, raw) in zip(prepared, digests, strict=True):
        expected = _core.recover_address(d, raw)
        assert "0x" + address(d, sig).hex() == expected.lower()

    def run() -> None:
        for d, sig in prepared:
            address(d, sig)

    return run


def _config(mock: str, settlement: dict[str, Any], d: Path, name: str) -> Path:
    tree = {
        "wallets": {"base-sepolia": PAY_TO},
        "accepts": [{"asset": "USDC", "network": "base-sepolia"}],
        "payments": {"secret": "bench-secret-0123456789abcdef", "settlement": settlement},
        "ledger": {"type": "sqlite", "path": str(d / f"{name}.sqlite3")},
        "upstreams": {"mock": {"url": mock}},
        "routes": {
            "POST /paid": {"upstream": "mock", "path": "/v1/chat/completions", "price": "$0.01"},
            "POST /free": {"upstream": "mock", "path": "/v1/chat/completions"},
        },
        "usage": {"sink": "none"},
        "logging": {"level": "warning"},
    }
    p = d / f"{name}.yaml"
    p.write_text(yaml.safe_dump(tree))
    return p


def main(quick: bool = False, json_out: str | None = None, plots: Output | None = None) -> int:
    env = environment()
    n_sigs, repeat, n_trips = (200, 2, 20) if quick else (2000, 5, 300)
    print(
        f"meterkit bench payments: {env['build']} build, Python {env['python']}, {env['cpus']} CPUs"
    )
    results: dict[str, Any] = {"environment": env}
    rates = verify_rate(n_sigs, repeat)
    results["verifications_per_second"] = rates
    print(
        f"\n1. EIP-3009 signature verifications per second ({n_sigs} distinct signatures, single thread)"
    )
    print(
        table(
            ["path", "meterkit /s", "eth-account /s", "ratio"],
            [
                [
                    "EIP-712 digest + recovery",
                    f"{rates['meterkit_full']:.0f}",
                    f"{rates['eth_full']:.0f}",
                    f"{rates['meterkit_full'] / rates['eth_full']:.1f}x",
                ],
                [
                    "recovery only",
                    f"{rates['meterkit_recover']:.0f}",
                    f"{rates['eth_recover']:.0f}",
                    f"{rates['meterkit_recover'] / rates['eth_recover']:.1f}x",
                ],
            ],
        )
    )
    if "libsecp256k1_recover" in rates:
        print(
            table(
                ["recovery only", "meterkit /s", "coincurve + keccak /s", "ratio"],
                [
                    [
                        "libsecp256k1 baseline",
                        f"{rates['meterkit_recover']:.0f}",
                        f"{rates['libsecp256k1_recover']:.0f}",
                        f"{rates['meterkit_recover'] / rates['libsecp256k1_recover']:.2f}x",
                    ]
                ],
            )
        )
    rows = []
    with ExitStack() as stack:
        d = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="meterkit-bench-")))
        mock = stack.enter_context(
            running(["mock-llm", "--port", "0", "--ttft", "0", "--length", "5"])
        )
        fac = stack.enter_context(running(["mock-facilitator", "--port", "0"]))
        loop = new_event_loop()
        try:
            for name, settlement in (
                ("deferred", {"type": "deferred"}),
                ("facilitator", {"type": "facilitator", "url": fac.url}),
            ):
                proxy = stack.enter_context(
                    running(
                        [
                            "serve",
                            "--config",
                            str(_config(mock.url, settlement, d, name)),
                            "--port",
                            "0",
                        ],
                        cwd=d,
                    )
                )
                r = loop.run_until_complete(round_trips(proxy.url, n_trips))
                results[f"round_trip_{name}"] = r
                rows.append(
                    [
                        name,
                        f"{r['free_p50_ms']:.2f}",
                        f"{r['paid_p50_ms']:.2f}",
                        f"{r['added_p50_ms']:.2f}",
                        f"{r['paid_p99_ms']:.2f}",
                        f"{r['added_p99_ms']:.2f}",
                    ]
                )
        finally:
            loop.close()
    print(
        f"\n2. Pay-and-retry round trip through the proxy ({n_trips} requests; non-streamed 5-token answers)"
    )
    print(
        table(
            ["settlement", "unpaid p50 ms", "paid p50 ms", "added p50", "paid p99 ms", "added p99"],
            rows,
        )
    )
    from meterkit.bench.chain import main as chain_main

    results["chain"] = chain_main(quick)
    if json_out:
        Path(json_out).write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))
    if plots is not None:
        progress("plots")
        figures(plots, results)
    return 0


def figures(out: Output, results: dict[str, Any]) -> None:
    """Verification rates beside eth-account, the pay-and-retry round trip beside the unpaid
    request, and settlement latency per path when the chain section ran."""
    rates = results["verifications_per_second"]
    draw.grouped_bars(
        out.path("verifications"),
        "EIP-3009 signature verifications per second, one thread",
        {
            "EIP-712 digest + recovery": {
                "meterkit": rates["meterkit_full"],
                "eth-account": rates["eth_full"],
            },
            "recovery only": {
                "meterkit": rates["meterkit_recover"],
                "eth-account": rates["eth_recover"],
            },
        },
        "verifications per second",
        baseline="eth-account",
        higher_is_better=True,
        note=out.note,
    )
    trips = {
        name: results[f"round_trip_{name}"]
        for name in ("deferred", "facilitator")
        if f"round_trip_{name}" in results
    }
    chain = results.get("chain")
    if chain and "round_trip_onchain" in chain:
        trips["on-chain (anvil)"] = chain["round_trip_onchain"]
    draw.grouped_bars(
        out.path("round-trip"),
        "Pay-and-retry round trip through the proxy, by settlement",
        {
            f"{name} settlement": {
                "unpaid p50": r["free_p50_ms"],
                "paid p50": r["paid_p50_ms"],
                "paid p99": r["paid_p99_ms"],
            }
            for name, r in trips.items()
        },
        "latency, ms",
        baseline="unpaid p50",
        note=out.note,
    )
    if chain:
        draw.grouped_bars(
            out.path("settlement"),
            "Settlement latency per path (local anvil, automine)",
            {
                name: {
                    "p50": chain[f"settle_{name}"]["p50_ms"],
                    "p99": chain[f"settle_{name}"]["p99_ms"],
                }
                for name in ("deferred", "onchain", "facilitator")
                if f"settle_{name}" in chain
            },
            "settlement latency, ms",
            note=out.note,
        )


if __name__ == "__main__":
    sys.exit(main(quick="--quick" in sys.argv))

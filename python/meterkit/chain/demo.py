"""`make demo-chain` (`python -m meterkit.chain.demo`): the `meterkit serve --demo` paid
route on a local anvil with real balances.

It starts anvil, deploys meterkit's EIP-3009 test token, mints 10 test USDC to a fresh payer
key, serves the demo (built-in mock LLM, the paid route settled on chain by a relayer
account of anvil's), prints the balances, pays once with `meterkit pay`, and prints the
balances again: the payer −$0.01, the operator's wallet +$0.01, the relayer −gas.
With `--serve`, it keeps the proxy and the chain running afterwards (Ctrl-C stops both).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
from pathlib import Path

from meterkit import _core
from meterkit.chain import token
from meterkit.chain.anvil import ACCOUNT_KEYS, ACCOUNTS, Anvil
from meterkit.commands.serve import DEMO_WALLET, demo_tree
from meterkit.config import config_from_dict

RELAYER_KEY, RELAYER = ACCOUNT_KEYS[1], ACCOUNTS[1]
BODY = '{"model": "gpt-4o", "messages": [{"role": "user", "content": "Hi"}]}'


def _usdc(units: int) -> str:
    return f"{units / 10**6:.6f} USDC"


def balances(url: str, address: str, payer: str) -> list[tuple[str, str, str]]:
    return [
        ("payer", payer, _usdc(token.balance(url, address, payer))),
        ("wallet", DEMO_WALLET, _usdc(token.balance(url, address, DEMO_WALLET))),
        ("relayer", RELAYER, f"{token.eth_balance(url, RELAYER) / 10**18:.9f} ETH"),
    ]


def show(title: str, rows: list[tuple[str, str, str]]) -> None:
    print(title)
    for name, who, amount in rows:
        print(f"  {name:8} {who}  {amount}")


async def run(node: Anvil, data_dir: Path, serve: bool) -> int:
    from meterkit.mock.server import MockOptions, start_mock
    from meterkit.proxy.app import build_app
    from meterkit.proxy.lifecycle import start

    address = token.deploy(node.url)
    key = os.urandom(32)
    payer = _core.address_of(key)
    token.mint(node.url, address, payer, 10 * 10**6)
    key_file = data_dir / "payer-key.hex"
    key_file.write_text("0x" + key.hex() + "\n")
    key_file.chmod(0o600)

    mock_runner, mock_port = await start_mock("127.0.0.1", 0, MockOptions(ttft=0.05, length=16))
    tree = {
        **demo_tree(f"http://127.0.0.1:{mock_port}", "127.0.0.1", 0, str(data_dir)),
        "wallets": {},
        "accepts": [
            {
                "asset": "USDC",
                "network": "local",
                "chain_id": node.chain_id,
                "address": address,
                "decimals": 6,
                "name": token.DEFAULT_NAME,
                "version": "2",
                "pay_to": DEMO_WALLET,
            }
        ],
    }
    tree["payments"] = {
        **tree["payments"],
        "settlement": {"type": "onchain", "rpc_url": node.url, "relayer_key": RELAYER_KEY},
    }
    tree["logging"] = {"level": "warning", "format": "text"}
    config = config_from_dict(tree, source="demo-chain")
    runner, port = await start(build_app(config), "127.0.0.1", 0)
    url = f"http://127.0.0.1:{port}"
    try:
        print(f"anvil on {node.url} (chain {node.chain_id}); test USDC at {address}")
        print(f"meterkit demo proxy on {url}, paid route {url}/paid/v1/chat/completions\n")
        show("before:", balances(node.url, address, payer))
        cmd = [
            sys.executable,
            "-m",
            "meterkit",
            "pay",
            f"{url}/paid/v1/chat/completions",
            "--key-file",
            str(key_file),
            "--max-amount",
            "0.05",
            "--data",
            BODY,
        ]
        print("\n$ meterkit pay " + " ".join(cmd[4:-1]) + f" '{BODY}'")
        proc = await asyncio.create_subprocess_exec(*cmd)
        code = await proc.wait()
        print()
        show("after:", balances(node.url, address, payer))
        if serve and code == 0:
            print(f"\nserving on {url} with the chain at {node.url}; Ctrl-C stops")
            await asyncio.Event().wait()
        return code
    finally:
        await runner.cleanup()
        await mock_runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m meterkit.chain.demo", description=__doc__)
    p.add_argument("--serve", action="store_true", help="keep serving after the payment")
    args = p.parse_args(argv)
    with Anvil() as node, tempfile.TemporaryDirectory(prefix="meterkit-demo-chain-") as d:
        try:
            return asyncio.run(run(node, Path(d), args.serve))
        except KeyboardInterrupt:
            return 130


if __name__ == "__main__":
    sys.exit(main())

"""A local EVM node for tests, the benchmark and the chain demo: anvil (Foundry), installed
from npm into `.chain/` by `make chain`. Always bound to 127.0.0.1.

Anvil is ready in about 0.1 s and mines a block per transaction (automine), so a settlement
round trip on it measures meterkit, not block times. Its first accounts are unlocked and
funded with 10 000 ETH; their keys come from anvil's well-known test mnemonic, never use them
anywhere else.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import orjson

CHAIN_ID = 31337
# Anvil's first two default accounts ("test test … junk" mnemonic): public test keys. More
# accounts: `funded_key`.
ACCOUNT_KEYS = (
    "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80",
    "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d",
)
ACCOUNTS = (
    "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266",
    "0x70997970C51812dc3A010C7d01b50e0d17dc79C8",
)


def find_anvil() -> str | None:
    """`$METERKIT_ANVIL`, else `.chain/node_modules/.bin/anvil` in the working directory or
    the source tree this package runs from, else `anvil` on PATH."""
    env = os.environ.get("METERKIT_ANVIL")
    if env:
        return env
    here = Path(__file__).resolve()
    for root in (Path.cwd(), *here.parents):
        candidate = root / ".chain" / "node_modules" / ".bin" / "anvil"
        if candidate.is_file():
            return str(candidate)
    return shutil.which("anvil")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rpc_sync(url: str, method: str, *params: Any, timeout: float = 10.0) -> Any:
    """One blocking JSON-RPC call (for setup code: fixtures, the demo, the benchmark)."""
    body = orjson.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": list(params)})
    req = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    # No proxy for a loopback node, whatever the environment says.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(req, timeout=timeout) as resp:
        data = orjson.loads(resp.read())
    if "error" in data:
        raise RuntimeError(f"{method}: {data['error']}")
    return data["result"]


def funded_key(url: str, wei: int = 10**20) -> tuple[str, str]:
    """A fresh key whose account holds `wei` (anvil_setBalance): (0x key, address)."""
    from meterkit import _core

    key = os.urandom(32)
    address = _core.address_of(key)
    rpc_sync(url, "anvil_setBalance", address, hex(wei))
    return "0x" + key.hex(), address


class Anvil:
    """An anvil process on a free loopback port; `url` is its JSON-RPC endpoint."""

    def __init__(
        self, binary: str | None = None, chain_id: int = CHAIN_ID, extra: tuple[str, ...] = ()
    ) -> None:
        binary = binary or find_anvil()
        if binary is None:
            raise FileNotFoundError("anvil not found: run `make chain` (or set METERKIT_ANVIL)")
        self.chain_id = chain_id
        # A free port can be taken between the probe and anvil's bind: retry a few times.
        for _ in range(5):
            self.port = _free_port()
            self.url = f"http://127.0.0.1:{self.port}"
            self.proc = subprocess.Popen(
                [
                    binary,
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    "--chain-id",
                    str(chain_id),
                    "--silent",
                    *extra,
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            if self._wait_ready():
                return
            self.stop()
        raise RuntimeError("anvil did not start")

    def _wait_ready(self, timeout: float = 15.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                if int(rpc_sync(self.url, "eth_chainId", timeout=1), 16) == self.chain_id:
                    return True
            except (OSError, urllib.error.URLError, RuntimeError):
                time.sleep(0.05)
        return False

    def call(self, method: str, *params: Any) -> Any:
        return rpc_sync(self.url, method, *params)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.proc.stderr is not None:
            self.proc.stderr.close()

    def __enter__(self) -> Anvil:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

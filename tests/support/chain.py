"""The local EVM chain of the tests: an anvil node (session), meterkit's EIP-3009 test token
deployed on it, funded payers, and the config a proxy needs to take payments in that token.
Each test runs between `evm_snapshot` and `evm_revert` (the `chain` fixture)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meterkit import _core
from meterkit.chain import token
from meterkit.chain.anvil import ACCOUNT_KEYS, ACCOUNTS, Anvil
from meterkit.config.payments import Asset, Chain
from meterkit.payments.evm import Authorization

RELAYER_KEY = ACCOUNT_KEYS[1]
RELAYER = ACCOUNTS[1]
WALLET = "0x" + "77" * 20  # the operator's recipient: an address nobody holds the key of
SECRET = "chain-secret-for-tests-0123456789"
UNIT = 10**6  # one USDC in base units


@dataclass
class LocalChain:
    node: Anvil
    token: str

    @property
    def url(self) -> str:
        return self.node.url

    @property
    def asset(self) -> Asset:
        return token.asset(self.token)

    def payer(self, amount: int = 10 * UNIT) -> tuple[bytes, str]:
        """A fresh key holding `amount` of the token (and no ETH: EIP-3009 payers need none)."""
        key = os.urandom(31) + b"\x05"
        address = _core.address_of(key)
        token.mint(self.url, self.token, address, amount)
        return key, address

    def balance(self, owner: str) -> int:
        return token.balance(self.url, self.token, owner)

    def eth(self, owner: str) -> int:
        return token.eth_balance(self.url, owner)

    def used(self, authorizer: str, nonce: str) -> bool:
        return token.authorization_used(self.url, self.token, authorizer, nonce)

    def accepts(self) -> list[dict[str, Any]]:
        return [
            {
                "asset": "USDC",
                "network": "local",
                "chain_id": self.node.chain_id,
                "address": self.token,
                "decimals": 6,
                "name": token.DEFAULT_NAME,
                "version": "2",
                "pay_to": WALLET,
            }
        ]

    def settlement(self, **over: Any) -> dict[str, Any]:
        return {
            "type": "onchain",
            "rpc_url": self.url,
            "relayer_key": RELAYER_KEY,
            "timeout": "5s",
            "receipt_timeout": "10s",
            "poll_interval": "0.02s",
            **over,
        }

    def settlement_config(self, **over: Any) -> Chain:
        """The parsed `Chain` of `settlement(**over)` (for a settler built in the test)."""
        from meterkit.config.payments import _settlement
        from meterkit.config.problems import KeyPath, Problems

        problems = Problems()
        parsed = _settlement(self.settlement(**over), KeyPath(), problems)
        assert parsed.chain is not None
        return parsed.chain

    def paid(self, tree: dict[str, Any], ledger_path: str, **settlement: Any) -> dict[str, Any]:
        """`tree` with payments in the local token, settled on this chain (`settlement`
        overrides keys of the on-chain settlement, e.g. `type: deferred`)."""
        return {
            **tree,
            "accepts": self.accepts(),
            "payments": {"secret": SECRET, "settlement": self.settlement(**settlement)},
            "ledger": {"type": "sqlite", "path": ledger_path},
        }


def credential(url: str, path: str, secret_key: bytes, asset: Asset) -> tuple[str, Authorization]:
    """Ask `path` for its 402 and sign an MPP credential for its challenge in `asset`:
    (the `Authorization` header value, the signed authorization). Kept by the test, the
    header can be sent again (a replay)."""
    from multidict import CIMultiDict

    from meterkit.payments import evm, mpp
    from support.http import request
    from support.payments import CHAT

    status, headers, _ = request(url, "POST", path, CHAT)
    assert status == 402, status
    (ch,) = mpp.parse_challenges(CIMultiDict(headers.items()).getall("WWW-Authenticate"))
    req = ch.request_json
    nonce = evm.challenge_nonce(ch.id, ch.realm)
    fields, sig = evm.sign(
        secret_key,
        asset,
        to=req["recipient"],
        value=int(req["amount"]),
        valid_before=int(mpp.parse_rfc3339(ch.expires or "") or 0),
        nonce=nonce,
    )
    token_ = mpp.credential_token(ch, {"type": "authorization", **fields, "signature": sig})
    return f"Payment {token_}", evm.parse_authorization(fields, sig)


def ledger_settle(config: Path, *args: str) -> tuple[int, list[dict[str, Any]], str]:
    """Run `meterkit ledger settle` as a command: (exit code, its JSON lines, stderr)."""
    import subprocess
    import sys

    import orjson

    done = subprocess.run(
        [sys.executable, "-m", "meterkit", "ledger", "settle", "--config", str(config), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    rows = [orjson.loads(line) for line in done.stdout.splitlines() if line.strip()]
    return done.returncode, rows, done.stderr


def claims(db: str) -> list[dict[str, Any]]:
    """The ledger's claim rows (SQLite)."""
    import sqlite3

    with sqlite3.connect(db) as c:
        c.row_factory = sqlite3.Row
        return [dict(r) for r in c.execute("SELECT * FROM payment_claims ORDER BY created_at")]


def settlement_rows(db: str) -> list[tuple[str, str, str | None]]:
    """(settler, outcome, reference) of every settlement attempt, oldest first."""
    import sqlite3

    with sqlite3.connect(db) as c:
        return list(c.execute("SELECT settler, outcome, reference FROM settlements ORDER BY at"))

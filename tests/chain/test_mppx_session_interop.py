"""Interop with the one independent session client on npm: mppx@0.11.0's
`sessionLegacyManager` (Tempo v1 profile) streams a completion paid per token through
meterkit, from a channel in meterkit's escrow deployed with the "Tempo Stream Channel"
EIP-712 name on anvil. It starts its vouchers at the on-chain `settled` plus one token's
price, so the stream pauses for a voucher (need-voucher → voucher POST → resume) at every
token; it closes with its highest voucher and meterkit settles on chain what was delivered."""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path
from typing import Any

import orjson
import pytest

from meterkit import count_tokens
from meterkit.budgets.registry import key_sha256
from meterkit.chain import escrow
from support.chain import SECRET, UNIT, LocalChain
from support.escrow import OPERATOR, accepts, open_channel, payer, sessions
from support.inproc import chat, gateway, llm_config

ROOT = Path(__file__).resolve().parents[2]
MODULES = ROOT / ".chain" / "node_modules"
SCRIPT = ROOT / "tests" / "support" / "mppx_session.mjs"
CHAT = "/v1/chat/completions"
PRICE = 10  # $0.00001 a completion token
API_KEY = "sk-mppx-payer-0123456789"


def node_or_skip() -> str:
    node = shutil.which("node")
    if node is None or not (MODULES / "mppx").is_dir():
        if os.environ.get("METERKIT_REQUIRE_CHAIN"):
            pytest.fail("METERKIT_REQUIRE_CHAIN is set but node or .chain/ (mppx) is missing")
        pytest.skip("no node or mppx: run `make chain`")
    return node


@pytest.mark.parametrize("keys", [False, True], ids=["open", "keys-required"])
def test_mppx_session_legacy_manager_pays_a_stream_per_token_through_meterkit(
    chain: LocalChain, chain_escrows: dict[str, str], tmp_path: Path, keys: bool
) -> None:
    """`keys-required`: the route needs a registered API key, which mppx sends with the
    stream request only (as `x-api-key`); its voucher POSTs and its close carry none and are
    served, authenticated by their signature and channel."""
    node = node_or_skip()
    esc = chain_escrows["tempo"]
    key, address = payer(chain)
    cid = open_channel(chain, esc, key, UNIT)
    before = chain.balance(OPERATOR)
    t = llm_config("{mock}")
    t["routes"] = {
        f"POST {CHAT}": {
            "upstream": "mock",
            "session": {"price": "$0.00001", "voucher_timeout": "10s"},
        }
    }
    tree: dict[str, Any] = {
        **t,
        "accepts": accepts(chain),
        "payments": {"secret": SECRET, "settlement": {"type": "deferred"}},
        "ledger": {"type": "sqlite", "path": str(tmp_path / "l.db")},
        "sessions": sessions(chain, esc),
    }
    own: dict[str, str] = {}
    if keys:
        tree["keys"] = {"entries": {"alice": {"sha256": key_sha256(API_KEY)}}}
        tree["routes"][f"POST {CHAT}"]["keys"] = "required"
        own = {"x-api-key": API_KEY}

    async def go() -> dict[str, Any]:
        async with gateway(tree) as g:
            args = {
                "rpcUrl": chain.url,
                "chainId": chain.node.chain_id,
                "escrow": esc,
                "url": g.url + CHAT,
                "payerKey": "0x" + key.hex(),
                "channelId": cid,
                "maxDeposit": "1",
                # A few tokens: mppx sends a voucher per token, meterkit allows ~10 a second.
                "headers": {"x-mock-length": "6", "x-mock-tps": "0", **own},
                "body": chat(),
            }
            proc = await asyncio.create_subprocess_exec(
                node,
                str(SCRIPT),
                str(MODULES),
                orjson.dumps(args).decode(),
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            out, err = await asyncio.wait_for(proc.communicate(), 120)
            assert proc.returncode == 0, err.decode()
            result: dict[str, Any] = orjson.loads(out.splitlines()[-1])
            records = [r for r in await g.records(2) if r.status == 200 and r.stream]
            result["records"] = records
            return result

    result = asyncio.run(go())
    text = "".join(result["deltas"])
    tokens = count_tokens(text, "gpt-4o")
    assert tokens == 6
    assert result["channelId"] == cid
    # The first voucher covered one token: every later token was bought mid-stream, each
    # with a need-voucher → voucher POST → resume.
    assert result["voucherPosts"] == tokens - 1
    assert int(result["cumulative"]) == tokens * PRICE
    (final,) = [r for r in result["receipts"] if r["spent"] == str(tokens * PRICE)]
    assert final["method"] == "tempo" and final["intent"] == "session"
    assert final["units"] == tokens
    (record,) = result["records"]
    assert record.completion_tokens == tokens
    assert record.payment["completion_units"] == tokens
    close = result["close"]
    assert close["method"] == "tempo" and close["txHash"].startswith("0x")
    assert close["spent"] == str(tokens * PRICE)
    on_chain = escrow.read_channel(chain.url, esc, cid)
    assert on_chain.finalized and on_chain.settled == tokens * PRICE
    assert chain.balance(OPERATOR) - before == tokens * PRICE
    assert chain.balance(address) == 10 * UNIT - tokens * PRICE

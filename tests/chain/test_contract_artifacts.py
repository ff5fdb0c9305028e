"""The committed artifacts (the token, the session escrow) are what solc-js compiles from
`contracts/` today, and the deployed token speaks EIP-3009 the way meterkit signs it."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from meterkit.chain import token
from support.chain import LocalChain

ROOT = Path(__file__).resolve().parents[2]
MODULES = ROOT / ".chain" / "node_modules"


def test_a_fresh_solc_js_compile_matches_the_committed_artifact(tmp_path: Path) -> None:
    node = shutil.which("node")
    if node is None or not (MODULES / "solc").is_dir():
        if os.environ.get("METERKIT_REQUIRE_CHAIN"):
            pytest.fail("METERKIT_REQUIRE_CHAIN is set but node or .chain/ (solc-js) is missing")
        pytest.skip("no node or solc-js: run `make chain`")
    subprocess.run(
        [node, str(ROOT / "contracts" / "build.mjs"), str(MODULES), str(tmp_path)],
        check=True,
        capture_output=True,
        timeout=240,
    )
    committed = ROOT / "python" / "meterkit" / "chain" / "artifacts"
    names = sorted(p.name for p in committed.glob("*.json"))
    assert names == ["MeterkitEscrow.json", "MeterkitUSD.json"]
    assert sorted(p.name for p in tmp_path.glob("*.json")) == names
    for name in names:
        assert (tmp_path / name).read_text() == (committed / name).read_text(), (
            f"contracts/ changed ({name}): run `make contracts` and commit the artifact"
        )


def test_the_deployed_token_has_usdc_s_eip712_domain(chain: LocalChain) -> None:
    from eth_account.messages import encode_typed_data

    from meterkit.chain.abi import encode_call
    from meterkit.payments import evm

    url, address = chain.url, chain.token
    separator = chain.node.call(
        "eth_call", {"to": address, "data": encode_call("DOMAIN_SEPARATOR()")}
    )

    asset = token.asset(address)
    typed = encode_typed_data(
        domain_data=evm.eip712_domain(asset),
        message_types=evm.TRANSFER_WITH_AUTHORIZATION,
        message_data={
            "from": "0x" + "11" * 20,
            "to": "0x" + "22" * 20,
            "value": 1,
            "validAfter": 0,
            "validBefore": 1,
            "nonce": b"\0" * 32,
        },
    )
    assert separator == "0x" + typed.header.hex()
    assert token.balance(url, address, "0x" + "11" * 20) == 0

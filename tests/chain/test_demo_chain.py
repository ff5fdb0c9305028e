"""`make demo-chain`: the demo's paid route on a local anvil, balances before and after a
`meterkit pay`."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any


def test_the_chain_demo_moves_one_cent(anvil_node: Any, tmp_path: Path) -> None:
    # `anvil_node`: the demo starts its own node, but fails (CI) or skips the same way.
    done = subprocess.run(
        [sys.executable, "-m", "meterkit.chain.demo"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    before, after = done.stdout.split("before:")[1].split("after:")
    assert re.search(r"payer .* 10\.000000 USDC", before)
    assert re.search(r"wallet .* 0\.000000 USDC", before)
    assert re.search(r"payer .* 9\.990000 USDC", after)
    assert re.search(r"wallet .* 0\.010000 USDC", after)
    assert re.search(r"relayer .* 9999\.9\d+ ETH", after)  # gas paid
    assert "paid: 0.01" in done.stderr

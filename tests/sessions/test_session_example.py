"""The README's "Per-token payments in your own app" is examples/session_server.py: run its
self-test as a user would (an aiohttp app selling its stream per token, paid by meterkit's
SessionClient over a prepaid channel)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "session_server.py"


def test_the_session_server_example_sells_its_stream_per_token() -> None:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "python"), os.environ.get("PYTHONPATH", "")]),
    }
    out = subprocess.run(
        [sys.executable, str(EXAMPLE), "--self-test"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=True,
    ).stdout.splitlines()
    assert out[0].startswith("HTTP 200: need-voucher → voucher → resume")
    assert not out[0].endswith(" 0 times")
    delivered = out[1].split()[1]
    assert f"receipt: units {delivered}, spent {int(delivered) * 10}" in out[1]
    assert out[2] == f"channel: spent {int(delivered) * 10}, units {delivered}"
    assert out[3] == "ok"
    assert "examples/session_server.py" in (ROOT / "README.md").read_text()

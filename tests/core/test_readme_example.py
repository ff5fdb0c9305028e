"""The README's library example is examples/meter_stream.py: run it as a user would."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_library_example_runs_and_cuts_at_its_limit() -> None:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "python"), os.environ.get("PYTHONPATH", "")]),
    }
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "meter_stream.py")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=True,
    ).stdout.splitlines()
    assert out[0] == "4"
    assert out[2].startswith("20 counted")  # cut at exactly its limit, counted locally
    assert out[3].endswith("ends with [DONE]: True")
    assert "examples/meter_stream.py" in (ROOT / "README.md").read_text()

"""RSS held by streams with an unfinished event (issue 12 #9): N meters are each fed one
event of `size` bytes that never ends, in 64 KiB reads, and the process's resident set is
read before and after. Not a test (no assertions); figures go to the notes in rust/budget.rs.

    .venv/bin/python benches/pending_rss.py [streams] [MiB] [budget MiB or "none"]
"""

from __future__ import annotations

import sys

from meterkit import StreamMeter
from meterkit._core import set_pending_budget


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def main() -> None:
    streams = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    if len(sys.argv) > 3:
        set_pending_budget(None if sys.argv[3] == "none" else int(sys.argv[3]) << 20)
    size = int(float(sys.argv[2]) * (1 << 20)) if len(sys.argv) > 2 else 15 << 20
    read = b"x" * (64 << 10)
    before = rss_mib()
    meters = []
    failed = 0
    for _ in range(streams):
        m = StreamMeter("openai-chat")
        m.feed(b'data: {"choices":[{"delta":{"content":"')
        for _ in range(size // len(read)):
            m.feed(read)
        failed += m.state == "failed"
        meters.append(m)
    after = rss_mib()
    held = (after - before) / streams
    print(
        f"{streams} streams x {size / (1 << 20):.0f} MiB unfinished: RSS {before:.0f} -> "
        f"{after:.0f} MiB, {held:.1f} MiB per stream ({held * (1 << 20) / size:.2f}x), "
        f"{failed} ended by the budget"
    )


if __name__ == "__main__":
    main()

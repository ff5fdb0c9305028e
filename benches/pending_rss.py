"""RSS held by streams with an unfinished event (issue 12 #9): N meters are each fed one
event of `size` bytes that never ends, in 64 KiB reads taken in turn across the streams (as
a proxy's concurrent streams read), and the process's resident set is read before and after.
Not a test (no assertions); figures go to the notes in rust/budget.rs and benches/RESULTS.md.

In turn, because the budget marks the stream holding the most and that stream ends at its
next read: fed one after the other, a marked stream that already had all its reads would
never end, and the figure would say nothing about the budget.

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
    meters = [StreamMeter("openai-chat") for _ in range(streams)]
    for m in meters:
        m.feed(b'data: {"choices":[{"delta":{"content":"')
    for _ in range(size // len(read)):
        for m in meters:
            m.feed(read)
    # One more read each: a stream marked after its last read ends now, as it would at its
    # next read in the proxy.
    for m in meters:
        m.feed(b"x")
    failed = sum(m.state == "failed" for m in meters)
    after = rss_mib()
    held = (after - before) / streams
    print(
        f"{streams} streams x {size / (1 << 20):.0f} MiB unfinished: RSS {before:.0f} -> "
        f"{after:.0f} MiB, {held:.1f} MiB per stream ({held * (1 << 20) / size:.2f}x), "
        f"{failed} ended by the budget"
    )


if __name__ == "__main__":
    main()

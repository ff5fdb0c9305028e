"""`meterkit bench`: measurements with their baselines, side by side in the same run.

Suites:
- ``core``: the Rust core against a pure-Python pipeline (bytes scanning + orjson + tiktoken)
  and against ``tiktoken`` for counting.
- ``proxy``: the proxy against a direct connection and a plain pass-through proxy.
- ``budgets``, ``payments``: admission and enforcement costs; signatures and settlement.
- ``sessions``: per-token streamed payments (pause/resume round trip, CPU per paid event,
  voucher verifications, overrun after a disconnect, memory of paused streams).

Figures are only meaningful on a release build of the extension; the harness says which
build it measured and marks debug figures as such.
"""

from __future__ import annotations

import argparse

__all__ = ["run"]


def run(args: argparse.Namespace) -> int:
    if args.quick:
        import sys

        print(
            f"meterkit bench {args.suite}: --quick runs small sizes: a smoke run, "
            "not a measurement; do not quote these figures",
            file=sys.stderr,
        )
    if args.suite == "core":
        from meterkit.bench.core import main

        return main(quick=args.quick, json_out=args.json_out)
    if args.suite == "payments":
        from meterkit.bench.payments import main as payments_main

        return payments_main(quick=args.quick, json_out=args.json_out)
    if args.suite == "budgets":
        from meterkit.bench.budgets import main as budgets_main

        return budgets_main(quick=args.quick, json_out=args.json_out)
    if args.suite == "sessions":
        from meterkit.bench.sessions import main as sessions_main

        return sessions_main(quick=args.quick, json_out=args.json_out)
    if args.suite == "proxy":
        from meterkit.bench.proxy import main as proxy_main

        return proxy_main(quick=args.quick, json_out=args.json_out)
    raise SystemExit(f"unknown suite {args.suite!r}")

"""`meterkit bench`: measurements with their baselines, side by side in the same run.

Suites:
- ``core``: the Rust core against a pure-Python pipeline (bytes scanning + orjson + tiktoken)
  and against ``tiktoken`` for counting.

Figures are only meaningful on a release build of the extension; the harness says which
build it measured and marks debug figures as such.
"""

from __future__ import annotations

import argparse

__all__ = ["run"]


def run(args: argparse.Namespace) -> int:
    if args.suite == "core":
        from meterkit.bench.core import main

        return main(quick=args.quick, json_out=args.json_out)
    raise SystemExit(f"unknown suite {args.suite!r}")

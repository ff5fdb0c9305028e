"""`meterkit bench`: measurements with their baselines, side by side in the same run.

Suites:
- ``core``: the Rust core against a pure-Python pipeline (bytes scanning + orjson + tiktoken)
  and against ``tiktoken`` for counting.
- ``proxy``: the proxy against a direct connection and a plain pass-through proxy.
- ``budgets``, ``payments``: admission and enforcement costs; signatures and settlement.
- ``sessions``: per-token streamed payments (pause/resume round trip, CPU per paid event,
  voucher verifications, overrun after a disconnect, memory of paused streams).
- ``workers``: throughput of ``serve --workers N``, N = 1 and 2 (streams per second, CPU).
- ``peers``: meterkit beside nginx (a C pass-through) and LiteLLM's proxy in front of the same
  mock, when they are installed (CPU per event, added TTFT, throughput; ratios to meterkit).

Each suite prints its tables and draws PNG plots of the same figures (`bench/plots.py`) into
`--plots DIR` (default `benches/results/plots/` in the repository, else a temporary
directory); a one-line progress indicator runs on stderr when it is a terminal (`--quiet`
turns it off).

Figures are only meaningful on a release build of the extension; the harness says which
build it measured and marks debug figures as such.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import sys
from pathlib import Path
from typing import Any

import orjson

__all__ = ["run"]


SUITES = ("core", "proxy", "budgets", "payments", "sessions", "workers", "peers")
# options only one suite takes (its `main` gets them as keywords)
SUITE_OPTIONS = {"peers": ("nginx", "litellm")}


def _mark_quick(json_out: str | None, quick: bool) -> None:
    """Every suite's JSON says whether it was a --quick smoke run (figures not to quote)."""
    if not json_out:
        return
    path = Path(json_out)
    try:
        data = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return
    if isinstance(data, dict):
        data["quick"] = quick
        path.write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2))


def _plot_output(args: argparse.Namespace) -> tuple[Any, bool]:
    """The suite's plots.Output (None: no plots) and whether its directory is temporary."""
    from meterkit.bench import plots
    from meterkit.bench.timing import environment

    if getattr(args, "no_plots", False):
        return None, False
    if not plots.available():
        print(
            f"meterkit bench {args.suite}: matplotlib is not installed, no plots "
            "(`pip install 'meterkit[bench]'` adds it)",
            file=sys.stderr,
        )
        return None, False
    if getattr(args, "plots", None):
        directory, temporary = Path(args.plots).expanduser(), False
    else:
        directory, temporary = plots.default_directory()
    note = plots.footnote(environment(), args.quick)
    return plots.Output(directory, args.suite, note), temporary


def run(args: argparse.Namespace) -> int:
    from meterkit.bench.timing import progress

    if args.suite not in SUITES:
        raise SystemExit(f"unknown suite {args.suite!r}")
    options: dict[str, Any] = {}
    for suite, names in SUITE_OPTIONS.items():
        for name in names:
            value = getattr(args, name, None)
            if suite == args.suite:
                options[name] = value
            elif value is not None:
                print(
                    f"meterkit bench {args.suite}: --{name} is an option of the {suite} suite",
                    file=sys.stderr,
                )
                return 2
    if args.quick:
        print(
            f"meterkit bench {args.suite}: --quick runs small sizes: a smoke run, "
            "not a measurement; do not quote these figures",
            file=sys.stderr,
        )
    out, temporary = _plot_output(args)
    main = importlib.import_module(f"meterkit.bench.{args.suite}").main
    progress.enabled = sys.stderr.isatty() and not getattr(args, "quiet", False)
    progress.suite = args.suite
    try:
        with (
            contextlib.redirect_stdout(progress.wrap(sys.stdout))
            if progress.enabled
            else (contextlib.nullcontext())
        ):
            code: int = main(quick=args.quick, json_out=args.json_out, plots=out, **options)
    finally:
        progress.clear()
        progress.enabled = False
    _mark_quick(args.json_out, args.quick)
    if out is not None and out.written:
        where = (
            " (a temporary directory: pass --plots DIR to keep them elsewhere)" if temporary else ""
        )
        print(f"\nPlots written to {out.directory}{where}:")
        for p in out.written:
            print(f"  {p}")
    return code

"""The `meterkit` command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

__all__ = ["main"]


def _meter(args: argparse.Namespace) -> int:
    from meterkit.commands.meter import run

    return run(args)


def _bench(args: argparse.Namespace) -> int:
    from meterkit.bench import run

    return run(args)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="meterkit",
        description="Streaming metering for paid and budgeted LLM APIs.",
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    m = sub.add_parser(
        "meter",
        help="meter an SSE stream (a file, stdin, or the built-in sample) and print its usage",
        description="Meter an LLM SSE stream and print its usage as JSON. Without INPUT, "
        "meters a built-in sample stream.",
    )
    m.add_argument("input", nargs="?", help="a file holding the raw SSE bytes, or - for stdin")
    m.add_argument(
        "--format",
        default="auto",
        help="auto (default), openai-chat, openai-responses, openai-completions or anthropic",
    )
    m.add_argument(
        "--model", help="model whose tokenizer counts (default: the one the stream names)"
    )
    m.add_argument("--limit", type=int, help="truncate at this many completion tokens")
    m.add_argument("--ending", default="graceful_close", choices=["graceful_close", "error_chunk"])
    m.add_argument("--output", help="write the forwarded (possibly truncated) stream here")
    m.add_argument("--sample", default="openai-chat", help="format of the built-in sample")
    m.set_defaults(func=_meter)

    b = sub.add_parser("bench", help="run the benchmarks (release build) with baselines")
    b.add_argument("suite", choices=["core"], help="core: Rust core versus pure Python / tiktoken")
    b.add_argument(
        "--quick", action="store_true", help="small sizes: a smoke run, not a measurement"
    )
    b.add_argument("--json", dest="json_out", help="also write the figures as JSON to this file")
    b.set_defaults(func=_bench)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args))
    except BrokenPipeError:
        return 0
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

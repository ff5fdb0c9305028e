"""`meterkit usage report`: tokens and cost from the usage store (and the ledger, for paid
routes), grouped by key, model, route and/or day: a table, CSV or JSON."""

from __future__ import annotations

import argparse
import asyncio
import csv
import sys
from typing import Any

import orjson

from meterkit.commands import EXIT_FAILED, EXIT_OK, EXIT_USAGE, CommandError, load_config_or_report
from meterkit.config import Config


def run(args: argparse.Namespace) -> int:
    from meterkit.usage import report as rep

    if args.demo:
        from meterkit.commands.serve import demo_config

        config: Config | None = demo_config("http://127.0.0.1:9", "127.0.0.1", 0, args.data_dir)
    else:
        config = load_config_or_report(args.config)
    if config is None:
        return EXIT_FAILED
    by = [d.strip() for d in args.by.split(",") if d.strip()]
    bad = [d for d in by if d not in rep.DIMENSIONS]
    if not by or bad:
        raise CommandError(
            EXIT_USAGE, f"--by takes {', '.join(rep.DIMENSIONS)} (comma-separated), got {args.by!r}"
        )
    try:
        since = rep.parse_time(args.since) if args.since else None
        until = rep.parse_time(args.until) if args.until else None
        if since is not None and until is not None and until <= since:
            raise CommandError(
                EXIT_USAGE,
                f"--until ({args.until}) is not after --since ({args.since}): an empty window",
            )
        rows = asyncio.run(rep.report(config, by, since, until, args.key))
    except ValueError as e:
        raise CommandError(EXIT_USAGE if "not a time" in str(e) else EXIT_FAILED, str(e)) from None
    t = rep.total(rows)
    if args.json:
        out = {
            "by": by,
            "since": since,
            "until": until,
            "rows": [r.as_dict(by) for r in rows],
            "total": {k: v for k, v in t.as_dict(["group"]).items() if k != "group"},
        }
        sys.stdout.write(orjson.dumps(out, option=orjson.OPT_INDENT_2).decode() + "\n")
    elif args.csv:
        w = csv.writer(sys.stdout)
        header = [*by, "requests", "prompt_tokens", "completion_tokens", "paid", "priced", "cost"]
        w.writerow(header)
        for r in rows:
            d = r.as_dict(by)
            w.writerow([d[h] for h in header])
    else:
        _table(by, rows, t)
    return EXIT_OK


def _money(d: Any) -> str:
    return f"${d:,.6f}".rstrip("0").rstrip(".") if d else "$0"


def _table(by: list[str], rows: list[Any], t: Any) -> None:
    header = [*by, "requests", "prompt", "completion", "paid", "priced", "cost"]
    lines = [
        [
            *r.group,
            f"{r.requests:,}",
            f"{r.prompt_tokens:,}",
            f"{r.completion_tokens:,}",
            _money(r.paid),
            _money(r.priced),
            _money(r.cost),
        ]
        for r in [*rows, t]
    ]
    lines[-1] = ["total", *[""] * (len(by) - 1), *lines[-1][1:]]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *lines, strict=True)]
    numeric = len(by)

    def fmt(cells: list[str]) -> str:
        return "  ".join(
            c.rjust(w) if i >= numeric else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    print(fmt(header))
    for line in lines[:-1]:
        print(fmt(line))
    print(fmt(["-" * w for w in widths]))
    print(fmt(lines[-1]))


def add_parser(sub: Any) -> None:
    u = sub.add_parser("usage", help="usage records: reports of tokens and cost")
    usub = u.add_subparsers(dest="usage_command", metavar="ACTION", required=True)
    r = usub.add_parser(
        "report",
        help="tokens and cost per key, model, route or day",
        description="Tokens and cost from the usage store (usage: sqlite or postgres). Paid "
        "routes cost what the ledger says they settled; other routes their tokens at the "
        "prices: table. Times are UTC.",
    )
    where = r.add_mutually_exclusive_group(required=True)
    where.add_argument("--config")
    where.add_argument("--demo", action="store_true", help="the records of `serve --demo`")
    r.add_argument("--data-dir", default="meterkit-data", help="with --demo: its data folder")
    r.add_argument(
        "--by", default="key", help="key, model, route, day, or several: key,model (default key)"
    )
    r.add_argument("--since", help="today, yesterday, 24h, 7d, 2025-01-31, 2025-01-31T12:00")
    r.add_argument("--until", help="the end of the window (exclusive), same forms")
    r.add_argument("--key", help="only this key (an alias, or a budget key such as ak_…)")
    fmt = r.add_mutually_exclusive_group()
    fmt.add_argument("--csv", action="store_true", help="CSV on stdout")
    fmt.add_argument("--json", action="store_true", help="JSON on stdout")
    r.set_defaults(func=run)

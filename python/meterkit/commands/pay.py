"""`meterkit pay`, `meterkit keygen`, `meterkit ledger export`, `meterkit mock-facilitator`."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from decimal import Decimal, InvalidOperation
from pathlib import Path

import orjson

from meterkit import _core
from meterkit.commands import EXIT_DECLINED, CommandError, load_config_or_report


def _read_key(path: str | None) -> bytes:
    raw = os.environ.get("METERKIT_PRIVATE_KEY")
    if path:
        raw = Path(path).read_text().strip()
    if not raw:
        raise SystemExit(
            "meterkit pay: give --key-file (from `meterkit keygen`) or set METERKIT_PRIVATE_KEY"
        )
    try:
        key = bytes.fromhex(raw.removeprefix("0x"))
        _core.address_of(key)
    except ValueError:
        raise SystemExit("meterkit pay: the private key is not 32 bytes of hex") from None
    return key


def _money(text: str | None) -> Decimal | None:
    if text is None:
        return None
    try:
        return Decimal(text.removeprefix("$"))
    except InvalidOperation:
        raise SystemExit(
            f"meterkit pay: not an amount: {text!r} (write it like 0.50 or $0.50)"
        ) from None


def keygen(args: argparse.Namespace) -> int:
    from meterkit.client import generate_key

    key = generate_key()
    address = _core.address_of(key)
    if args.out:
        p = Path(args.out)
        if p.exists() and not args.force:
            print(f"meterkit keygen: {p} exists (use --force to overwrite)", file=sys.stderr)
            return 1
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write("0x" + key.hex() + "\n")
        print(f"address {address}\nkey written to {p} (mode 600)")
    else:
        print(f"address {address}\nprivate key 0x{key.hex()}")
    return 0


def pay(args: argparse.Namespace) -> int:
    from meterkit.client import PayingClient, PaymentDeclined

    key = _read_key(args.key_file)
    data = args.data.encode() if args.data else None
    headers = dict(h.split(":", 1) for h in args.header) if args.header else {}
    headers = {k.strip(): v.strip() for k, v in headers.items()}
    if data is not None and "Content-Type" not in headers:
        headers["Content-Type"] = "application/json"
    method = args.method or ("POST" if data is not None else "GET")
    if args.max_amount is None and not args.no_cap and not args.dry_run:
        # Declining to pay without a cap (3), as it always has; in the CLI's own words.
        raise CommandError(
            EXIT_DECLINED,
            "pay: give --max-amount (the most to pay for this request) or --no-cap, "
            "or --dry-run to see the price",
        )
    if getattr(args, "session", None):
        return _pay_session(args, key, method, data, headers)

    async def run() -> int:
        async with PayingClient(
            key,
            max_per_request=_money(args.max_amount),
            no_cap=bool(getattr(args, "no_cap", False)),
            dry_run=args.dry_run,
        ) as client:
            try:
                result = await client.request(method, args.url, data=data, headers=headers)
            except PaymentDeclined as e:
                print(f"meterkit pay: not paying: {e}", file=sys.stderr)
                return 3
            for o in result.offers:
                print(
                    f"offer: {o.price} {o.asset.symbol} on {o.asset.network} to {o.pay_to} "
                    f"({o.protocol})",
                    file=sys.stderr,
                )
            if args.dry_run:
                print("dry run: nothing paid", file=sys.stderr)
                return 0
            # Shown whatever the status: a 404 after settlement was still paid for.
            if result.paid is not None:
                print(
                    f"paid: {result.paid.price} {result.paid.asset.symbol} from {client.address}"
                    f" ({result.paid.protocol}, HTTP {result.status})",
                    file=sys.stderr,
                )
            if result.receipt is not None:
                print("receipt: " + orjson.dumps(result.receipt).decode(), file=sys.stderr)
            sys.stdout.buffer.write(result.body)
            sys.stdout.flush()
            if result.status >= 400:
                print(f"\nmeterkit pay: HTTP {result.status}", file=sys.stderr)
                return 1
            return 0

    return asyncio.run(run())


def _pay_session(
    args: argparse.Namespace, key: bytes, method: str, data: bytes | None, headers: dict[str, str]
) -> int:
    """`meterkit pay --session CHANNEL`: stream a completion paid per token, signing each
    voucher the gateway asks for (within --max-amount), the events to stdout."""
    from meterkit.client.session import SessionClient, SessionDeclined

    cap = _money(args.max_amount)
    if cap is None and not args.no_cap:
        print("meterkit pay: not paying: give --max-amount (or --no-cap)", file=sys.stderr)
        return 3

    async def run() -> int:
        async with SessionClient(
            key, args.session, max_total=cap if cap is not None else Decimal(10**30)
        ) as client:
            try:
                result = await client.stream(
                    method, args.url, json=orjson.loads(data or b"{}"), headers=headers
                )
            except SessionDeclined as e:
                print(f"meterkit pay: not paying: {e}", file=sys.stderr)
                return 3
        sys.stdout.buffer.write(result.body)
        sys.stdout.flush()
        for need in result.needs:
            print(f"need-voucher: {orjson.dumps(need).decode()}", file=sys.stderr)
        if result.vouchers:
            print(f"vouchers signed: {result.vouchers}", file=sys.stderr)
        if result.receipt is not None:
            print("receipt: " + orjson.dumps(result.receipt).decode(), file=sys.stderr)
        if result.status >= 400:
            print(f"\nmeterkit pay: HTTP {result.status}", file=sys.stderr)
            return 1
        return 0

    return asyncio.run(run())


def export_rows(
    settleable: list[dict[str, object]], now: float, margin: float
) -> list[dict[str, object]]:
    """The JSON lines of `ledger export`: every row settleable (its authorization still valid
    at `now`), with `expires_in` seconds and `expiring` when less than `margin` is left."""
    out = []
    for r in settleable:
        row = dict(r)
        row["authorization"] = orjson.loads(str(row.pop("authorization_json")))
        left = int(str(row["valid_before"])) - now
        row["settleable"] = True
        row["expires_in"] = int(left)
        row["expiring"] = left < margin
        out.append(row)
    return out


def ledger_export(args: argparse.Namespace) -> int:
    """Queued authorizations for batch submission. Expired ones are never exported (they
    cannot settle any more): they are counted on stderr, and `--mark` moves them out of the
    queue (status `expired`, for reconciliation: the payer holds a success receipt)."""
    import time

    from meterkit.payments.ledger import make_ledger

    config = load_config_or_report(args.config)
    if config is None:
        return 1
    lc = config.ledger
    margin = config.payments.settlement.expiry_margin
    now = time.time()

    async def run() -> tuple[list[dict[str, object]], list[dict[str, object]]]:
        ledger = make_ledger(lc.type, lc.path, lc.url, lc.schema)
        await ledger.open()
        try:
            expired = await ledger.expire_queued(now, mark=args.mark)
            return await ledger.export_queued(mark=args.mark, now=now), expired
        finally:
            await ledger.close()

    settleable, expired = asyncio.run(run())
    rows = export_rows(settleable, now, margin)
    out = sys.stdout if not args.out else open(args.out, "w")  # noqa: SIM115
    try:
        for r in rows:
            out.write(orjson.dumps(r).decode() + "\n")
    finally:
        if out is not sys.stdout:
            out.close()
    expiring = sum(1 for r in rows if r["expiring"])
    print(
        f"{len(rows)} queued authorization(s){' marked exported' if args.mark else ''}"
        + (f", {expiring} expiring within {margin:g} s: submit them first" if expiring else ""),
        file=sys.stderr,
    )
    if expired:
        print(
            f"{len(expired)} queued authorization(s) expired before export and cannot be "
            f"settled{' (marked expired)' if args.mark else ''}: "
            + ", ".join(str(r["claim_key"]) for r in expired[:5])
            + (" …" if len(expired) > 5 else ""),
            file=sys.stderr,
        )
    return 0


def ledger_settle(args: argparse.Namespace) -> int:
    """Submit the deferred queue on chain and reconcile the ledger with the chain (see
    `payments.batch`). One JSON line per row touched on stdout, a summary on stderr. Exit 0
    when every row reached a final status, 2 when some are still pending (run it again)."""
    import time
    from collections import Counter

    from meterkit.payments.batch import settle_ledger
    from meterkit.payments.ledger import journal, make_ledger
    from meterkit.payments.onchain import OnchainSettler

    config = load_config_or_report(args.config)
    if config is None:
        return 1
    settlement = config.payments.settlement
    chain = settlement.chain
    if chain is None:
        print(
            "meterkit ledger settle: the config's payments.settlement has no rpc_url and "
            "relayer_key (type: deferred or onchain) to submit with",
            file=sys.stderr,
        )
        return 1
    lc = config.ledger

    async def run() -> list[dict[str, object]]:
        ledger = make_ledger(lc.type, lc.path, lc.url, lc.schema)
        await ledger.open()
        settler = OnchainSettler(chain, settlement.timeout, journal(ledger))
        try:
            rows = await settle_ledger(
                ledger,
                settler,
                now=time.time(),
                stale_after=args.stale_after,
                concurrency=args.concurrency,
                retries=args.retries,
                backoff=args.backoff,
            )
            return [r.as_dict() for r in rows]
        finally:
            await settler.close()
            await ledger.close()

    rows = asyncio.run(run())
    for r in rows:
        sys.stdout.write(orjson.dumps(r).decode() + "\n")
    sys.stdout.flush()
    counts = Counter(str(r["status"]) for r in rows)
    print(
        "ledger settle: "
        + (", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "nothing to do"),
        file=sys.stderr,
    )
    return 2 if counts.get("pending") else 0


def mock_facilitator(args: argparse.Namespace) -> int:
    from meterkit.mock.facilitator import run_facilitator

    key = ""
    if args.rpc_url:
        key = os.environ.get(args.relayer_key_env, "")
        if not key:
            print(
                f"meterkit mock-facilitator: --rpc-url settles on a real chain; put the relayer's "
                f"private key in ${args.relayer_key_env}",
                file=sys.stderr,
            )
            return 2
    run_facilitator(args.host, args.port, args.rpc_url, key)
    return 0


def openapi(args: argparse.Namespace) -> int:
    """`meterkit openapi --config PATH`: the OpenAPI document (with prices) of a config."""
    from meterkit.payments.discovery import openapi as build

    config = load_config_or_report(args.config)
    if config is None:
        return 1
    base = args.base_url or f"http://{config.gateway.host}:{config.gateway.port}"
    sys.stdout.write(orjson.dumps(build(config, base), option=orjson.OPT_INDENT_2).decode() + "\n")
    return 0

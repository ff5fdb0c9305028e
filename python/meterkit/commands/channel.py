"""`meterkit channel credit|list`: prepaid payment channels, the zero-setup way to pay a
session route per token. The operator credits a deposit (a payer paid off-chain, a free
trial); the payer signs vouchers against it exactly as for an on-chain escrow channel."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from dataclasses import asdict

from meterkit import _core
from meterkit.commands import load_config_or_report
from meterkit.config import Config
from meterkit.config.payments import Asset
from meterkit.config.units import parse_money
from meterkit.payments.pricing import base_units
from meterkit.sessions.channels import ZERO_ADDRESS, Channel, credited, prepaid_channel
from meterkit.sessions.stores import make_store
from meterkit.usage.cost import assets, from_base_units


def _config(args: argparse.Namespace) -> Config | None:
    if args.demo:
        from meterkit.commands.serve import demo_config

        return demo_config("http://127.0.0.1:9", "127.0.0.1", 0, args.data_dir)
    return load_config_or_report(args.config)


def credit(args: argparse.Namespace) -> int:
    config = _config(args)
    if config is None:
        return 1
    accepts = [
        a
        for a in config.accepts
        if args.network in (None, a.asset.network, a.asset.caip2)
        and args.asset in (None, a.asset.symbol)
    ]
    if not accepts:
        print("meterkit: no accepted asset matches --asset/--network", file=sys.stderr)
        return 1
    a = accepts[0]
    try:
        text = args.amount.strip()
        amount = base_units(parse_money(text if text.startswith("$") else "$" + text), a.asset)
        credited(0, amount)  # refused here, before anything is opened or stored
        if args.key_file:
            from meterkit.commands.pay import _read_key

            payer = _core.address_of(_read_key(args.key_file))
        else:
            payer = _core.checksum_address(args.payer)
        signer = _core.checksum_address(args.signer) if args.signer else ZERO_ADDRESS
    except ValueError as e:
        print(f"meterkit: {e}", file=sys.stderr)
        return 1
    salt = args.salt or "0x" + os.urandom(32).hex()
    channel = prepaid_channel(payer, a.pay_to, a.asset.address, a.asset.chain_id, salt, signer)

    async def run() -> Channel:
        store = make_store(config.ledger)
        await store.open()
        try:
            return await store.credit(channel, amount)
        finally:
            await store.close()

    try:
        out = asyncio.run(run())
    except ValueError as e:
        print(f"meterkit: {e}", file=sys.stderr)
        return 1
    if args.id:
        print(out.channel_id)  # for `CHANNEL=$(meterkit channel credit … --id)`
    elif args.json:
        print(_json({**asdict(out), "salt": salt}))
    else:
        print(_human(out, _assets(config), salt))
    return 0


def list_channels(args: argparse.Namespace) -> int:
    config = _config(args)
    if config is None:
        return 1

    async def run() -> list[Channel]:
        store = make_store(config.ledger)
        await store.open()
        try:
            return await store.list()
        finally:
            await store.close()

    known = _assets(config)
    for c in asyncio.run(run()):
        print(_json(asdict(c)) if args.json else _human(c, known))
    return 0


def _assets(config: Config) -> dict[str, Asset]:
    return assets(config.accepts)


def _money_of(amount: int, token: str, known: dict[str, Asset]) -> str:
    """`$0.0048 (4800 USDC base units)`: what an operator reads, and the exact figure."""
    asset = known.get(token.lower())
    if asset is None:
        return f"{amount} base units of {token}"
    value = from_base_units(amount, asset).normalize()
    return f"${value:f} ({amount} {asset.symbol} base units)"


def _human(c: Channel, known: dict[str, Asset], salt: str | None = None) -> str:
    state = "finalized" if c.finalized else "closing" if c.close_requested else "open"
    kind = "prepaid" if c.escrow.lower() == ZERO_ADDRESS else f"escrow {c.escrow}"
    lines = [
        f"channel {c.channel_id} ({kind}, {state})",
        f"  payer     {c.payer}",
        f"  payee     {c.payee}",
        f"  deposit   {_money_of(c.deposit, c.token, known)}",
        f"  accepted  {_money_of(c.accepted, c.token, known)}",
        f"  spent     {_money_of(c.spent, c.token, known)} for {c.units} token(s)",
    ]
    if c.finalized:
        lines.append(f"  settled   {_money_of(c.settled, c.token, known)}")
    if salt is not None:
        lines.append(f"  salt      {salt}")
    return "\n".join(lines)


def _json(obj: dict[str, object]) -> str:
    # The standard library's encoder: channel amounts are uint128, past orjson's 64 bits.
    return json.dumps(obj, separators=(",", ":"))

"""`meterkit budget show|grant|reset KEY`: through the running proxy's admin listener
(`admin:` in the config; the only way to reach in-memory budgets), or straight to the
shared Redis store (`budget_store: {type: redis}`), which needs no running proxy."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

import orjson

from meterkit.commands import EXIT_FAILED, EXIT_OK, CommandError, load_config_or_report
from meterkit.config import Config


def run(args: argparse.Namespace) -> int:
    config = load_config_or_report(args.config)
    if config is None:
        return EXIT_FAILED
    via = args.via
    if via == "auto":
        via = "admin" if config.admin is not None else "direct"
    if via == "admin":
        if config.admin is None and not args.admin_url:
            raise CommandError(EXIT_FAILED, "no admin: section in the config (or --admin-url)")
        status, result = asyncio.run(_over_admin(config, args))
    else:
        if config.budget_store.type != "redis":
            raise CommandError(
                EXIT_FAILED,
                "in-memory budgets live inside the proxy process: configure admin: "
                "{host, port, token} and run the proxy, or use budget_store: {type: redis}",
            )
        status, result = asyncio.run(_direct(config, args))
    out = orjson.dumps(result, option=orjson.OPT_INDENT_2).decode()
    if status >= 400:
        print(f"meterkit: {result.get('detail', result)}", file=sys.stderr)
        return EXIT_FAILED
    print(out)
    return EXIT_OK


async def _over_admin(config: Config, args: argparse.Namespace) -> tuple[int, dict[str, Any]]:
    import aiohttp

    if args.admin_url:
        base = args.admin_url.rstrip("/")
    else:
        assert config.admin is not None
        host = config.admin.host
        host = "127.0.0.1" if host in ("0.0.0.0", "") else "[::1]" if host == "::" else host
        base = f"http://{host}:{config.admin.port}"
    token = config.admin.token if config.admin is not None else ""
    url = f"{base}/budgets/{args.key}"
    body: dict[str, Any] = {}
    if args.budget:
        body["budget"] = args.budget
    if args.action == "grant":
        body["tokens"] = args.tokens
    headers = {"Authorization": f"Bearer {token}"}
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        if args.action == "show":
            params = {"budget": args.budget} if args.budget else {}
            r = await session.get(url, headers=headers, params=params)
        else:
            r = await session.post(f"{url}/{args.action}", headers=headers, json=body)
        async with r:
            data = await r.read()
    try:
        parsed = orjson.loads(data)
    except orjson.JSONDecodeError:
        parsed = {"detail": data.decode(errors="replace")[:200]}
    return r.status, parsed if isinstance(parsed, dict) else {"detail": str(parsed)}


async def _direct(config: Config, args: argparse.Namespace) -> tuple[int, dict[str, Any]]:
    from meterkit.budgets import RedisBackend
    from meterkit.budgets import admin as budget_admin
    from meterkit.budgets.backends import BackendUnavailable
    from meterkit.budgets.registry import make_registry

    store = config.budget_store
    assert store.url is not None
    backend = RedisBackend(store.url, store.prefix, max(store.timeout, 2.0))
    registry = make_registry(config.keys) if config.keys is not None else None
    try:
        if registry is not None:
            await registry.open()
        try:
            return 200, await budget_admin.run(
                args.action, backend, config, registry, args.key, args.budget, args.tokens
            )
        except budget_admin.AdminError as e:
            return e.status, {"status": e.status, "code": e.code, "detail": e.detail}
        except BackendUnavailable as e:
            raise CommandError(6, f"budget store unreachable: {e}") from None
    finally:
        if registry is not None:
            await registry.close()
        await backend.close()


def add_parser(sub: Any) -> None:
    b = sub.add_parser(
        "budget",
        help="show, grant or reset a key's token budgets (admin listener or Redis)",
        description="KEY is a registered key's alias, or a budget key as usage records show "
        "it (ak_…, ip_…, payer_…). Through the proxy's admin listener when the config has "
        "admin:, else straight to a Redis budget store.",
    )
    b.add_argument("action", choices=["show", "grant", "reset"])
    b.add_argument("key")
    b.add_argument("--config", required=True)
    b.add_argument("--budget", help="one budget policy (default: every policy)")
    b.add_argument("--tokens", type=int, help="grant: tokens added to today's allowance (UTC day)")
    b.add_argument(
        "--via",
        choices=["auto", "admin", "direct"],
        default="auto",
        help="admin listener or Redis directly (auto: admin when configured)",
    )
    b.add_argument("--admin-url", help="the admin listener's URL (default: from admin:)")
    b.set_defaults(func=_checked)


def _checked(args: argparse.Namespace) -> int:
    if args.action == "grant" and (args.tokens is None or args.tokens <= 0):
        raise CommandError(2, "grant needs --tokens N (a positive integer)")
    return run(args)

"""`meterkit serve`, `meterkit validate` and `meterkit mock-llm`."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from meterkit.commands import (
    EXIT_FAILED,
    EXIT_LISTEN,
    EXIT_OK,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    CommandError,
    classify,
    describe,
    load_config_or_report,
)
from meterkit.config import Config, config_from_dict

DEMO_PORT = 8080


DEMO_WALLET = "0x000000000000000000000000000000000000dEaD"


def demo_config(upstream_url: str, host: str, port: int, data_dir: str = "meterkit-data") -> Config:
    """The embedded default: every LLM route to the built-in mock, usage in a SQLite file, and
    one paid route (USDC on Base Sepolia, settled into the local ledger's deferred queue, so
    nothing leaves the machine)."""
    return config_from_dict(demo_tree(upstream_url, host, port, data_dir), source="demo")


def demo_tree(
    upstream_url: str, host: str, port: int, data_dir: str = "meterkit-data"
) -> dict[str, Any]:
    """The config tree of `demo_config` (the chain demo swaps its payment keys)."""
    import secrets

    llm = {"upstream": "mock"}
    tree = {
        "gateway": {"host": host, "port": port},
        "upstreams": {
            "mock": {"url": upstream_url, "timeout": {"connect": 5, "first_byte": 30, "idle": 60}}
        },
        "routes": {
            "POST /v1/chat/completions": llm,
            "POST /v1/responses": llm,
            "POST /v1/completions": llm,
            "POST /v1/messages": llm,
            "GET /v1/models": {"upstream": "mock", "format": "none"},
            "POST /paid/v1/chat/completions": {
                "upstream": "mock",
                "path": "/v1/chat/completions",
                "price": "$0.01",
                "description": "a paid chat completion (demo)",
            },
            "POST /session/v1/chat/completions": {
                "upstream": "mock",
                "path": "/v1/chat/completions",
                "session": {
                    "price": "$0.00001",
                    "suggested_deposit": "$0.0002",
                    "voucher_timeout": "30s",
                },
                "description": "a chat completion paid per token (demo)",
            },
        },
        "wallets": {"base-sepolia": DEMO_WALLET},
        "accepts": [{"asset": "USDC", "network": "base-sepolia"}],
        "payments": {"secret": secrets.token_hex(24), "settlement": {"type": "deferred"}},
        "ledger": {"type": "sqlite", "path": str(Path(data_dir) / "ledger.sqlite3")},
        "usage": {"sink": "sqlite", "path": str(Path(data_dir) / "usage.sqlite3")},
        "logging": {"format": "text"},
    }
    return tree


def validate(args: argparse.Namespace) -> int:
    """The schema, then what `serve` would die on (hooks, data paths), then with `--connect`
    every service. Exit 0, 1 (config problems, every one listed) or 6 (a service down)."""
    from meterkit.commands import checks
    from meterkit.proxy import workers

    config = load_config_or_report(args.config)
    if config is None:
        return EXIT_FAILED
    found = (*checks.callables(config), *checks.data_paths(config), *checks.key_file(config))
    failed = [c for c in found if not c.ok]
    for p in workers.problems(config, config.gateway.workers):
        failed.append(checks.Check(p.path, p.message))
    if failed:
        print(f"meterkit: invalid configuration {args.config}:", file=sys.stderr)
        for c in failed:
            print(f"  {c.what}: {c.problem}", file=sys.stderr)
        return EXIT_FAILED
    summary = f"{len(config.upstreams)} upstream(s), {len(config.routes)} route(s)"
    if getattr(args, "connect", False):
        results = asyncio.run(checks.services(config))
        for c in results:
            print(f"  {c.what}: {'ok' if c.ok else c.problem}")
        if not all(c.ok for c in results):
            print(f"{args.config}: a service is unreachable", file=sys.stderr)
            return EXIT_UNREACHABLE
        summary += f", {len(results)} service(s) reachable"
    print(f"{args.config}: ok ({summary})")
    return EXIT_OK


def _started(run: Callable[[], None]) -> None:
    """Run a server, turning the ordinary ways a start fails into one-line errors."""
    from meterkit.proxy.server import StartupError
    from meterkit.runtime import ListenError

    try:
        run()
    except ListenError as e:
        raise CommandError(EXIT_LISTEN, str(e.strerror or e)) from None
    except StartupError as e:
        cause = e.cause
        if isinstance(cause, ValueError) and not isinstance(cause, OSError):
            code = EXIT_FAILED  # an operator hook or callable that does not load
        else:
            code = classify(cause)
        what = f"{e.what}: " if e.what else ""
        raise CommandError(code, f"cannot start: {what}{describe(cause)}") from None


def serve(args: argparse.Namespace) -> int:
    from meterkit.proxy import serve as serve_proxy

    if args.demo:
        if args.workers and args.workers > 1:
            print(
                "meterkit serve: --demo runs one process (its session route and SQLite "
                "ledger belong to one); --workers needs --config",
                file=sys.stderr,
            )
            return EXIT_USAGE
        return _serve_demo(args)
    if not args.config:
        print(
            "meterkit serve: pass --config PATH, or --demo for the embedded default",
            file=sys.stderr,
        )
        return EXIT_USAGE
    config = load_config_or_report(args.config)
    if config is None:
        return EXIT_FAILED
    if args.worker_index is not None:
        from meterkit.proxy.lifecycle import Worker

        worker = Worker(args.worker_index, args.worker_fd)
        _started(lambda: serve_proxy(config, args.host, args.port, worker))
        return EXIT_OK
    workers = args.workers or config.gateway.workers
    if workers > 1:
        return _serve_workers(args, config, workers)
    _started(lambda: serve_proxy(config, args.host, args.port))
    return EXIT_OK


def _serve_workers(args: argparse.Namespace, config: Config, workers: int) -> int:
    """`serve --workers N` (or gateway.workers): refuse what per-process state would break,
    then supervise the workers."""
    from meterkit.observability.logs import configure_logging
    from meterkit.proxy.workers import problems, supervise

    found = problems(config, workers)
    if found:
        print(f"meterkit: invalid configuration {args.config}:", file=sys.stderr)
        for p in found:
            print(f"  {p}", file=sys.stderr)
        return EXIT_FAILED
    configure_logging(config.logging.level, config.logging.format)
    host = args.host or config.gateway.host
    port = config.gateway.port if args.port is None else args.port
    code = EXIT_OK

    def run() -> None:
        nonlocal code
        code = supervise(config, host, port, workers)

    _started(run)
    return code


def _serve_demo(args: argparse.Namespace) -> int:
    from meterkit.mock.server import MockOptions, start_mock
    from meterkit.observability.logs import configure_logging
    from meterkit.proxy.app import build_app
    from meterkit.proxy.lifecycle import start
    from meterkit.proxy.server import StartupError
    from meterkit.runtime import run_forever

    host = args.host or "127.0.0.1"
    port = DEMO_PORT if args.port is None else args.port

    async def main() -> None:
        mock_runner, mock_port = await start_mock(
            "127.0.0.1", 0, MockOptions(tokens_per_second=40, ttft=0.2, length=48)
        )
        config = demo_config(f"http://127.0.0.1:{mock_port}", host, port, args.data_dir)
        configure_logging(config.logging.level, config.logging.format)
        try:
            app = build_app(config)
        except Exception as e:
            raise StartupError(e) from e
        try:
            runner, bound = await start(app, host, port)
        except BaseException:
            await mock_runner.cleanup()
            raise
        url = f"http://{host}:{bound}"
        print(
            f"meterkit demo: proxy on {url}, built-in mock LLM on http://127.0.0.1:{mock_port}\n"
            f"usage records: {config.usage.path} (SQLite); metrics: {url}/metrics\n\n"
            "Try a streamed chat completion:\n\n"
            f"  curl -N {url}/v1/chat/completions -H 'Content-Type: application/json' \\\n"
            '    -d \'{"model": "gpt-4o", "stream": true, '
            '"messages": [{"role": "user", "content": "Hello!"}]}\'\n\n'
            "Pay for one ($0.01 in test USDC; deferred settlement, nothing leaves this machine;\n"
            f"the ledger row lands in {config.ledger.path}):\n\n"
            "  .venv/bin/meterkit keygen --out demo-key.hex\n"
            f"  .venv/bin/meterkit pay {url}/paid/v1/chat/completions --key-file demo-key.hex --max-amount 0.05 \\\n"
            '    --data \'{"model": "gpt-4o", "messages": [{"role": "user", "content": "Hi"}]}\'\n\n'
            "Or pay per token, as the stream goes ($0.00001 a token from a prepaid channel; the\n"
            "stream pauses with a payment-need-voucher event whenever the vouchers run out):\n\n"
            f"  CHANNEL=$(.venv/bin/meterkit channel credit --demo --data-dir {args.data_dir} --key-file demo-key.hex --amount '$1' --id)\n"
            f"  .venv/bin/meterkit pay {url}/session/v1/chat/completions --key-file demo-key.hex --max-amount 0.01 \\\n"
            '    --session "$CHANNEL" \\\n'
            '    --data \'{"model": "gpt-4o", "stream": true, "messages": [{"role": "user", "content": "Hi"}]}\'\n',
            flush=True,
        )
        try:
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()
            await mock_runner.cleanup()

    _started(lambda: run_forever(main()))
    return EXIT_OK


def mock_llm(args: argparse.Namespace) -> int:
    from meterkit.mock.server import MockOptions, run_mock

    run_mock(
        args.host,
        args.port,
        MockOptions(
            tokens_per_second=args.tokens_per_second,
            ttft=args.ttft,
            length=args.length,
            seed=args.seed,
        ),
    )
    return 0


def hash_key(args: argparse.Namespace) -> int:
    """Print the SHA-256 the key registry stores for a key read from stdin (one line), so
    the raw key never lands in a config file or a shell history."""
    from meterkit.budgets.registry import key_sha256

    raw = (args.key or "").strip() or sys.stdin.readline().strip()
    if not raw:
        raise CommandError(
            EXIT_USAGE, "hash-key: give the key as an argument, or on stdin (kept out of history)"
        )
    print(key_sha256(raw))
    return EXIT_OK

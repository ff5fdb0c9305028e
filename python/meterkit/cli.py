"""The `meterkit` command line."""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Sequence
from typing import NoReturn

__all__ = ["main"]


def _meter(args: argparse.Namespace) -> int:
    from meterkit.commands.meter import run

    return run(args)


def _serve(args: argparse.Namespace) -> int:
    from meterkit.commands.serve import serve

    return serve(args)


def _validate(args: argparse.Namespace) -> int:
    from meterkit.commands.serve import validate

    return validate(args)


def _hash_key(args: argparse.Namespace) -> int:
    from meterkit.commands.serve import hash_key

    return hash_key(args)


def _mock_llm(args: argparse.Namespace) -> int:
    from meterkit.commands.serve import mock_llm

    return mock_llm(args)


def _pay_cmd(name: str):  # type: ignore[no-untyped-def]
    def run(args: argparse.Namespace) -> int:
        from meterkit.commands import pay

        return int(getattr(pay, name)(args))

    return run


def _channel_cmd(name: str):  # type: ignore[no-untyped-def]
    def run(args: argparse.Namespace) -> int:
        from meterkit.commands import channel

        return int(getattr(channel, name)(args))

    return run


def _bench(args: argparse.Namespace) -> int:
    from meterkit.bench import run

    return run(args)


class _Parser(argparse.ArgumentParser):
    """argparse's parser with the CLI's one-line errors: `meterkit serve: argument --port:
    port 70000 is out of range 0-65535 (see --help)` and exit 2, not usage lines first."""

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: {message} (see --help)", file=sys.stderr)
        raise SystemExit(2)


def http_url(text: str) -> str:
    """An argparse type: an http(s) URL with a host (`pay`'s target)."""
    from urllib.parse import urlsplit

    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise argparse.ArgumentTypeError(
            f"not an http(s) URL: {text!r} (write it like http://localhost:8080/v1/...)"
        )
    return text


def amount(text: str) -> str:
    """An argparse type: a money amount, `0.50` or `$0.50`, not negative."""
    from decimal import Decimal, InvalidOperation

    try:
        value = Decimal(text.strip().removeprefix("$"))
    except InvalidOperation:
        raise argparse.ArgumentTypeError(
            f"not an amount: {text!r} (write it like 0.50 or $0.50)"
        ) from None
    if not value.is_finite() or value < 0:
        raise argparse.ArgumentTypeError(f"not an amount: {text!r}")
    return text


def address(text: str) -> str:
    """An argparse type: a 20-byte hex address."""
    from meterkit import _core

    try:
        return _core.checksum_address(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not an address: {text!r} (0x and 40 hex digits)"
        ) from None


def port_number(text: str) -> int:
    """An argparse type: a TCP port, 0-65535 (0: any free port)."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port {port} is out of range 0-65535")
    return port


def positive_int(text: str) -> int:
    """An argparse type: an integer of at least 1."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"{n} is not a positive number")
    return n


def build_parser() -> argparse.ArgumentParser:
    from meterkit import __version__

    p = _Parser(
        prog="meterkit",
        description="Streaming metering for paid and budgeted LLM APIs.",
    )
    p.add_argument("--version", action="version", version=f"meterkit {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    s = sub.add_parser("serve", help="run the proxy", description="Run the metering proxy.")
    s.add_argument("--config", help="YAML config file")
    s.add_argument(
        "--demo",
        action="store_true",
        help="run on the embedded default: built-in mock LLM upstream, SQLite usage records",
    )
    s.add_argument("--host", help="listen address (default: gateway.host, or 127.0.0.1 for --demo)")
    s.add_argument(
        "--port",
        type=port_number,
        help="listen port (default: gateway.port, or 8080 for --demo; 0 = any)",
    )
    s.add_argument(
        "--data-dir", default="meterkit-data", help="where --demo keeps its SQLite files"
    )
    s.add_argument(
        "--workers",
        type=positive_int,
        help="processes serving the port with SO_REUSEPORT, one event loop each "
        "(default: gateway.workers, 1); over 1 needs budgets in Redis and a PostgreSQL ledger",
    )
    # Internal: a worker process started by `serve --workers N` (see proxy/workers.py).
    s.add_argument("--worker-index", type=int, help=argparse.SUPPRESS)
    s.add_argument("--worker-fd", type=int, help=argparse.SUPPRESS)
    s.set_defaults(func=_serve)

    v = sub.add_parser(
        "validate",
        help="check a config file and list every problem",
        description="Check a config file: every problem with its key path (exit 1), every "
        "operator hook and callable imported; with --connect, the stores it names answer.",
    )
    v.add_argument("--config", required=True, help="YAML config file")
    v.add_argument(
        "--connect",
        action="store_true",
        help="also connect to every service the config names (Redis, PostgreSQL, facilitator)",
    )
    v.set_defaults(func=_validate)

    hk = sub.add_parser(
        "hash-key",
        help="print the sha256 the key registry (keys:) stores for a key",
        description="Print the sha256 the key registry (keys:) stores for KEY. Without KEY it "
        "is read from stdin (`echo -n sk-… | meterkit hash-key`), which keeps it out of the "
        "shell history.",
    )
    hk.add_argument("key", nargs="?", help="the API key (default: one line of stdin)")
    hk.set_defaults(func=_hash_key)

    mk = sub.add_parser(
        "mock-llm", help="run the built-in OpenAI/Anthropic-compatible mock upstream"
    )
    mk.add_argument("--host", default="127.0.0.1")
    mk.add_argument(
        "--port", type=port_number, default=8000, help="0 picks a free port (printed on start)"
    )
    mk.add_argument("--tokens-per-second", type=float, default=50.0, help="0: as fast as possible")
    mk.add_argument("--ttft", type=float, default=0.05, help="seconds before the first token")
    mk.add_argument("--length", type=int, default=64, help="tokens per choice")
    mk.add_argument(
        "--seed", type=int, default=0, help="seed of the generated text (same seed, same text)"
    )
    mk.set_defaults(func=_mock_llm)

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

    pay = sub.add_parser(
        "pay",
        help="request a URL, paying its 402 with a local key (MPP evm/charge or x402 exact)",
    )
    pay.add_argument("url", type=http_url)
    cap = pay.add_mutually_exclusive_group()
    cap.add_argument(
        "--max-amount",
        type=amount,
        help="most to pay for this request, e.g. 0.50 (in the token's units); "
        "required to pay, unless --no-cap",
    )
    cap.add_argument(
        "--no-cap", action="store_true", help="pay whatever the server asks (no --max-amount)"
    )
    pay.add_argument(
        "--key-file", help="private key file from `meterkit keygen` (or METERKIT_PRIVATE_KEY)"
    )
    pay.add_argument("--method", help="HTTP method (default GET, or POST with --data)")
    pay.add_argument("--data", help="request body (JSON)")
    pay.add_argument("-H", "--header", action="append", help="extra header 'Name: value'")
    pay.add_argument("--dry-run", action="store_true", help="show the price, pay nothing")
    pay.add_argument(
        "--session",
        metavar="CHANNEL_ID",
        help="pay per token over this payment channel (MPP session): vouchers as the stream asks",
    )
    pay.set_defaults(func=_pay_cmd("pay"))

    kg = sub.add_parser("keygen", help="create a secp256k1 key for paying")
    kg.add_argument("--out", help="write the key to this file (mode 600)")
    kg.add_argument("--force", action="store_true", help="overwrite an existing --out file")
    kg.set_defaults(func=_pay_cmd("keygen"))

    chn = sub.add_parser("channel", help="prepaid payment channels for per-token session routes")
    chn_sub = chn.add_subparsers(dest="channel_command", metavar="ACTION", required=True)
    cc = chn_sub.add_parser(
        "credit", help="credit a prepaid deposit to a payer's channel (created when new)"
    )
    where = cc.add_mutually_exclusive_group(required=True)
    where.add_argument("--config")
    where.add_argument("--demo", action="store_true", help="the channels of `serve --demo`")
    cc.add_argument("--data-dir", default="meterkit-data", help="with --demo: its data folder")
    who = cc.add_mutually_exclusive_group(required=True)
    who.add_argument("--payer", type=address, help="the payer's address")
    who.add_argument("--key-file", help="the payer's key file (its address is the payer)")
    cc.add_argument("--amount", required=True, type=amount, help='the deposit to add, e.g. "$5"')
    cc.add_argument("--salt", help="the channel's salt (0x + 64 hex; default: random, new channel)")
    cc.add_argument("--signer", type=address, help="an authorized signer other than the payer")
    cc.add_argument("--asset", help="the accepted asset's symbol (default: the first)")
    cc.add_argument(
        "--id", action="store_true", help="print only the channel id (for a shell variable)"
    )
    cc.add_argument("--json", action="store_true", help="the channel as JSON (for scripts)")
    cc.add_argument("--network", help="the accepted asset's network")
    cc.set_defaults(func=_channel_cmd("credit"))
    cl = chn_sub.add_parser("list", help="every channel: deposit, accepted, spent, units")
    where = cl.add_mutually_exclusive_group(required=True)
    where.add_argument("--config")
    where.add_argument("--demo", action="store_true", help="the channels of `serve --demo`")
    cl.add_argument("--data-dir", default="meterkit-data", help="with --demo: its data folder")
    cl.add_argument("--json", action="store_true", help="one JSON object per channel")
    cl.set_defaults(func=_channel_cmd("list_channels"))

    led = sub.add_parser("ledger", help="payment ledger tools")
    led_sub = led.add_subparsers(dest="ledger_command", metavar="ACTION", required=True)
    ex = led_sub.add_parser(
        "export", help="queued (deferred) authorizations as JSON lines, for batch submission"
    )
    ex.add_argument("--config", required=True)
    ex.add_argument("--mark", action="store_true", help="mark them exported")
    ex.add_argument("--out", help="write to this file instead of stdout")
    ex.set_defaults(func=_pay_cmd("ledger_export"))

    st = led_sub.add_parser(
        "settle",
        help="submit queued (deferred) authorizations on chain and reconcile the ledger with it",
        description="Expire, reconcile, submit: queued authorizations go on chain in parallel "
        "batches (the relayer in payments.settlement pays the gas); claims left pending by a "
        "crash or unknown after a timeout are checked against the chain's authorizationState. "
        "Safe to run twice or after a crash: nothing is settled twice.",
    )
    st.add_argument("--config", required=True)
    st.add_argument("--concurrency", type=int, default=4, help="transfers in flight at once")
    st.add_argument(
        "--retries", type=int, default=3, help="attempts per row while the node is unreachable"
    )
    st.add_argument("--backoff", type=float, default=1.0, help="first retry delay, seconds")
    st.add_argument(
        "--stale-after",
        type=float,
        default=600.0,
        help="reconcile pending claims untouched this long (seconds): a running proxy may "
        "still be settling newer ones",
    )
    st.set_defaults(func=_pay_cmd("ledger_settle"))

    oa = sub.add_parser("openapi", help="print the OpenAPI document of a config, prices included")
    oa.add_argument("--config", required=True)
    oa.add_argument("--base-url", help="the gateway's public URL (default: gateway host and port)")
    oa.set_defaults(func=_pay_cmd("openapi"))

    mf = sub.add_parser(
        "mock-facilitator",
        help="run a local x402 facilitator: a simulator (no money moves), or with --rpc-url a "
        "real one settling on that chain",
    )
    mf.add_argument("--host", default="127.0.0.1")
    mf.add_argument("--port", type=port_number, default=8402)
    mf.add_argument(
        "--rpc-url", help="settle for real on this chain's JSON-RPC node (default: simulate)"
    )
    mf.add_argument(
        "--relayer-key-env",
        default="METERKIT_RELAYER_KEY",
        help="environment variable holding the key that pays the gas (with --rpc-url)",
    )
    mf.set_defaults(func=_pay_cmd("mock_facilitator"))

    from meterkit.commands import budget, report

    budget.add_parser(sub)
    report.add_parser(sub)

    b = sub.add_parser("bench", help="run the benchmarks (release build) with baselines")
    b.add_argument(
        "suite",
        choices=["core", "proxy", "budgets", "payments", "sessions", "workers", "peers"],
        help="core: Rust core versus pure Python / tiktoken; proxy: proxy versus direct and plain "
        "proxy; peers: meterkit beside nginx and LiteLLM, when installed",
    )
    b.add_argument(
        "--quick", action="store_true", help="small sizes: a smoke run, not a measurement"
    )
    b.add_argument("--json", dest="json_out", help="also write the figures as JSON to this file")
    b.add_argument(
        "--plots",
        metavar="DIR",
        help="write the PNG plots here (default: benches/results/plots/ when run from the "
        "repository, else a temporary directory, printed at the end)",
    )
    b.add_argument("--no-plots", action="store_true", help="draw no plots")
    b.add_argument(
        "--quiet",
        action="store_true",
        help="no progress line on stderr (it is only shown when stderr is a terminal)",
    )
    b.add_argument(
        "--nginx",
        metavar="PATH",
        help="peers: the nginx binary (default: nginx on PATH, else /usr/sbin/nginx)",
    )
    b.add_argument(
        "--litellm",
        metavar="PATH",
        help="peers: LiteLLM's `litellm` executable (default: .peers/litellm/bin/litellm of "
        "the repository, which `make peers` installs)",
    )
    b.set_defaults(func=_bench)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run a command. The one error boundary: an ordinary mistake (a busy port, a missing
    file, a service that does not answer) is one line on stderr and a documented exit code
    (`meterkit.commands.EXIT_*`); only a bug prints a traceback."""
    from meterkit import commands as c

    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return c.EXIT_USAGE
    try:
        return int(args.func(args))
    except c.CommandError as e:
        return _fail(e.message, e.code)
    except BrokenPipeError:
        return c.EXIT_OK
    except KeyboardInterrupt:
        return c.EXIT_INTERRUPTED
    except Exception as e:
        code = _outside_world(e)
        if code is not None:
            return _fail(c.describe(e), code)
        traceback.print_exc()
        return _fail("internal error (a bug): please report the traceback above", c.EXIT_BUG)


def _fail(message: str, code: int) -> int:
    print(f"meterkit: {message}", file=sys.stderr)
    return code


def _outside_world(e: Exception) -> int | None:
    """The exit code of an error that comes from outside the program, or None for a bug."""
    import aiohttp

    from meterkit import commands as c
    from meterkit.config import ConfigError

    if isinstance(e, ConfigError):
        return c.EXIT_FAILED
    if isinstance(e, aiohttp.InvalidURL):
        return c.EXIT_USAGE
    if isinstance(e, aiohttp.ClientError | TimeoutError):
        return c.EXIT_UNREACHABLE
    if isinstance(e, OSError):
        return c.classify(e)
    return None


if __name__ == "__main__":
    sys.exit(main())

"""`meterkit bench sessions`: per-token streamed payments, each figure beside its baseline in
the same run.

1. need-voucher → resumed: on loopback, from the moment the client reads a
   `payment-need-voucher` event to the first LLM event after its voucher was accepted (the
   client signs and POSTs the voucher; the gateway verifies, persists and wakes the stream).
2. CPU per streamed event of a session-paid stream versus the same stream unpaid, through
   the same proxy process (vouchers cover the whole stream: no pauses).
3. Voucher verifications per second: EIP-712 digest + signature recovery in the Rust core,
   versus libsecp256k1 through `coincurve` plus keccak from `pycryptodome` when coincurve is
   installed (`pip install coincurve`), and versus `eth-account` always.
4. Tokens the upstream generated but nobody was sent after the client left a paused stream.
5. Memory of the proxy with many streams paused for a voucher at once.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import yaml

from meterkit import SseDecoder, _core
from meterkit.bench import plots as draw
from meterkit.bench.plots import Output
from meterkit.bench.processes import cpu_seconds, rss_bytes, running
from meterkit.bench.proxy import _pct
from meterkit.bench.timing import best_of, environment, progress, table
from meterkit.client.session import SessionClient
from meterkit.config.payments import KNOWN_ASSETS
from meterkit.payments import mpp
from meterkit.runtime import new_event_loop
from meterkit.sessions.channels import prepaid_channel
from meterkit.sessions.store import SessionStore
from meterkit.sessions.wire import sign_voucher, voucher_digest

ASSET = KNOWN_ASSETS[("USDC", "base-sepolia")]
PAY_TO = "0x" + "22" * 20
PRICE = 10  # base units per token ($0.00001)
PAID, FREE = "/paid/v1/chat/completions", "/v1/chat/completions"
BODY = orjson.dumps(
    {"model": "gpt-4o", "stream": True, "messages": [{"role": "user", "content": "Hello"}]}
)


def _config(mock: str, d: Path) -> Path:
    tree = {
        "gateway": {"host": "127.0.0.1", "max_connections": 20000},
        "upstreams": {"mock": {"url": mock, "timeout": {"first_byte": 30, "idle": 120}}},
        "routes": {
            f"POST {FREE}": {"upstream": "mock"},
            f"POST {PAID}": {
                "upstream": "mock",
                "path": FREE,
                "session": {"price": "$0.00001", "voucher_timeout": "120s"},
            },
        },
        "wallets": {"base-sepolia": PAY_TO},
        "accepts": [{"asset": "USDC", "network": "base-sepolia"}],
        "payments": {"secret": "bench-secret-0123456789abcdef", "settlement": {"type": "deferred"}},
        "ledger": {"type": "sqlite", "path": str(d / "ledger.sqlite3")},
        "usage": {"sink": "none"},
        "logging": {"level": "error"},
    }
    p = d / "bench.yaml"
    p.write_text(yaml.safe_dump(tree))
    return p


async def _channels(db: Path, n: int) -> list[tuple[bytes, str]]:
    """`n` prepaid channels, each with its own payer key and a deposit for a long run."""
    store = SessionStore(db)
    await store.open()
    out = []
    try:
        for i in range(n):
            key = os.urandom(31) + bytes([i % 255 + 1])
            salt = "0x" + os.urandom(32).hex()
            channel = prepaid_channel(
                _core.address_of(key), PAY_TO, ASSET.address, ASSET.chain_id, salt
            )
            await store.credit(channel, 10**15)
            cid = channel.channel_id
            out.append((key, cid))
    finally:
        await store.close()
    return out


def _stream(tokens: int, tps: int = 0) -> dict[str, str]:
    """The headers of a streamed chat request to the mock: `tokens` tokens at `tps` a
    second (0: unpaced), the first at once."""
    return {
        "Content-Type": "application/json",
        "x-mock-length": str(tokens),
        "x-mock-tps": str(tps),
        "x-mock-ttft": "0",
    }


class Payer:
    """One channel's side: the challenge once, then vouchers (signed by meterkit's own
    session client, uncapped here)."""

    def __init__(self, key: bytes, cid: str, ch: mpp.Challenge) -> None:
        self.ch = ch
        self.client = SessionClient(key, cid, max_total=Decimal(10**12))

    @property
    def cumulative(self) -> int:
        return self.client.cumulative

    def header(self, amount: int) -> dict[str, str]:
        return self.client.authorization(self.ch, amount)


async def _challenge(session: aiohttp.ClientSession, base: str) -> mpp.Challenge:
    async with session.post(
        base + PAID, data=BODY, headers={"Content-Type": "application/json"}
    ) as r:
        await r.read()
        return next(
            c
            for c in mpp.parse_challenges(r.headers.getall("WWW-Authenticate"))
            if c.method == "evm"
        )


async def resume_round_trips(
    base: str, payers: list[Payer], tokens: int, step: int, answered: list[float] | None = None
) -> list[float]:
    """Stream `tokens` paid `step` tokens at a time; every pause timed from the need-voucher
    event to the next LLM event (and, into `answered`, to the voucher's 204: what the HTTP
    round trip, the checks and the durable write take, before the stream's own wake-up)."""
    out: list[float] = []
    async with aiohttp.ClientSession() as session:

        async def one(p: Payer) -> None:
            h = {**_stream(tokens), **p.header(p.cumulative + step * PRICE)}
            async with session.post(base + PAID, data=BODY, headers=h) as r:
                decoder, t0 = SseDecoder(), None
                async for chunk in r.content.iter_any():
                    for ev in decoder.feed(chunk):
                        if ev.event == "payment-need-voucher":
                            t0 = time.perf_counter()
                            async with session.post(
                                base + PAID, headers=p.header(p.cumulative + step * PRICE)
                            ) as v:
                                await v.read()
                            if answered is not None:
                                answered.append(time.perf_counter() - t0)
                        elif t0 is not None and ev.event not in (
                            "payment-need-voucher",
                            "payment-receipt",
                        ):
                            out.append(time.perf_counter() - t0)
                            t0 = None

        for i, p in enumerate(payers):  # one stream at a time: the round trip, not a queue
            progress("resume round trips: stream", i + 1, len(payers))
            await one(p)
    return out


async def cpu_per_event(base: str, pid: int, payers: list[Payer], length: int) -> dict[str, float]:
    """CPU of the proxy per event, paid (vouchers cover the stream) versus unpaid."""
    common = _stream(length)
    events = len(payers) * (length + 3)
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=None)
    ) as session:

        async def one(path: str, extra: dict[str, str]) -> None:
            async with session.post(base + path, data=BODY, headers={**common, **extra}) as r:
                async for _ in r.content.iter_any():
                    pass

        budget = 10**14  # one voucher covers every stream of the run
        headers = [p.header(budget) for p in payers]
        runs = (("unpaid", FREE), ("session", PAID))
        for _, path in runs:
            await one(path, headers[0] if path == PAID else {})  # warm up
        rounds: dict[str, list[float]] = {name: [] for name, _ in runs}
        # Paired, interleaved rounds and medians: on this VM even CPU time swings between
        # rounds (a busy host's steal time is time on a CPU to the guest), so each round's
        # session-paid figure is compared with the unpaid one measured just before it.
        n = 7
        for i in range(n):
            for name, path in runs:
                progress(f"CPU per event, {length} tokens, {name}: round", i + 1, n)
                c0 = cpu_seconds(pid)
                await asyncio.gather(*(one(path, h if path == PAID else {}) for h in headers))
                rounds[name].append((cpu_seconds(pid) - c0) / events * 1e6)
        out = {name: statistics.median(v) for name, v in rounds.items()}
        out["ratio"] = statistics.median(
            s / u for s, u in zip(rounds["session"], rounds["unpaid"], strict=True)
        )
    return out


# Stream lengths of the CPU comparison: a session-paid request has a fixed cost (the
# credential's checks, the channel read, the opening hold, the durable charge at the end),
# which a short stream feels more; two lengths separate it from the cost per event.
SHORT, LONG = 200, 1000


def cpu_split(short: dict[str, float], long: dict[str, float]) -> dict[str, float]:
    """CPU per request and per event of each mode, from the per-event figures of the two
    lengths: cpu(L) = request + L × event, with L the events of a stream."""
    out = {}
    for mode in ("unpaid", "session"):
        a, b = short[mode] * (SHORT + 3), long[mode] * (LONG + 3)
        event = (b - a) / (LONG - SHORT)
        out[f"{mode}_event_us"] = event
        out[f"{mode}_request_us"] = a - event * (SHORT + 3)
    return out


def verify_rates(n: int, repeat: int) -> dict[str, float]:
    keys = [os.urandom(31) + bytes([i % 255 + 1]) for i in range(n)]
    cid = "0x" + "ab" * 32
    sigs = [
        bytes.fromhex(sign_voucher(k, "evm", ASSET.chain_id, PAY_TO, cid, 1000 + i)[2:])
        for i, k in enumerate(keys)
    ]
    digests = [voucher_digest("evm", ASSET.chain_id, PAY_TO, cid, 1000 + i) for i in range(n)]

    def meterkit() -> None:
        for i, s in enumerate(sigs):
            _core.recover_address(voucher_digest("evm", ASSET.chain_id, PAY_TO, cid, 1000 + i), s)

    progress("voucher verifications: meterkit")
    out = {"meterkit": n / best_of(meterkit, repeat)}
    try:
        import coincurve
        from Crypto.Hash import keccak

        def libsecp256k1() -> None:
            for d, s in zip(digests, sigs, strict=True):
                rec = coincurve.PublicKey.from_signature_and_message(
                    s[:64] + bytes([s[64] - 27]), d, hasher=None
                )
                keccak.new(digest_bits=256, data=rec.format(compressed=False)[1:]).digest()

        progress("voucher verifications: coincurve")
        out["coincurve"] = n / best_of(libsecp256k1, repeat)
    except ImportError:
        pass
    from eth_account import Account

    def eth() -> None:
        for d, s in zip(digests, sigs, strict=True):
            Account._recover_hash(d, signature=s)

    progress("voucher verifications: eth-account")
    out["eth_account"] = n / best_of(eth, repeat)
    return out


async def overrun(base: str, mock: str, payer: Payer, trials: int) -> dict[str, float]:
    """Leave each stream while it is paused; how many tokens did the upstream generate that
    the client was never sent?"""
    extra: list[int] = []
    async with aiohttp.ClientSession() as session:
        for i in range(trials):
            progress("overrun after a disconnect", i + 1, trials)
            rid = f"overrun-{i}-{os.urandom(4).hex()}"
            h = {
                **_stream(2000, tps=1000),
                "X-Request-Id": rid,
                **payer.header(payer.cumulative + 10 * PRICE),
            }
            async with session.post(base + PAID, data=BODY, headers=h) as r:
                body = b""
                async for chunk in r.content.iter_any():
                    body += chunk
                    if b"payment-need-voucher" in body:
                        break
            await asyncio.sleep(0.5)
            async with session.get(mock + f"/_mock/stats?request_id={rid}") as s:
                (stat,) = (await s.json())["requests"]
            extra.append(int(stat["tokens_generated"]) - 10)
    return {
        "beyond_p50_tokens": _pct([float(x) for x in extra], 0.5),
        "beyond_max_tokens": float(max(extra)),
    }


async def paused_memory(base: str, pid: int, payers: list[Payer]) -> dict[str, float]:
    progress(f"memory, {len(payers)} paused streams")
    rss0 = rss_bytes(pid)
    paused = 0
    stop = asyncio.Event()
    ready = asyncio.Event()
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=None)
    ) as session:

        async def one(p: Payer) -> None:
            nonlocal paused
            h = {**_stream(100), **p.header(p.cumulative + 2 * PRICE)}
            async with session.post(base + PAID, data=BODY, headers=h) as r:
                buf = b""
                async for chunk in r.content.iter_any():
                    buf += chunk
                    if b"payment-need-voucher" in buf:
                        paused += 1
                        if paused == len(payers):
                            ready.set()
                        await stop.wait()
                        return

        tasks = [asyncio.create_task(one(p)) for p in payers]
        try:
            await asyncio.wait_for(ready.wait(), 120)
            rss = rss_bytes(pid)
        finally:
            stop.set()
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    return {
        "streams": float(len(payers)),
        "rss_mib": rss / 2**20,
        "added_mib": (rss - rss0) / 2**20,
    }


def main(quick: bool = False, json_out: str | None = None, plots: Output | None = None) -> int:
    env = environment()
    n_sigs, repeat = (200, 2) if quick else (2000, 5)
    n_resume, n_cpu, n_paused = (3, 10, 50) if quick else (20, 50, 5000)
    print(
        f"meterkit bench sessions: {env['build']} build, Python {env['python']}, {env['cpus']} CPUs"
    )
    results: dict[str, Any] = {"environment": env}
    progress("setting up channels, mock and proxy")
    with ExitStack() as stack:
        d = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="meterkit-bench-")))
        loop = new_event_loop()
        stack.callback(loop.close)
        keys = loop.run_until_complete(
            _channels(d / "ledger.sqlite3", n_resume + n_cpu + n_paused + 1)
        )
        mock = stack.enter_context(running(["mock-llm", "--port", "0", "--ttft", "0"]))
        proxy = stack.enter_context(
            running(["serve", "--config", str(_config(mock.url, d)), "--port", "0"], cwd=d)
        )

        async def payers(n: int, offset: int) -> list[Payer]:
            async with aiohttp.ClientSession() as s:
                ch = await _challenge(s, proxy.url)
            return [Payer(k, c, ch) for k, c in keys[offset : offset + n]]

        rp = loop.run_until_complete(payers(n_resume, 0))
        answered: list[float] = []
        trips = loop.run_until_complete(resume_round_trips(proxy.url, rp, 400, 20, answered))
        results["resume"] = {
            "pauses": len(trips),
            "p50_ms": _pct(trips, 0.5) * 1e3,
            "p99_ms": _pct(trips, 0.99) * 1e3,
            "voucher_204_p50_ms": _pct(answered, 0.5) * 1e3,
            "voucher_204_p99_ms": _pct(answered, 0.99) * 1e3,
        }
        cp = loop.run_until_complete(payers(n_cpu, n_resume))
        cpu = loop.run_until_complete(cpu_per_event(proxy.url, proxy.pid, cp, SHORT))
        results["cpu_per_event_us"] = cpu
        long = loop.run_until_complete(cpu_per_event(proxy.url, proxy.pid, cp, LONG))
        results[f"cpu_per_event_us_{LONG}"] = long
        results["cpu_split"] = split = cpu_split(cpu, long)
        over = loop.run_until_complete(
            overrun(proxy.url, mock.url, loop.run_until_complete(payers(1, len(keys) - 1))[0], 5)
        )
        results["overrun"] = over
        pp = loop.run_until_complete(payers(n_paused, n_resume + n_cpu))
        mem = loop.run_until_complete(paused_memory(proxy.url, proxy.pid, pp))
        results["paused_memory"] = mem
    rates = verify_rates(n_sigs, repeat)
    results["voucher_verifications_per_second"] = rates
    r = results["resume"]
    print(f"\n1. need-voucher → resumed, loopback ({r['pauses']} pauses, one stream at a time)")
    print(
        table(
            ["", "p50 ms", "p99 ms"],
            [
                ["resumed (next LLM event)", f"{r['p50_ms']:.2f}", f"{r['p99_ms']:.2f}"],
                [
                    "of which: voucher answered 204",
                    f"{r['voucher_204_p50_ms']:.2f}",
                    f"{r['voucher_204_p99_ms']:.2f}",
                ],
            ],
        )
    )
    print(f"\n2. Proxy CPU per streamed event ({n_cpu} concurrent streams)")
    print(
        table(
            ["stream", "unpaid µs", "session-paid µs", "ratio"],
            [
                [
                    f"{n} tokens",
                    f"{c['unpaid']:.2f}",
                    f"{c['session']:.2f}",
                    f"{c['ratio']:.2f}x",
                ]
                for n, c in ((SHORT, cpu), (LONG, long))
            ],
        )
    )
    print(
        f"  of which per request (fit over both lengths): unpaid {split['unpaid_request_us']:.0f}"
        f" µs, session-paid {split['session_request_us']:.0f} µs; per event: unpaid"
        f" {split['unpaid_event_us']:.2f} µs, session-paid {split['session_event_us']:.2f} µs"
    )
    print(f"\n3. Voucher verifications per second ({n_sigs} distinct signatures, one thread)")
    rows = [["meterkit (Rust core)", f"{rates['meterkit']:.0f}", "1.00x"]]
    for name in ("coincurve", "eth_account"):
        if name in rates:
            rows.append([name, f"{rates[name]:.0f}", f"{rates['meterkit'] / rates[name]:.2f}x"])
    print(table(["implementation", "per second", "meterkit is"], rows))
    if "coincurve" not in rates:
        print(
            "  (coincurve is not installed: `pip install coincurve` adds the libsecp256k1 baseline)"
        )
    print(
        "\n4. Tokens generated upstream beyond the last one sent, client gone while paused (1000 tok/s upstream)"
    )
    print(
        table(
            ["p50", "max"],
            [[f"{over['beyond_p50_tokens']:.0f}", f"{over['beyond_max_tokens']:.0f}"]],
        )
    )
    print(f"\n5. Proxy memory with {int(mem['streams'])} streams paused for a voucher")
    print(table(["RSS MiB", "added MiB"], [[f"{mem['rss_mib']:.0f}", f"{mem['added_mib']:.0f}"]]))
    if json_out:
        Path(json_out).write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))
    if plots is not None:
        progress("plots")
        figures(plots, results, [t * 1e3 for t in trips], n_cpu)
    return 0


def figures(out: Output, results: dict[str, Any], trips_ms: list[float], n_cpu: int) -> None:
    """The resume round trip's distribution, CPU per event paid versus unpaid, and voucher
    verification rates beside their baselines."""
    r = results["resume"]
    if trips_ms:
        draw.cdf(
            out.path("resume-cdf"),
            f"need-voucher → resumed round trip, loopback (p50 {r['p50_ms']:.2f} ms, "
            f"p99 {r['p99_ms']:.2f} ms)",
            {f"session-paid stream ({r['pauses']} pauses)": trips_ms},
            "round trip, ms",
            note=out.note,
        )
    cpu = results["cpu_per_event_us"]
    draw.bars(
        out.path("cpu-per-event"),
        f"Proxy CPU per streamed event ({n_cpu} concurrent streams)",
        {"unpaid": cpu["unpaid"], "session-paid": cpu["session"]},
        "CPU µs per event",
        baseline="unpaid",
        note=out.note,
    )
    rates = results["voucher_verifications_per_second"]
    names = {"meterkit": "meterkit (Rust)", "coincurve": "coincurve", "eth_account": "eth-account"}
    draw.bars(
        out.path("verifications"),
        "Voucher verifications per second, one thread",
        {names[k]: v for k, v in rates.items()},
        "verifications per second",
        baseline="eth-account",
        higher_is_better=True,
        note=out.note,
    )


if __name__ == "__main__":
    sys.exit(main(quick="--quick" in sys.argv))

"""`meterkit bench proxy`: the proxy against a direct connection and a plain pass-through
proxy, with the same mock upstream, in the same run.

Processes (all over loopback): `meterkit mock-llm`, `meterkit serve` (metered proxy), the
plain aiohttp pass-through proxy (`meterkit.bench.plainproxy`), and this harness as the
load generator. Measured:
1. Added time to first token: with N-1 slow background streams open, probe requests measure
   the time from sending the request to the first content token; direct vs through the
   proxy, p50 and p99, N = 1, 100, 500.
2. CPU per streamed event of the proxy process (user+system time from /proc) while many
   streams run unpaced: meterkit versus the plain proxy.
3. Memory: the proxy's RSS with 5,000 slow streams open, minus its idle RSS.
4. Time from the client closing its connection to the mock seeing its upstream connection
   closed, median and worst.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import yaml

from meterkit import StreamMeter
from meterkit.bench import plots as draw
from meterkit.bench.plots import Output
from meterkit.bench.processes import Process, rss_bytes, running, tree_cpu_seconds
from meterkit.bench.timing import environment, progress, table
from meterkit.runtime import new_event_loop

CHAT = "/v1/chat/completions"
BODY = orjson.dumps(
    {"model": "gpt-4o", "stream": True, "messages": [{"role": "user", "content": "Hello"}]}
)


def stream_events(length: int) -> int:
    """Events the mock sends in a streamed chat completion of `length` tokens: the role chunk,
    one per token, the finish chunk and `[DONE]`."""
    return length + 3


def client_session() -> aiohttp.ClientSession:
    """The load generator's session: no connection limit, no total timeout (streams are long)."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=None)
    )


def _pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


async def _first_token(session: aiohttp.ClientSession, base: str, headers: dict[str, str]) -> float:
    t0 = time.perf_counter()
    async with session.post(base + CHAT, data=BODY, headers=headers) as resp:
        meter = StreamMeter("openai-chat", "gpt-4o")
        async for chunk in resp.content.iter_any():
            meter.feed(chunk)
            if meter.completion_tokens > 0:
                return time.perf_counter() - t0
    raise RuntimeError("stream ended without a token")


async def _background(
    session: aiohttp.ClientSession,
    base: str,
    started: asyncio.Event | None,
    counter: list[int],
    total: int,
    stop: asyncio.Event,
    tps: float,
) -> None:
    headers = {
        "x-mock-tps": str(tps),
        "x-mock-length": "1000000",
        "x-mock-ttft": "0",
        "Content-Type": "application/json",
    }
    async with session.post(base + CHAT, data=BODY, headers=headers) as resp:
        await resp.content.readany()
        counter[0] += 1
        if started is not None and counter[0] >= total:
            started.set()
        read = asyncio.ensure_future(stop.wait())
        while not stop.is_set():
            chunk_task = asyncio.ensure_future(resp.content.readany())
            done, _ = await asyncio.wait({chunk_task, read}, return_when=asyncio.FIRST_COMPLETED)
            if chunk_task not in done:
                chunk_task.cancel()
                break
            if not chunk_task.result():
                break
        read.cancel()


async def _open_many(
    session: aiohttp.ClientSession, base: str, n: int, tps: float
) -> tuple[list[asyncio.Task[None]], asyncio.Event]:
    stop = asyncio.Event()
    started = asyncio.Event()
    counter = [0]
    if n == 0:
        return [], stop
    sem = asyncio.Semaphore(200)

    async def one() -> None:
        async with sem:
            pass
        await _background(session, base, started, counter, n, stop, tps)

    tasks = [asyncio.ensure_future(one()) for _ in range(n)]
    ready = asyncio.ensure_future(started.wait())
    # a stream that ends before all are open means the target failed (refused, broke): say so
    # now rather than wait out the timeout, and leave no stream behind either way
    done, _ = await asyncio.wait({ready, *tasks}, timeout=120, return_when=asyncio.FIRST_COMPLETED)
    if ready not in done:
        ready.cancel()
        stop.set()
        for t in tasks:
            t.cancel()
        await asyncio.wait(tasks, timeout=30)
        failed = [t.exception() for t in done if not t.cancelled() and t.exception()]
        if failed:
            raise RuntimeError(f"a background stream failed: {failed[0]!r}")
        if done:
            raise RuntimeError(f"a background stream ended before all {n} were open")
        raise RuntimeError(f"{counter[0]} of {n} background streams started in 120 s")
    return tasks, stop


async def _close_many(tasks: list[asyncio.Task[None]], stop: asyncio.Event) -> None:
    stop.set()
    if tasks:
        await asyncio.wait(tasks, timeout=30)


PROBE_HEADERS = {
    "x-mock-ttft": "0",
    "x-mock-length": "3",
    "x-mock-tps": "0",
    "Content-Type": "application/json",
}


async def probe_ttft(
    session: aiohttp.ClientSession, base: str, streams: int, probes: int, label: str
) -> list[float]:
    """TTFT in seconds of `probes` requests to `base`, one after the other, while `streams - 1`
    slow background streams (5 tokens/s) are open through the same target."""
    progress(f"TTFT {label}, {streams} streams: opening")
    tasks, stop = await _open_many(session, base, streams - 1, tps=5)
    try:
        await asyncio.sleep(0.2)
        times = []
        for i in range(probes):
            progress(f"TTFT {label}, {streams} streams: probe", i + 1, probes)
            times.append(await _first_token(session, base, PROBE_HEADERS))
    finally:
        # also when a probe fails: a target that broke must not keep its streams open into
        # the next measurement
        await _close_many(tasks, stop)
    return times


async def ttft(
    direct: str,
    proxy: str,
    plain: str,
    levels: list[int],
    probes: int,
    samples: dict[int, dict[str, list[float]]] | None = None,
) -> list[dict[str, Any]]:
    """TTFT p50/p99 per level and target; with `samples`, also every probe's time (ms) by
    level and target, for the distribution plots."""
    out = []
    async with client_session() as session:
        for n in levels:
            row: dict[str, Any] = {"streams": n}
            for name, base in (("direct", direct), ("proxy", proxy), ("plain", plain)):
                times = await probe_ttft(session, base, n, probes, name)
                if samples is not None:
                    samples.setdefault(n, {})[name] = [t * 1000 for t in times]
                row[f"{name}_p50_ms"] = _pct(times, 0.5) * 1000
                row[f"{name}_p99_ms"] = _pct(times, 0.99) * 1000
            row["added_p50_ms"] = row["proxy_p50_ms"] - row["direct_p50_ms"]
            row["added_p99_ms"] = row["proxy_p99_ms"] - row["direct_p99_ms"]
            row["plain_added_p50_ms"] = row["plain_p50_ms"] - row["direct_p50_ms"]
            row["plain_added_p99_ms"] = row["plain_p99_ms"] - row["direct_p99_ms"]
            out.append(row)
    return out


async def cpu_per_event(
    targets: dict[str, tuple[str, int]],
    streams: int,
    length: int,
    headers: dict[str, str] | None = None,
) -> dict[str, float]:
    """CPU µs per streamed event of each target's process (and its children: nginx serves
    from a worker process), while `streams` unpaced streams of `length` tokens run at once;
    the best of 3 runs."""
    out = {}
    headers = {
        **(headers or {}),
        "x-mock-ttft": "0",
        "x-mock-length": str(length),
        "x-mock-tps": "0",
        "Content-Type": "application/json",
    }
    events = streams * stream_events(length)
    async with client_session() as session:

        async def one(base: str) -> None:
            async with session.post(base + CHAT, data=BODY, headers=headers) as resp:
                async for _ in resp.content.iter_any():
                    pass

        for name, (base, pid) in targets.items():
            await one(base)  # warm up
            best = float("inf")
            for i in range(3):
                progress(f"CPU per event, {name}: run", i + 1, 3)
                c0 = tree_cpu_seconds(pid)
                await asyncio.gather(*(one(base) for _ in range(streams)))
                best = min(best, tree_cpu_seconds(pid) - c0)
            out[name] = best / events * 1e6
    return out


async def memory(targets: dict[str, tuple[str, int]], streams: int) -> dict[str, dict[str, float]]:
    out = {}
    async with client_session() as session:
        for name, (base, pid) in targets.items():
            progress(f"memory, {name}: {streams} streams")
            idle = rss_bytes(pid)
            tasks, stop = await _open_many(session, base, streams, tps=0.2)
            await asyncio.sleep(1)
            loaded = rss_bytes(pid)
            await _close_many(tasks, stop)
            out[name] = {
                "idle_mib": idle / 2**20,
                "loaded_mib": loaded / 2**20,
                "per_stream_kib": (loaded - idle) / streams / 1024,
            }
    return out


async def disconnect(proxy: str, mock: str, trials: int) -> dict[str, float]:
    latencies = []
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    async with aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=None)
    ) as session:
        for i in range(trials):
            progress("disconnect", i + 1, trials)
            rid = uuid.uuid4().hex
            headers = {
                "X-Request-Id": rid,
                "x-mock-tps": "50",
                "x-mock-length": "100000",
                "x-mock-ttft": "0",
                "Content-Type": "application/json",
            }
            resp = await session.post(proxy + CHAT, data=BODY, headers=headers)
            meter = StreamMeter("openai-chat", "gpt-4o")
            while meter.completion_tokens < 3:
                meter.feed(await resp.content.readany())
            left = time.time()
            resp.close()
            closed = None
            deadline = time.monotonic() + 5
            while closed is None and time.monotonic() < deadline:
                async with session.get(f"{mock}/_mock/stats?request_id={rid}") as r:
                    item = (await r.json())["requests"][0]
                closed = item["closed_at"]
                if closed is None:
                    await asyncio.sleep(0.005)
            if closed is None:
                raise RuntimeError("the upstream connection was not closed within 5 s")
            latencies.append(closed - left)
    return {
        "median_ms": statistics.median(latencies) * 1000,
        "worst_ms": max(latencies) * 1000,
        "trials": trials,
    }


def _proxy_config(mock_url: str, workdir: Path) -> Path:
    tree = {
        "gateway": {"host": "127.0.0.1"},
        "upstreams": {
            "mock": {"url": mock_url, "timeout": {"connect": 10, "first_byte": 60, "idle": 120}}
        },
        "routes": {"POST /v1/chat/completions": {"upstream": "mock"}},
        "usage": {"sink": "none"},
        "logging": {"level": "warning"},
    }
    path = workdir / "bench-proxy.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


def mock_and_meterkit(stack: ExitStack) -> tuple[Path, Process, Process]:
    """A temporary directory, `meterkit mock-llm` (no delay before the first token) and
    `meterkit serve` in front of it with `_proxy_config`: what the suites that put proxies side
    by side start first. All of it ends with `stack`."""
    workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="meterkit-bench-")))
    mock: Process = stack.enter_context(running(["mock-llm", "--port", "0", "--ttft", "0"]))
    proxy: Process = stack.enter_context(
        running(
            ["serve", "--config", str(_proxy_config(mock.url, workdir)), "--port", "0"],
            cwd=workdir,
        )
    )
    return workdir, mock, proxy


def main(quick: bool = False, json_out: str | None = None, plots: Output | None = None) -> int:
    env = environment()
    levels = [1, 20] if quick else [1, 100, 500]
    probes = 10 if quick else 200
    cpu_streams, cpu_length = (10, 200) if quick else (50, 2000)
    mem_streams = 200 if quick else 5000
    trials = 5 if quick else 50
    print(
        f"meterkit bench proxy: {env['build']} build, Python {env['python']}, {env['cpus']} CPUs; "
        "mock, proxies and load generator in separate processes over loopback"
    )
    results: dict[str, Any] = {"environment": env}
    samples: dict[int, dict[str, list[float]]] = {}
    with ExitStack() as stack:
        _, mock, proxy = mock_and_meterkit(stack)
        plain: Process = stack.enter_context(
            running(["--upstream", mock.url], module="meterkit.bench.plainproxy")
        )
        loop = new_event_loop()
        try:
            results["ttft"] = rows = loop.run_until_complete(
                ttft(mock.url, proxy.url, plain.url, levels, probes, samples)
            )
            print(
                "\n1. Time to first token (ms): direct to the mock, through meterkit, and (for scale)"
                " through the plain proxy"
            )
            print(
                table(
                    [
                        "streams",
                        "direct p50",
                        "meterkit p50",
                        "added p50",
                        "direct p99",
                        "meterkit p99",
                        "added p99",
                        "plain added p50",
                        "plain added p99",
                    ],
                    [
                        [
                            str(r["streams"]),
                            f"{r['direct_p50_ms']:.2f}",
                            f"{r['proxy_p50_ms']:.2f}",
                            f"{r['added_p50_ms']:.2f}",
                            f"{r['direct_p99_ms']:.2f}",
                            f"{r['proxy_p99_ms']:.2f}",
                            f"{r['added_p99_ms']:.2f}",
                            f"{r['plain_added_p50_ms']:.2f}",
                            f"{r['plain_added_p99_ms']:.2f}",
                        ]
                        for r in rows
                    ],
                )
            )

            targets = {"plain": (plain.url, plain.pid), "meterkit": (proxy.url, proxy.pid)}
            cpu = loop.run_until_complete(cpu_per_event(targets, cpu_streams, cpu_length))
            results["cpu_per_event_us"] = {**cpu, "overhead": cpu["meterkit"] / cpu["plain"] - 1}
            print(
                f"\n2. Proxy CPU per streamed event ({cpu_streams} concurrent streams x {cpu_length} tokens)"
            )
            print(
                table(
                    ["plain proxy us", "meterkit us", "metering adds"],
                    [
                        [
                            f"{cpu['plain']:.2f}",
                            f"{cpu['meterkit']:.2f}",
                            f"{(cpu['meterkit'] / cpu['plain'] - 1) * 100:.0f}%",
                        ]
                    ],
                )
            )

            mem = loop.run_until_complete(memory(targets, mem_streams))
            results["memory"] = {"streams": mem_streams, **mem}
            print(f"\n3. Proxy memory with {mem_streams} open slow streams")
            print(
                table(
                    ["proxy", "idle MiB", "loaded MiB", "KiB per stream"],
                    [
                        [
                            k,
                            f"{v['idle_mib']:.0f}",
                            f"{v['loaded_mib']:.0f}",
                            f"{v['per_stream_kib']:.1f}",
                        ]
                        for k, v in mem.items()
                    ],
                )
            )

            results["disconnect"] = d = loop.run_until_complete(
                disconnect(proxy.url, mock.url, trials)
            )
            print(f"\n4. Client disconnect to upstream connection closed ({trials} trials)")
            print(
                table(
                    ["median ms", "worst ms"], [[f"{d['median_ms']:.2f}", f"{d['worst_ms']:.2f}"]]
                )
            )
        finally:
            loop.close()
    save(results, json_out, plots, lambda out: figures(out, results, samples))
    return 0


def save(
    results: dict[str, Any],
    json_out: str | None,
    plots: Output | None,
    draw_figures: Callable[[Output], None],
) -> None:
    """After the tables: the figures as JSON (`--json`) and the plots (unless `--no-plots`)."""
    if json_out:
        Path(json_out).write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))
    if plots is not None:
        progress("plots")
        draw_figures(plots)


NAMES = {"direct": "direct to the mock", "proxy": "meterkit", "plain": "plain proxy"}


def figures(
    out: Output, results: dict[str, Any], samples: dict[int, dict[str, list[float]]]
) -> None:
    """TTFT versus open streams (p50, p99) and its distribution at the highest level, CPU per
    event and memory per stream, each beside its baseline."""
    rows = results["ttft"]
    levels = [r["streams"] for r in rows]
    for q in ("p50", "p99"):
        draw.versus(
            out.path(f"ttft-{q}"),
            f"Time to first token {q} versus concurrent streams",
            levels,
            {NAMES[k]: [r[f"{k}_{q}_ms"] for r in rows] for k in ("direct", "proxy", "plain")},
            "concurrent streams open (probe included)",
            f"TTFT {q}, ms",
            baseline=NAMES["direct"],
            note=out.note,
        )
    if samples:
        top = max(samples)
        draw.cdf(
            out.path("ttft-cdf"),
            f"Time to first token, distribution with {top} streams open",
            {NAMES[k]: v for k, v in samples[top].items()},
            "TTFT, ms",
            baseline=NAMES["direct"],
            note=out.note,
        )
    cpu = results["cpu_per_event_us"]
    draw.bars(
        out.path("cpu-per-event"),
        "Proxy CPU per streamed event (user + system)",
        {"plain proxy": cpu["plain"], "meterkit": cpu["meterkit"]},
        "CPU µs per event",
        baseline="plain proxy",
        note=out.note,
    )
    mem = results["memory"]
    draw.bars(
        out.path("memory"),
        f"Proxy memory per open stream ({mem['streams']} slow streams)",
        {
            "plain proxy": mem["plain"]["per_stream_kib"],
            "meterkit": mem["meterkit"]["per_stream_kib"],
        },
        "RSS added per stream, KiB",
        baseline="plain proxy",
        note=out.note,
    )


if __name__ == "__main__":
    sys.exit(main(quick="--quick" in sys.argv))

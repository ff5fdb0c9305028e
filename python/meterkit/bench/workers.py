"""`meterkit bench workers`: throughput of `serve --workers N`, N = 1 and 2, in one run.

Processes (all over loopback): `meterkit mock-llm` (unpaced, no delay before the first
token), two proxies in front of it (`--workers 1` and `--workers 2`, both started before
measuring so neither is measured while the other starts), and this harness as the load
generator: C keep-alive connections, each sending a short streamed chat completion
(`x-mock-length` tokens) and reading it to its end, then the next, for D seconds. Rounds
alternate between the proxies (N=1, N=2, N=1, …) so a busy shared machine weighs on both;
the best round of each is reported.

Measured per proxy: streams per second, the proxy's CPU (its workers' user+system time, in
cores: 1.0 is one core busy the whole round) and CPU per stream; also the mock's and the
load generator's CPU, which compete for the same cores. A direct round (client → mock) gives
the ceiling the mock itself allows.

The load generator is a minimal HTTP/1.1 client on raw asyncio streams (it only looks for
the end of the chunked body), so that it costs much less CPU than the proxy it measures.
"""

from __future__ import annotations

import asyncio
import resource
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson

from meterkit.bench.plots import Output
from meterkit.bench.processes import Process, cpu_seconds, running, tree_cpu_seconds
from meterkit.bench.proxy import _proxy_config
from meterkit.bench.timing import environment, progress, table
from meterkit.runtime import new_event_loop

BODY = orjson.dumps(
    {"model": "gpt-4o", "stream": True, "messages": [{"role": "user", "content": "Hello"}]}
)


def _own_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def _load(url: str, connections: int, seconds: float, length: int) -> int:
    """Streams completed in `seconds` over `connections` keep-alive connections."""
    u = urlsplit(url)
    host, port = u.hostname or "127.0.0.1", u.port or 80
    request = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}:{port}\r\n"
        "Content-Type: application/json\r\nx-mock-ttft: 0\r\nx-mock-tps: 0\r\n"
        f"x-mock-length: {length}\r\nContent-Length: {len(BODY)}\r\n\r\n"
    ).encode() + BODY
    loop = asyncio.get_running_loop()
    stop_at = loop.time() + seconds
    done = 0

    async def one() -> None:
        nonlocal done
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while loop.time() < stop_at:
                writer.write(request)
                first = await reader.read(65536)
                if not first.startswith(b"HTTP/1.1 200"):
                    raise RuntimeError(f"unexpected answer: {first[:200]!r}")
                tail = first[-5:]
                while tail != b"0\r\n\r\n":
                    chunk = await reader.read(65536)
                    if not chunk:
                        raise RuntimeError("connection closed mid-stream")
                    tail = (tail + chunk)[-5:]
                done += 1
        finally:
            writer.close()

    await asyncio.gather(*(one() for _ in range(connections)))
    return done


def throughput_round(
    loop: asyncio.AbstractEventLoop,
    url: str,
    pid: int,
    mock_pid: int,
    connections: int,
    seconds: float,
    length: int,
) -> dict[str, float]:
    """One round of `_load` against `url`: streams per second, and the CPU (in cores) of the
    target's process tree `pid`, of the mock and of this load generator meanwhile."""
    c0, m0, g0, t0 = tree_cpu_seconds(pid), cpu_seconds(mock_pid), _own_cpu(), time.perf_counter()
    # bounded: a target that stops answering mid-stream fails the round instead of hanging it
    n = loop.run_until_complete(
        asyncio.wait_for(_load(url, connections, seconds, length), seconds + 120)
    )
    wall = time.perf_counter() - t0
    cpu = tree_cpu_seconds(pid) - c0
    return {
        "streams_per_s": n / wall,
        "proxy_cores": cpu / wall,
        "proxy_cpu_per_stream_us": cpu / n * 1e6 if n else 0.0,
        "mock_cores": (cpu_seconds(mock_pid) - m0) / wall,
        "client_cores": (_own_cpu() - g0) / wall,
        "streams": n,
    }


def main(quick: bool = False, json_out: str | None = None, plots: Output | None = None) -> int:
    env = environment()
    seconds, rounds = (2.0, 1) if quick else (8.0, 3)
    connections, length = 64, 16
    print(
        f"meterkit bench workers: {env['build']} build, Python {env['python']}, "
        f"{env['cpus']} CPUs; {connections} keep-alive connections, streams of {length} "
        f"tokens (unpaced), best of {rounds} rounds of {seconds:g} s, interleaved"
    )
    results: dict[str, Any] = {"environment": env, "connections": connections, "length": length}
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="meterkit-bench-")))
        mock: Process = stack.enter_context(running(["mock-llm", "--port", "0", "--ttft", "0"]))
        config = str(_proxy_config(mock.url, workdir))
        targets: dict[str, Process] = {}
        for n in (1, 2):
            targets[f"{n} worker{'s' if n > 1 else ''}"] = stack.enter_context(
                running(
                    ["serve", "--config", config, "--port", "0", "--workers", str(n)], cwd=workdir
                )
            )
        loop = new_event_loop()
        best: dict[str, dict[str, float]] = {}
        try:
            for p in targets.values():  # warm up: connections, tokenizer, caches
                throughput_round(loop, p.url, p.pid, mock.pid, connections, 1.0, length)
            direct = throughput_round(
                loop, mock.url, mock.pid, mock.pid, connections, seconds, length
            )
            for r in range(rounds):
                for name, p in targets.items():
                    progress(f"{name}: round", r + 1, rounds)
                    got = throughput_round(
                        loop, p.url, p.pid, mock.pid, connections, seconds, length
                    )
                    if name not in best or got["streams_per_s"] > best[name]["streams_per_s"]:
                        best[name] = got
        finally:
            loop.close()
    results["direct"] = direct
    results["proxy"] = best
    print(f"\nDirect to the mock (its ceiling): {direct['streams_per_s']:.0f} streams/s\n")
    rows = [
        [
            name,
            f"{b['streams_per_s']:.0f}",
            f"{b['proxy_cores']:.2f}",
            f"{b['proxy_cpu_per_stream_us']:.0f}",
            f"{b['mock_cores']:.2f}",
            f"{b['client_cores']:.2f}",
        ]
        for name, b in best.items()
    ]
    print(
        table(
            ["proxy", "streams/s", "proxy cores", "proxy µs/stream", "mock cores", "client cores"],
            rows,
        )
    )
    one, two = best["1 worker"], best["2 workers"]
    ratio = two["streams_per_s"] / one["streams_per_s"]
    results["speedup"] = ratio
    print(f"\n2 workers / 1 worker: {ratio:.2f}× the streams per second")
    if json_out:
        Path(json_out).write_text(orjson.dumps(results, option=orjson.OPT_INDENT_2).decode())
    return 0

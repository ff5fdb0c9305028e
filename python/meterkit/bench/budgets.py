"""`meterkit bench budgets`: the cost and the accuracy of token budgets.

1. Admission decision latency, in-memory store versus Redis (over loopback), p50/p99, same
   calls, same run.
2. Proxy CPU per streamed event with budget enforcement on (mid-stream leases, limit) versus
   the same proxy route without a budget.
3. Overshoot: 50 concurrent streams on one key, each wanting more than the budget can give;
   what they consumed together versus what the bucket holds.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import time
import uuid
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import yaml

from meterkit import StreamMeter, count_chat_prompt
from meterkit.bench import plots as draw
from meterkit.bench.plots import Output
from meterkit.bench.processes import running
from meterkit.bench.proxy import BODY, CHAT, _pct, cpu_per_event
from meterkit.bench.timing import environment, progress, table
from meterkit.budgets import Identity, Limits, MemoryBackend, RedisBackend
from meterkit.runtime import new_event_loop


async def admission(redis_url: str | None, n: int) -> dict[str, dict[str, float]]:
    limits = Limits(tokens_per_minute=10**9, tokens_per_day=10**12)
    backends: list[Any] = [MemoryBackend()]
    if redis_url:
        backends.append(RedisBackend(redis_url, prefix=f"mkbench:{uuid.uuid4().hex[:8]}:"))
    out = {}
    for b in backends:
        who = Identity("bench", "ak_bench")
        times = []
        for i in range(n):
            if i % 100 == 0:
                progress(f"admission, {b.name} store", i, n)
            rid = f"r{i}"
            t0 = time.perf_counter()
            await b.admit(who, limits, 500, 120, rid, 60)
            times.append(time.perf_counter() - t0)
            await b.reconcile(who, limits, rid, 100)
        await b.close()
        out[b.name] = {"p50_us": _pct(times, 0.5) * 1e6, "p99_us": _pct(times, 0.99) * 1e6}
    return out


async def overshoot(proxy: str, streams: int, want: int) -> dict[str, Any]:
    connector = aiohttp.TCPConnector(limit=0)
    key = f"sk-{uuid.uuid4().hex}"
    headers = {
        "Authorization": f"Bearer {key}",
        "x-mock-ignore-max": "1",
        "x-mock-length": str(want * 4),
        "x-mock-tps": "500",
        "Content-Type": "application/json",
    }
    async with aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=None)
    ) as session:

        async def one() -> tuple[int, int]:
            async with session.post(proxy + CHAT, data=BODY, headers=headers) as resp:
                if resp.status == 429:
                    return 0, -1
                meter = StreamMeter("openai-chat", "gpt-4o")
                async for chunk in resp.content.iter_any():
                    meter.feed(chunk)
                return meter.completion_tokens, resp.status

        results = await asyncio.gather(*(one() for _ in range(streams)))
    admitted = [r for r in results if r[1] == 200]
    return {
        "admitted": len(admitted),
        "rejected": sum(1 for r in results if r[1] == -1),
        "delivered": sum(r[0] for r in admitted),
        "cut": sum(1 for r in admitted if r[0] < want),
    }


def _config(
    mock_url: str,
    workdir: Path,
    name: str,
    budgets: dict[str, Any] | None,
    store: dict[str, Any] | None,
) -> Path:
    route: dict[str, Any] = {"upstream": "mock"}
    tree: dict[str, Any] = {
        "gateway": {"host": "127.0.0.1"},
        "upstreams": {
            "mock": {"url": mock_url, "timeout": {"connect": 10, "first_byte": 60, "idle": 120}}
        },
        "routes": {"POST /v1/chat/completions": route},
        "usage": {"sink": "none"},
        "logging": {"level": "warning"},
    }
    if budgets:
        route["budget"] = "b"
        tree["budgets"] = budgets
    if store:
        tree["budget_store"] = store
    path = workdir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


def main(quick: bool = False, json_out: str | None = None, plots: Output | None = None) -> int:
    env = environment()
    redis_url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    try:
        import redis

        redis.Redis.from_url(redis_url, socket_connect_timeout=1).ping()
    except Exception as e:
        print(f"(no Redis at {redis_url}: {e}; Redis figures skipped)")
        redis_url = ""
    n = 500 if quick else 5000
    cpu_streams, cpu_length = (10, 200) if quick else (50, 2000)
    streams, want = (10, 100) if quick else (50, 400)
    capacity = streams * want // 2
    print(
        f"meterkit bench budgets: {env['build']} build, Python {env['python']}, {env['cpus']} CPUs"
    )
    results: dict[str, Any] = {"environment": env}
    loop = new_event_loop()
    try:
        adm = loop.run_until_complete(admission(redis_url or None, n))
        results["admission"] = adm
        print(f"\n1. Admission decision latency ({n} decisions each)")
        print(
            table(
                ["store", "p50 us", "p99 us"],
                [[k, f"{v['p50_us']:.0f}", f"{v['p99_us']:.0f}"] for k, v in adm.items()],
            )
        )
        with ExitStack() as stack:
            workdir = Path(
                stack.enter_context(tempfile.TemporaryDirectory(prefix="meterkit-bench-"))
            )
            mock = stack.enter_context(running(["mock-llm", "--port", "0", "--ttft", "0"]))
            big = {
                "b": {
                    "key": "api_key",
                    "tokens_per_minute": 10**9,
                    "max_completion_tokens": 10**6,
                    "streaming": {"buffer_tokens": 100},
                }
            }
            plain = stack.enter_context(
                running(
                    [
                        "serve",
                        "--config",
                        str(_config(mock.url, workdir, "off", None, None)),
                        "--port",
                        "0",
                    ],
                    cwd=workdir,
                )
            )
            enforced = stack.enter_context(
                running(
                    [
                        "serve",
                        "--config",
                        str(_config(mock.url, workdir, "on", big, None)),
                        "--port",
                        "0",
                    ],
                    cwd=workdir,
                )
            )
            progress("CPU per event, enforcement off and on")
            cpu = loop.run_until_complete(
                cpu_per_event(
                    {"off": (plain.url, plain.pid), "on": (enforced.url, enforced.pid)},
                    cpu_streams,
                    cpu_length,
                    headers={"Authorization": "Bearer sk-bench"},
                )
            )
            results["cpu_per_event_us"] = {**cpu, "overhead": cpu["on"] / cpu["off"] - 1}
            print(
                f"\n2. Proxy CPU per streamed event, budget enforcement off vs on ({cpu_streams} streams x {cpu_length} tokens)"
            )
            print(
                table(
                    ["off us", "on us", "enforcement adds"],
                    [
                        [
                            f"{cpu['off']:.2f}",
                            f"{cpu['on']:.2f}",
                            f"{(cpu['on'] / cpu['off'] - 1) * 100:.0f}%",
                        ]
                    ],
                )
            )
            store = (
                {"type": "redis", "url": redis_url, "prefix": f"mkbench:{uuid.uuid4().hex[:8]}:"}
                if redis_url
                else None
            )
            tight = {
                "b": {
                    "key": "api_key",
                    "tokens_per_minute": 1,
                    "burst_tokens": capacity,
                    "max_completion_tokens": want,
                    "streaming": {"buffer_tokens": 20},
                }
            }
            shared = stack.enter_context(
                running(
                    [
                        "serve",
                        "--config",
                        str(_config(mock.url, workdir, "tight", tight, store)),
                        "--port",
                        "0",
                    ],
                    cwd=workdir,
                )
            )
            progress(f"overshoot, {streams} streams on one key")
            o = loop.run_until_complete(overshoot(shared.url, streams, want))
            prompt = count_chat_prompt(orjson.loads(BODY)["messages"], "gpt-4o")
            consumed = o["delivered"] + o["admitted"] * prompt
            o.update(
                {
                    "capacity": capacity,
                    "consumed": consumed,
                    "overshoot": max(0, consumed - capacity),
                    "store": "redis" if store else "memory",
                }
            )
            results["overshoot"] = o
            print(
                f"\n3. {streams} concurrent streams on one key, each wanting {want} tokens; bucket of {capacity} "
                f"({o['store']} store)"
            )
            print(
                table(
                    [
                        "admitted",
                        "cut short",
                        "delivered",
                        "consumed (with prompts)",
                        "capacity",
                        "overshoot",
                    ],
                    [
                        [
                            str(o["admitted"]),
                            str(o["cut"]),
                            str(o["delivered"]),
                            str(consumed),
                            str(capacity),
                            str(o["overshoot"]),
                        ]
                    ],
                )
            )
    finally:
        loop.close()
    if json_out:
        Path(json_out).write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))
    if plots is not None:
        progress("plots")
        figures(plots, results)
    return 0


def figures(out: Output, results: dict[str, Any]) -> None:
    """Admission latency per store, CPU per event with enforcement beside without, and what
    concurrent streams consumed beside the bucket's capacity."""
    draw.grouped_bars(
        out.path("admission"),
        "Admission decision latency per budget store",
        {
            f"{name} store": {"p50": v["p50_us"], "p99": v["p99_us"]}
            for name, v in results["admission"].items()
        },
        "latency, µs",
        note=out.note,
    )
    if "cpu_per_event_us" in results:
        cpu = results["cpu_per_event_us"]
        draw.bars(
            out.path("cpu-per-event"),
            "Proxy CPU per streamed event, budget enforcement off versus on",
            {"enforcement off": cpu["off"], "enforcement on": cpu["on"]},
            "CPU µs per event",
            baseline="enforcement off",
            note=out.note,
        )
    if "overshoot" in results:
        o = results["overshoot"]
        draw.bars(
            out.path("overshoot"),
            f"{o['admitted']} concurrent streams on one key: tokens consumed versus the bucket "
            f"({o['store']} store)",
            {"bucket capacity": o["capacity"], "consumed (with prompts)": o["consumed"]},
            "tokens",
            baseline="bucket capacity",
            higher_is_better=None,
            note=out.note,
        )


if __name__ == "__main__":
    sys.exit(main(quick="--quick" in sys.argv))

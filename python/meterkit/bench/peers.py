"""`meterkit bench peers`: meterkit beside other proxies, in front of the same upstream, in
one run.

Processes (all over loopback): one `meterkit mock-llm`, and in front of it
- meterkit (`meterkit serve`, metering on: the proxy suite's config);
- nginx, when found (PATH, /usr/sbin/nginx, or `--nginx PATH`): a C pass-through with
  `proxy_buffering off`, HTTP/1.1 and a keep-alive pool to the upstream, one worker process,
  run in the foreground from a generated config in a temporary directory. It parses nothing:
  what it costs is the cost of moving the bytes;
- LiteLLM's proxy, when installed in its own virtualenv (`make peers` puts it in
  `.peers/litellm`, or `--litellm PATH` to its `litellm` executable): a widely used Python
  LLM gateway, which also meters (it tracks spend per request). It forwards `gpt-4o` to the mock as an
  OpenAI-compatible upstream (`openai/gpt-4o`, `api_base` the mock) and passes the client's
  `x-` headers on, so the mock's knobs reach it. It runs with an environment of its own
  (no credentials of ours), one uvicorn worker, no database, no master key, no access log;
and this harness as the load generator. Each is measured the way the proxy suite measures
meterkit, with that suite's helpers:
1. added time to first token over direct, p50 and p99, while N-1 slow background streams
   are open through the same proxy (N = 1 and 100);
2. CPU per streamed event of the proxy's process and its children (user+system from /proc)
   while many unpaced streams run (events: the mock's, `proxy.stream_events`; LiteLLM asks
   the mock for one more, the usage chunk);
3. throughput: events per second the client receives from C unpaced streams, each a loop of
   streamed completions on one keep-alive connection, for several C (the workers suite's load
   generator); the direct connection gives the ceiling the mock and this harness allow;
and every figure as a ratio to meterkit's in the same run.

A peer that is absent is skipped with a one-line note; one that does not start, or fails
while measured, is reported as failed with the reason, and the others are still measured.
"""

from __future__ import annotations

import grp
import os
import pwd
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import yaml

from meterkit.bench import plots as draw
from meterkit.bench.plots import Output, repository
from meterkit.bench.processes import Process, StartError, free_port, running, tree_cpu_seconds
from meterkit.bench.proxy import (
    PROBE_HEADERS,
    _first_token,
    _pct,
    client_session,
    cpu_per_event,
    mock_and_meterkit,
    probe_ttft,
    save,
    stream_events,
)
from meterkit.bench.timing import environment, progress, table
from meterkit.bench.workers import throughput_round
from meterkit.runtime import new_event_loop

T = TypeVar("T")

REFERENCE = "meterkit"
PEERS = ("nginx", "litellm")
NAMES = {
    "direct": "direct to the mock",
    "meterkit": "meterkit",
    "nginx": "nginx",
    "litellm": "LiteLLM",
}
SETUP = {
    "meterkit": "meterkit serve, one process, metering on (exact token counts), usage sink none",
    "nginx": "one worker process, proxy_buffering off, HTTP/1.1 with a keep-alive pool of 256 "
    "to the upstream, keepalive_requests 1000000 both ways, access log off",
    "litellm": "one uvicorn worker, no database, no master key, client x- headers forwarded, "
    "log level WARNING (no access log)",
}
NGINX_PATHS = ("/usr/sbin/nginx",)
LITELLM_DEFAULT = Path(".peers", "litellm", "bin", "litellm")


@dataclass(frozen=True)
class Sizes:
    ttft_levels: tuple[int, ...]
    probes: int
    cpu_streams: int
    cpu_length: int
    throughput_levels: tuple[int, ...]
    throughput_length: int
    seconds: float
    rounds: int


FULL = Sizes(
    ttft_levels=(1, 100),
    probes=200,
    cpu_streams=50,
    cpu_length=2000,
    throughput_levels=(1, 10, 100),
    throughput_length=200,
    seconds=4.0,
    rounds=2,
)
QUICK = Sizes(
    ttft_levels=(1, 4),
    probes=5,
    cpu_streams=4,
    cpu_length=100,
    throughput_levels=(1, 4),
    throughput_length=50,
    seconds=0.5,
    rounds=1,
)


@dataclass
class Peer:
    """A proxy measured beside meterkit: its program and version, or why it is not measured."""

    key: str
    path: str | None = None
    version: str | None = None
    status: str = "skipped"  # measured | skipped (absent) | failed (did not start, or broke)
    note: str = ""

    def line(self) -> str:
        return f"{NAMES[self.key]}: {self.status}: {self.note}"

    def report(self) -> dict[str, Any]:
        shown = _shown(self.path) if self.path else None
        return {"status": self.status, "path": shown, "version": self.version, "note": self.note}


def _shown(path: str | Path) -> str:
    """`path` relative to the working directory when under it: reports and the committed JSON
    name `.peers/litellm/bin/litellm`, not the checkout's location on one machine."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _executable(path: str | Path) -> bool:
    return Path(path).is_file() and os.access(path, os.X_OK)


def find_nginx(explicit: str | None = None) -> Peer:
    """nginx from `--nginx PATH`, else PATH, else /usr/sbin (where Debian puts it, often
    outside a user's PATH)."""
    peer = Peer("nginx")
    candidates = [explicit] if explicit else [shutil.which("nginx"), *NGINX_PATHS]
    path = next((c for c in candidates if c and _executable(c)), None)
    if path is None:
        peer.note = (
            f"--nginx {explicit} is not an executable file"
            if explicit
            else "not found on PATH nor at /usr/sbin/nginx (`apt-get install nginx-light` "
            "adds it; or --nginx PATH)"
        )
        return peer
    peer.path = path
    try:
        out = subprocess.run([path, "-v"], capture_output=True, text=True, timeout=10)
        m = re.search(r"nginx/(\S+)", out.stderr + out.stdout)  # `nginx -v` writes to stderr
        peer.version = m.group(1) if m else None
    except (OSError, subprocess.TimeoutExpired):
        pass  # no version: starting it will say what is wrong
    return peer


def find_litellm(explicit: str | None = None, cwd: Path | None = None) -> Peer:
    """LiteLLM's `litellm` executable from `--litellm PATH`, else `.peers/litellm/bin/litellm`
    of the repository the command runs in (`make peers` installs it there)."""
    peer = Peer("litellm")
    if explicit:
        path = Path(explicit).expanduser()
    else:
        path = (repository(cwd) or cwd or Path.cwd()) / LITELLM_DEFAULT
    if not _executable(path):
        peer.note = (
            f"--litellm {explicit} is not an executable file"
            if explicit
            else f"not installed ({_shown(path)} not found; `make peers` installs it, or "
            "--litellm PATH)"
        )
        return peer
    peer.path = str(path.absolute())
    # read from its virtualenv's metadata: running it to ask takes seconds of imports
    venv = path.resolve().parent.parent
    for info in venv.glob("lib/python*/site-packages/litellm-*.dist-info"):
        peer.version = info.name.removeprefix("litellm-").removesuffix(".dist-info")
    return peer


NGINX_CONF = """\
# generated by `meterkit bench peers`: nginx in the foreground, everything in this directory
daemon off;
worker_processes 1;
{user}pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    # the load generator keeps its connections for thousands of streams, as a client's pool
    # would: nginx's default closes one after 1,000 requests (and its upstream ones likewise)
    keepalive_requests 1000000;
    upstream mock {{
        server {upstream};
        keepalive 256;
        keepalive_requests 1000000;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            proxy_pass http://mock;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_request_buffering off;
            proxy_read_timeout 300s;
        }}
    }}
}}
"""


def _nginx_user() -> str:
    """The `user` directive. Started by root, nginx switches its workers to `nobody` and a
    group also named `nobody`, which Debian does not have (it is `nogroup`): name nobody's
    real group. Unprivileged, nginx runs as whoever started it and needs none."""
    if os.geteuid() != 0:
        return ""
    try:
        group = grp.getgrgid(pwd.getpwnam("nobody").pw_gid).gr_name
    except KeyError:
        return ""
    return f"user nobody {group};\n"


def _peer_files(
    workdir: Path, name: str, config: str, write: Callable[[Path, int], str]
) -> tuple[Path, Path, int]:
    """The peer's own directory under `workdir`, a free port for it, and its config file
    `config` there, holding `write(directory, port)`."""
    d = workdir / name
    d.mkdir()
    port = free_port()
    path = d / config
    path.write_text(write(d, port))
    return d, path, port


@contextmanager
def start_nginx(binary: str, upstream: str, workdir: Path) -> Iterator[Process]:
    d, conf, port = _peer_files(
        workdir,
        "nginx",
        "nginx.conf",
        lambda d, port: NGINX_CONF.format(
            dir=d, user=_nginx_user(), upstream=upstream.removeprefix("http://"), port=port
        ),
    )
    # -p and -e keep it off /usr/share/nginx and /var/log/nginx, which need root
    command = [binary, "-p", f"{d}/", "-c", str(conf), "-e", str(d / "error.log")]
    with running([], command=command, listen=f"http://127.0.0.1:{port}") as p:
        yield p


def litellm_config(upstream: str) -> dict[str, Any]:
    return {
        "model_list": [
            {
                "model_name": "gpt-4o",
                "litellm_params": {
                    "model": "openai/gpt-4o",
                    "api_base": f"{upstream}/v1",
                    "api_key": "mock-key",
                },
            }
        ],
        "litellm_settings": {
            "telemetry": False,
            # the x-mock-* knobs must reach the mock, as they do through meterkit and nginx
            "model_group_settings": {"forward_client_headers_to_llm_api": ["gpt-4o"]},
        },
        # meterkit and nginx authenticate nobody in this bench: neither does LiteLLM (it
        # refuses to start without a master key unless told this)
        "general_settings": {"dangerously_permit_weak_or_unset_master_key": True},
    }


@contextmanager
def start_litellm(executable: str, upstream: str, workdir: Path) -> Iterator[Process]:
    d, config, port = _peer_files(
        workdir, "litellm", "config.yaml", lambda d, port: yaml.safe_dump(litellm_config(upstream))
    )
    env = {
        "PATH": os.pathsep.join([str(Path(executable).parent), "/usr/bin", "/bin"]),
        "HOME": str(d),
        "LANG": "C.UTF-8",
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # its bundled price list: nothing fetched at start
        "LITELLM_MODE": "PRODUCTION",  # no .env file read
        "LITELLM_LOG": "WARNING",  # no access log line per request, like meterkit and nginx here
    }
    command = [executable, "--config", str(config), "--host", "127.0.0.1", "--port", str(port)]
    command += ["--num_workers", "1"]
    # its first start compiles its modules: a minute on a busy 2-core machine
    with running(
        [],
        cwd=d,
        env=env,
        inherit_env=False,
        command=command,
        listen=f"http://127.0.0.1:{port}",
        timeout=300,
    ) as p:
        yield p


STARTERS: dict[str, Callable[[str, str, Path], Any]] = {
    "nginx": start_nginx,
    "litellm": start_litellm,
}


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _why(e: BaseException) -> str:
    """One line for a peer's failure: what went wrong and the last thing it printed."""
    if isinstance(e, StartError):
        lines = [_ANSI.sub("", x).strip() for x in e.output.splitlines()]
        last = next((x for x in reversed(lines) if x), "")
        text = f"{e.why}: {last}" if last else e.why
    else:
        first = str(e).strip().splitlines()
        text = f"{type(e).__name__}: {first[0]}" if first else type(e).__name__
    return text if len(text) <= 240 else text[:239] + "…"


def _settle(pids: list[int], limit: float = 30.0) -> None:
    """Wait (at most `limit` s) until none of `pids` uses more than 5% of a core: a proxy that
    has just opened its port may still be busy starting (LiteLLM loads its model list and
    starts background tasks), which would land on whatever is measured first."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        before = [tree_cpu_seconds(p) for p in pids]
        time.sleep(0.5)
        if all(tree_cpu_seconds(p) - b < 0.025 for p, b in zip(pids, before, strict=True)):
            return


async def _smoke(base: str) -> None:
    """One short stream through the peer: it is up, and it streams tokens from the mock."""
    async with client_session() as session:
        await _first_token(session, base, PROBE_HEADERS)


async def _ttft_once(base: str, streams: int, probes: int, label: str) -> list[float]:
    async with client_session() as session:
        return await probe_ttft(session, base, streams, probes, label)


def _start(stack: ExitStack, loop: Any, peer: Peer, upstream: str, workdir: Path) -> Process | None:
    assert peer.path is not None
    progress(f"starting {NAMES[peer.key]}")
    own = ExitStack()
    try:
        proc: Process = own.enter_context(STARTERS[peer.key](peer.path, upstream, workdir))
        loop.run_until_complete(_smoke(proc.url))
    except Exception as e:  # a peer that does not start is a note in the report, not a crash
        own.close()
        peer.status, peer.note = "failed", f"did not start: {_why(e)}"
        return None
    stack.enter_context(own)
    peer.status = "measured"
    return proc


def _attempt(peers: dict[str, Peer], key: str, what: str, fn: Callable[[], T]) -> T | None:
    """`fn()`, for target `key`. A peer that fails is marked failed, with the reason, and
    measured no further; direct and meterkit failing fails the run (that is a bug here)."""
    peer = peers.get(key)
    if peer is None:
        return fn()
    try:
        return fn()
    except Exception as e:  # a third-party proxy breaking under load is a finding, not a crash
        peer.status, peer.note = "failed", f"{what}: {_why(e)}"
        return None


def _active(targets: dict[str, Process], peers: dict[str, Peer]) -> dict[str, Process]:
    return {k: p for k, p in targets.items() if k not in peers or peers[k].status == "measured"}


def _ratio(value: float | None, reference: float | None) -> float | None:
    """value / reference, when both are positive: an added latency at or under zero (within
    the noise of the direct baseline) has no meaningful ratio."""
    if value is None or reference is None or value <= 0 or reference <= 0:
        return None
    return value / reference


def ratios(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each peer's figures divided by meterkit's in the same run (CPU and added TTFT: lower is
    better; events/s: higher is better), by concurrent streams where the figure has levels."""
    out: dict[str, dict[str, Any]] = {}
    cpu = results["cpu_per_event_us"]
    for key in PEERS:
        r: dict[str, Any] = {}
        if key in cpu:
            r["cpu_per_event"] = _ratio(cpu[key], cpu.get(REFERENCE))
        for q in ("p50", "p99"):
            by_level = {
                str(row["streams"]): _ratio(
                    row["targets"][key][f"added_{q}_ms"],
                    row["targets"].get(REFERENCE, {}).get(f"added_{q}_ms"),
                )
                for row in results["ttft"]
                if key in row["targets"]
            }
            if by_level:
                r[f"added_ttft_{q}"] = by_level
        throughput = {
            str(row["streams"]): _ratio(
                row["targets"][key]["events_per_s"],
                row["targets"].get(REFERENCE, {}).get("events_per_s"),
            )
            for row in results["throughput"]
            if key in row["targets"]
        }
        if throughput:
            r["events_per_s"] = throughput
        if r:
            out[key] = r
    return out


def _x(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.2f}×"


def main(
    quick: bool = False,
    json_out: str | None = None,
    plots: Output | None = None,
    nginx: str | None = None,
    litellm: str | None = None,
) -> int:
    env = environment()
    size = QUICK if quick else FULL
    print(
        f"meterkit bench peers: {env['build']} build, Python {env['python']}, {env['cpus']} CPUs; "
        "one mock upstream, each proxy in front of it, the load generator in this process, "
        "all over loopback; ratios are against meterkit in this run"
    )
    peers = {"nginx": find_nginx(nginx), "litellm": find_litellm(litellm)}
    results: dict[str, Any] = {"environment": env, "sizes": asdict(size), "setup": SETUP}
    samples: dict[int, dict[str, list[float]]] = {}
    with ExitStack() as stack:
        workdir, mock, meterkit = mock_and_meterkit(stack)
        loop = new_event_loop()
        stack.callback(loop.close)
        targets: dict[str, Process] = {"direct": mock, "meterkit": meterkit}
        # one stream each before measuring: the peers get theirs when they start (below), so
        # meterkit and the mock get one too, for their first connection and tokenizer load
        for target in targets.values():
            loop.run_until_complete(_smoke(target.url))
        for key, peer in peers.items():
            if peer.path is not None:
                proc = _start(stack, loop, peer, mock.url, workdir)
                if proc is not None:
                    targets[key] = proc
        progress("waiting for the proxies to settle")
        _settle([t.pid for t in targets.values()])
        measured = [f"meterkit {env['meterkit']} (this build)"] + [
            f"{NAMES[k]} {p.version or '(version unknown)'} ({p.report()['path']})"
            for k, p in peers.items()
            if p.status == "measured"
        ]
        print("measured: " + ", ".join(measured))
        for p in peers.values():
            if p.status != "measured":
                print(p.line())

        results["ttft"] = _measure_ttft(loop, targets, peers, size, samples)
        results["cpu_per_event_us"] = _measure_cpu(loop, targets, peers, size)
        results["throughput"] = _measure_throughput(loop, targets, peers, size, mock.pid)
    results["peers"] = {
        REFERENCE: {"status": "measured", "version": env["meterkit"]},
        **{k: p.report() for k, p in peers.items()},
    }
    results["ratios"] = ratios(results)
    _report(results, size)
    save(results, json_out, plots, lambda out: figures(out, results, samples))
    return 0


def _measure_ttft(
    loop: Any,
    targets: dict[str, Process],
    peers: dict[str, Peer],
    size: Sizes,
    samples: dict[int, dict[str, list[float]]],
) -> list[dict[str, Any]]:
    rows = []
    for n in size.ttft_levels:
        row: dict[str, Any] = {"streams": n, "targets": {}}
        for key, proc in _active(targets, peers).items():
            times = _attempt(
                peers,
                key,
                f"TTFT with {n} streams",
                partial(loop.run_until_complete, _ttft_once(proc.url, n, size.probes, NAMES[key])),
            )
            if times is None:
                continue
            samples.setdefault(n, {})[key] = [t * 1000 for t in times]
            row["targets"][key] = {
                "p50_ms": _pct(times, 0.5) * 1000,
                "p99_ms": _pct(times, 0.99) * 1000,
            }
        direct = row["targets"]["direct"]
        for key, r in row["targets"].items():
            if key != "direct":
                r["added_p50_ms"] = r["p50_ms"] - direct["p50_ms"]
                r["added_p99_ms"] = r["p99_ms"] - direct["p99_ms"]
        rows.append(row)
    return rows


def _measure_cpu(
    loop: Any, targets: dict[str, Process], peers: dict[str, Peer], size: Sizes
) -> dict[str, float]:
    cpu: dict[str, float] = {}
    for key, proc in _active(targets, peers).items():
        if key == "direct":
            continue
        got = _attempt(
            peers,
            key,
            "CPU per event",
            partial(
                loop.run_until_complete,
                cpu_per_event(
                    {NAMES[key]: (proc.url, proc.pid)}, size.cpu_streams, size.cpu_length
                ),
            ),
        )
        if got is not None:
            cpu[key] = got[NAMES[key]]
    return cpu


def _measure_throughput(
    loop: Any, targets: dict[str, Process], peers: dict[str, Peer], size: Sizes, mock_pid: int
) -> list[dict[str, Any]]:
    rows = []
    events = stream_events(size.throughput_length)
    for c in size.throughput_levels:
        best: dict[str, dict[str, float]] = {}
        # rounds interleave the targets, so a burst of other load on this shared machine
        # weighs on all of them; the best round of each is kept
        for r in range(size.rounds):
            for key, proc in _active(targets, peers).items():
                progress(f"throughput, {c} streams, {NAMES[key]}: round", r + 1, size.rounds)
                got = _attempt(
                    peers,
                    key,
                    f"throughput with {c} streams",
                    partial(
                        throughput_round,
                        loop,
                        proc.url,
                        proc.pid,
                        mock_pid,
                        c,
                        size.seconds,
                        size.throughput_length,
                    ),
                )
                if got is None:
                    continue
                got["events_per_s"] = got["streams_per_s"] * events
                if key not in best or got["events_per_s"] > best[key]["events_per_s"]:
                    best[key] = got
        rows.append({"streams": c, "targets": best})
    return rows


def _rx(rx: dict[str, dict[str, Any]], key: str, figure: str, level: str | None = None) -> str:
    """The "× meterkit" cell of target `key` (empty for direct and meterkit themselves)."""
    if key not in PEERS:
        return ""
    value = rx.get(key, {}).get(figure)
    return _x(value.get(level) if level is not None and value else value)


def _by_target(
    levels: list[dict[str, Any]], cells: Callable[[str, str, dict[str, Any]], list[str]]
) -> list[list[str]]:
    """Table rows target by target, one per level it was measured at: its name, the level,
    then `cells(key, level, its figures)`."""
    return [
        [NAMES[key], str(row["streams"]), *cells(key, str(row["streams"]), row["targets"][key])]
        for key in NAMES
        for row in levels
        if key in row["targets"]
    ]


def _report(results: dict[str, Any], size: Sizes) -> None:
    rx = results["ratios"]
    cpu = results["cpu_per_event_us"]
    print(
        "\n1. Time to first token (ms), and what each proxy adds over direct, with N-1 slow "
        "streams open through the same proxy"
    )

    def ttft_cells(key: str, n: str, r: dict[str, Any]) -> list[str]:
        added = key != "direct"
        return [
            f"{r['p50_ms']:.2f}",
            f"{r['p99_ms']:.2f}",
            f"{r['added_p50_ms']:.2f}" if added else "",
            f"{r['added_p99_ms']:.2f}" if added else "",
            _rx(rx, key, "added_ttft_p50", n),
            _rx(rx, key, "added_ttft_p99", n),
        ]

    rows = _by_target(results["ttft"], ttft_cells)
    print(
        table(
            ["target", "N", "p50", "p99", "added p50", "added p99", "× meterkit p50", "× p99"],
            rows,
        )
    )

    print(
        f"\n2. Proxy CPU per streamed event ({size.cpu_streams} concurrent streams × "
        f"{size.cpu_length} tokens, unpaced; the process and its children, user + system)"
    )
    print(
        table(
            ["proxy", "CPU µs/event", "× meterkit"],
            [[NAMES[k], f"{v:.2f}", _rx(rx, k, "cpu_per_event")] for k, v in cpu.items()],
        )
    )

    print(
        f"\n3. Throughput: events/s received over C keep-alive connections, each streaming "
        f"completions of {size.throughput_length} tokens (unpaced) one after another; best of "
        f"{size.rounds} interleaved round(s) of {size.seconds:g} s"
    )

    def throughput_cells(key: str, c: str, r: dict[str, Any]) -> list[str]:
        return [
            f"{r['events_per_s']:,.0f}",
            _rx(rx, key, "events_per_s", c),
            f"{r['proxy_cores']:.2f}" if key != "direct" else "",
            f"{r['mock_cores']:.2f}",
            f"{r['client_cores']:.2f}",
        ]

    rows = _by_target(results["throughput"], throughput_cells)
    print(
        table(
            ["target", "C", "events/s", "× meterkit", "proxy cores", "mock cores", "client cores"],
            rows,
        )
    )

    if rx:
        top_ttft = str(results["ttft"][-1]["streams"])
        first_ttft = str(results["ttft"][0]["streams"])
        top_c = str(results["throughput"][-1]["streams"])
        print(
            "\nAgainst meterkit (the peer's figure / meterkit's: below 1× the peer costs less "
            "CPU and adds less latency; above 1× it moves more events)"
        )
        print(
            table(
                [
                    "peer",
                    "CPU/event",
                    f"added TTFT p50, N={first_ttft}",
                    f"added TTFT p99, N={top_ttft}",
                    f"events/s, C={top_c}",
                ],
                [
                    [
                        NAMES[k],
                        _x(r.get("cpu_per_event")),
                        _x(r.get("added_ttft_p50", {}).get(first_ttft)),
                        _x(r.get("added_ttft_p99", {}).get(top_ttft)),
                        _x(r.get("events_per_s", {}).get(top_c)),
                    ]
                    for k, r in rx.items()
                ],
            )
        )
    # absent peers and peers that did not start were named before the tables; a peer that broke
    # while measured is named again here, where the gaps in its rows are
    for key, p in results["peers"].items():
        if p["status"] == "failed" and not p["note"].startswith("did not start"):
            print(f"{NAMES[key]}: {p['status']}: {p['note']}")


def figures(
    out: Output, results: dict[str, Any], samples: dict[int, dict[str, list[float]]]
) -> None:
    """TTFT distribution per proxy at each level (direct as the baseline), CPU per event per
    proxy (meterkit as the baseline, so every bar reads as a ratio to it) and throughput versus
    concurrent streams, one line per target."""
    for n, by_target in sorted(samples.items()):
        draw.cdf(
            out.path(f"ttft-cdf-{n}"),
            f"Time to first token through each proxy, {n} stream{'s' if n > 1 else ''} open",
            {NAMES[k]: v for k, v in by_target.items()},
            "TTFT, ms",
            baseline=NAMES["direct"],
            log_x=True,  # LiteLLM's tens of ms beside the others' one or two
            note=out.note,
        )
    cpu = results["cpu_per_event_us"]
    if cpu:
        draw.bars(
            out.path("cpu-per-event"),
            "Proxy CPU per streamed event (user + system)",
            {NAMES[k]: v for k, v in cpu.items()},
            "CPU µs per event",
            baseline=NAMES[REFERENCE],
            note=out.note,
        )
    rows = results["throughput"]
    levels = [r["streams"] for r in rows]
    keys = [k for k in NAMES if all(k in r["targets"] for r in rows)]
    if rows and keys:
        draw.versus(
            out.path("throughput"),
            "Throughput versus concurrent streams (unpaced)",
            levels,
            {NAMES[k]: [r["targets"][k]["events_per_s"] for r in rows] for k in keys},
            "concurrent streams (keep-alive connections)",
            "events/s received",
            baseline=NAMES["direct"],
            higher_is_better=True,
            note=out.note,
        )

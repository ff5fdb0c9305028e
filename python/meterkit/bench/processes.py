"""Real processes over loopback (the mock upstream, the proxy, the baseline proxy, the peers
of `bench peers`), started as commands and found through the URL they print when ready, or
through the port they were told to listen on. Used by the benchmarks and the end-to-end
tests; also the /proc readings the benchmarks take of them (CPU time, RSS)."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

_URL = re.compile(r"(http://127\.0\.0\.1:\d+)")


class StartError(RuntimeError):
    """A process that did not become ready: `why` in a few words, `output` all it printed."""

    def __init__(self, args: Sequence[str], why: str, output: str) -> None:
        super().__init__(f"{' '.join(args)} did not start ({why}):\n{output}")
        self.why = why
        self.output = output


class Process:
    """`python -m meterkit ARGS` (or `python -m MODULE ARGS` with `module=`), ready when it
    prints its URL.

    `command=` runs that program instead (argv, e.g. nginx), and `listen=` (the URL it was
    told to listen on) makes it ready when that port accepts a connection: programs that print
    no URL, or print one that is not the loopback address. `inherit_env=False` starts it with
    `env` alone, not this process's environment (a third-party program gets no credentials
    that happen to be in ours)."""

    def __init__(
        self,
        args: Sequence[str],
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
        module: str = "meterkit",
        *,
        command: Sequence[str] | None = None,
        listen: str | None = None,
        inherit_env: bool = True,
        timeout: float = 30,
    ) -> None:
        self.args = list(command) if command is not None else [sys.executable, "-m", module, *args]
        self.db: Path | None = None
        self.output: list[str] = []
        self.proc = subprocess.Popen(
            self.args,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=cwd,
            env={**os.environ, **(env or {})} if inherit_env else dict(env or {}),
        )
        self._drainer = threading.Thread(target=self._drain, daemon=True)
        if listen is None:
            self.url = self._wait_for_url(timeout)
            self._drainer.start()
        else:
            # the output is drained from the start: a chatty program must not block on a full
            # pipe while we wait for its port
            self._drainer.start()
            self.url = self._wait_for_port(listen.rstrip("/"), timeout)

    def _wait_for_url(self, timeout: float = 30) -> str:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        ended = False
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                ended = True
                break
            self.output.append(line)
            m = _URL.search(line)
            if m:
                return m.group(1)
        self.proc.kill()
        self.proc.wait(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        why = "exited" if ended else f"printed no URL in {timeout:g} s"
        raise StartError(self.args, why, "".join(self.output))

    def _wait_for_port(self, url: str, timeout: float) -> str:
        host, port = url.rsplit("/", 1)[-1].rsplit(":", 1)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                socket.create_connection((host, int(port)), timeout=1).close()
                return url
            except OSError:
                time.sleep(0.1)
        exited = self.proc.poll() is not None
        self.stop()
        why = f"exited with {self.proc.returncode}" if exited else f"no port after {timeout:g} s"
        raise StartError(self.args, why, "".join(self.output))

    def _drain(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.output.append(line)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self._drainer.ident is not None:  # started
            self._drainer.join(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    @property
    def pid(self) -> int:
        return self.proc.pid


@contextmanager
def running(
    args: Sequence[str],
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    module: str = "meterkit",
    *,
    command: Sequence[str] | None = None,
    listen: str | None = None,
    inherit_env: bool = True,
    timeout: float = 30,
) -> Iterator[Process]:
    p = Process(
        args,
        cwd,
        env,
        module,
        command=command,
        listen=listen,
        inherit_env=inherit_env,
        timeout=timeout,
    )
    try:
        yield p
    finally:
        p.stop()


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now, for programs that cannot be told to pick one and say
    which (nginx, LiteLLM). Another process could take it before ours binds it: on a loopback
    test machine, rare enough to retry by hand."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """CPU seconds of one process so far: the sum of its threads' time on a CPU in
    nanoseconds (/proc/PID/task/*/schedstat), else user + system from /proc/PID/stat.

    /proc/PID/stat counts clock ticks (10 ms here): a run of 0.12 s of proxy CPU read that way
    is ±8%, and two such runs measured 11.82 µs per event paid and unpaid alike, to the last
    digit. schedstat has no such step; it misses threads that already ended, which the
    measured processes do not have (their loops and SQLite threads live as long as they do)."""
    if Path(f"/proc/{pid}/schedstat").exists():
        total = 0
        for task in Path(f"/proc/{pid}/task").iterdir():
            # a thread that ended between the listing and the read
            with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                total += int((task / "schedstat").read_text().split()[0])
        return total / 1e9
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    """`pid` and its direct children (the workers of `serve --workers`, nginx's worker)."""
    out = [pid]
    for task in Path(f"/proc/{pid}/task").iterdir():
        out += [int(c) for c in (task / "children").read_text().split()]
    return out


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of `pid` and its direct children: what a proxy costs whether it serves from
    one process or from a master and its workers."""
    total = 0.0
    for p in children(pid):
        # a child that exited between the listing and the read
        with contextlib.suppress(FileNotFoundError):
            total += cpu_seconds(p)
    return total


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")

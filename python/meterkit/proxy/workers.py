"""`meterkit serve --workers N`: N processes serving one port, each with its own event loop.

The parent (the supervisor) serves nothing. It checks the address, starts N workers
(`meterkit serve --worker-index I`, each a whole proxy of its own), and every worker binds
the port with SO_REUSEPORT, so the kernel spreads new connections over the workers' accept
queues. The parent prints the `serving on` line once every worker is listening, forwards
SIGTERM/SIGINT to all of them (each drains its streams and flushes its usage records, as a
single process does) and exits when they are gone; SIGHUP re-validates the config file.

A worker that dies is not restarted: the parent reports it, stops the others and exits
non-zero (the worker's own exit code when it failed at start, e.g. 6 for Redis down, else 1),
so the service manager (systemd, Kubernetes) restarts the whole proxy, and a worker that
crashes in a loop is never hidden behind a restart counter.

Each worker is in its own process group (a Ctrl-C reaches the parent only, which then stops
the workers once, rather than each worker seeing SIGINT and then SIGTERM, which would cut its
drain short), and holds one end of a socket pair whose other end the parent keeps: the worker
writes one byte when it listens, and stops when that socket closes (the parent is gone, even
by SIGKILL), so no worker outlives its supervisor.

Per-process state must not silently break correctness, so `problems` refuses what is kept in
one process: in-memory budgets, a SQLite ledger (its startup recovery resolves every
in-flight claim as a crash leftover) and on-chain settlement or on-chain session channels (one
relayer nonce sequence per process). Session routes run on any number of workers: their state
is in the ledger's PostgreSQL, which tells every worker of an accepted voucher.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import selectors
import signal
import socket
import subprocess
import sys
import time

from meterkit.config import Config
from meterkit.config.problems import ConfigProblem
from meterkit.runtime import ListenError

log = logging.getLogger("meterkit.workers")

# How long the parent waits for the workers to drain after SIGTERM before it kills them
# (aiohttp's own shutdown gives open requests 60 s, then usage records get 10 s).
DRAIN_TIMEOUT = 90.0


def problems(config: Config, workers: int) -> list[ConfigProblem]:
    """Why `config` cannot run in `workers` processes, each with the key path it concerns."""
    if workers <= 1:
        return []
    from meterkit.stages import PaymentStage, SessionStage

    n = f"with {workers} workers"
    found: list[ConfigProblem] = []
    if any(r.budget for r in config.routes) and config.budget_store.type != "redis":
        found.append(
            ConfigProblem(
                "budget_store.type",
                f"{n}, budgets must be shared: in memory each worker would grant the whole "
                "budget again; use budget_store: {type: redis, url: …}",
            )
        )
    if any(PaymentStage.applies(r.payment) for r in config.routes):
        if config.ledger.type != "postgres":
            found.append(
                ConfigProblem(
                    "ledger.type",
                    f"{n}, the ledger must be PostgreSQL: a SQLite ledger belongs to one "
                    "process (at start it resolves every in-flight claim as left by a crash, "
                    "including another worker's); use ledger: {type: postgres, url: …}",
                )
            )
        if config.payments.settlement.type == "onchain":
            found.append(
                ConfigProblem(
                    "payments.settlement.type",
                    f"{n}, on-chain settlement cannot run: each worker would send from the "
                    "relayer with its own nonce sequence; use deferred or a facilitator, or "
                    "one worker",
                )
            )
    sessions = [r for r in config.routes if SessionStage.applies(r.payment)]
    if sessions and config.sessions.onchain is not None:
        # Session routes themselves are fine: their channels, holds and vouchers are in the
        # ledger's PostgreSQL (required above), which wakes a paused stream on any worker.
        found.append(
            ConfigProblem(
                "sessions.channels",
                f"{n}, on-chain channels cannot be closed safely: each worker would send "
                "from the operator key with its own nonce sequence; use one worker",
            )
        )
    return found


def warnings(config: Config, workers: int) -> list[str]:
    """What changes meaning with several workers without breaking correctness."""
    if workers <= 1:
        return []
    out = []
    if config.metrics.enabled:
        out.append(
            f"{config.metrics.path} is per worker: a scrape answers for the worker that "
            "accepted the connection (meterkit_worker_info says which)"
        )
    if config.admin is not None:
        out.append("the admin listener runs in worker 0 (its /metrics are worker 0's)")
    return out


def _reserve(host: str, port: int) -> socket.socket:
    """Check that nobody listens on host:port (a plain bind fails even against another
    SO_REUSEPORT group, so two proxies never share a port by accident), then hold the port
    with an SO_REUSEPORT socket that is bound but not listening: it takes no connections,
    keeps a port 0 choice for the workers, and the workers' binds join it."""
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as e:
        raise ListenError(0, f"cannot listen on {host}:{port}: {e.strerror or e}") from e
    probe = socket.socket(family, kind, proto)
    try:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(addr)
        port = probe.getsockname()[1]
    except OSError as e:
        raise ListenError(
            e.errno or 0, f"cannot listen on {host}:{port}: {os.strerror(e.errno or 0)}"
        ) from e
    finally:
        probe.close()
    hold = socket.socket(family, kind, proto)
    try:
        hold.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        hold.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        hold.bind((addr[0], port, *addr[2:]))
    except OSError as e:
        hold.close()
        raise ListenError(
            e.errno or 0, f"cannot listen on {host}:{port}: {os.strerror(e.errno or 0)}"
        ) from e
    return hold


class _Child:
    def __init__(self, index: int, args: list[str]) -> None:
        self.index = index
        parent_end, child_end = socket.socketpair()
        self.sock = parent_end
        self.ready = False
        self.proc = subprocess.Popen(
            [*args, "--worker-index", str(index), "--worker-fd", str(child_end.fileno())],
            pass_fds=(child_end.fileno(),),
            process_group=0,
        )
        child_end.close()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def describe(self, code: int) -> str:
        how = f"signal {signal.Signals(-code).name}" if code < 0 else f"code {code}"
        return f"worker {self.index} (pid {self.pid}) exited with {how}"


def supervise(config: Config, host: str, port: int, workers: int) -> int:
    """Run `workers` worker processes on host:port until SIGTERM/SIGINT; returns the exit
    code. Raises `ListenError` when the address is taken."""
    from meterkit.commands import EXIT_OK

    hold = _reserve(host, port)
    port = hold.getsockname()[1]
    for w in warnings(config, workers):
        log.warning(w)
    source = os.path.abspath(config.source)
    args = [sys.executable, "-m", "meterkit", "serve", "--config", source]
    args += ["--host", host, "--port", str(port), "--workers", "1"]

    wake_r, wake_w = socket.socketpair()
    wake_r.setblocking(False)
    wake_w.setblocking(False)
    received: list[int] = []

    def on_signal(signum: int, _frame: object) -> None:
        received.append(signum)

    caught = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD)
    previous = {s: signal.signal(s, on_signal) for s in caught}
    old_wakeup = signal.set_wakeup_fd(wake_w.fileno(), warn_on_full_buffer=False)
    sel = selectors.DefaultSelector()
    sel.register(wake_r, selectors.EVENT_READ)
    children: list[_Child] = []
    try:
        for i in range(workers):
            child = _Child(i, args)
            children.append(child)
            sel.register(child.sock, selectors.EVENT_READ, child)
        code = _watch(config, host, port, children, sel, wake_r, received)
        _stop(children, sel, wake_r)
        return EXIT_OK if code is None else code
    except BaseException:
        _stop(children, sel, wake_r)
        raise
    finally:
        signal.set_wakeup_fd(old_wakeup)
        for s, h in previous.items():
            signal.signal(s, h)
        sel.close()
        wake_r.close()
        wake_w.close()
        hold.close()
        for c in children:
            c.sock.close()


def _watch(
    config: Config,
    host: str,
    port: int,
    children: list[_Child],
    sel: selectors.BaseSelector,
    wake: socket.socket,
    received: list[int],
) -> int | None:
    """Until a stop signal (None) or a dead worker (the exit code to return)."""
    from meterkit.commands import EXIT_FAILED
    from meterkit.proxy.lifecycle import reread

    announced = False
    while True:
        for key, _ in sel.select():
            if key.fileobj is wake:
                _drain(wake)
                continue
            child = key.data
            try:
                data = child.sock.recv(16)
            except OSError:
                data = b""
            if data:
                child.ready = True
            else:
                sel.unregister(child.sock)  # it closed: it is exiting, reaped below
        while received:
            signum = received.pop(0)
            if signum in (signal.SIGTERM, signal.SIGINT):
                log.info("stopping workers", extra={"signal": signal.Signals(signum).name})
                return None
            if signum == signal.SIGHUP:
                reread(config)
        for c in children:
            code = c.proc.poll()
            if code is None:
                continue
            if not c.ready:
                # It failed at start and said why on stderr; its code says what kind.
                print(f"meterkit: {c.describe(code)} before listening", file=sys.stderr)
                return code if code > 0 else EXIT_FAILED
            print(f"meterkit: {c.describe(code)}; stopping the others", file=sys.stderr)
            return EXIT_FAILED
        if not announced and all(c.ready for c in children):
            announced = True
            log.info(
                "listening",
                extra={
                    "url": f"http://{host}:{port}",
                    "workers": len(children),
                    "pids": [c.pid for c in children],
                },
            )
            print(f"meterkit serving on http://{host}:{port} ({len(children)} workers)", flush=True)


def _drain(wake: socket.socket) -> None:
    try:
        while wake.recv(4096):
            pass
    except BlockingIOError:
        pass


def _stop(children: list[_Child], sel: selectors.BaseSelector, wake: socket.socket) -> None:
    """SIGTERM every live worker and wait for all of them (SIGKILL after `DRAIN_TIMEOUT`)."""
    for c in children:
        if c.sock in sel.get_map():
            sel.unregister(c.sock)
    for c in children:
        if c.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                c.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + DRAIN_TIMEOUT
    while any(c.proc.poll() is None for c in children):
        left = deadline - time.monotonic()
        if left <= 0:
            for c in children:
                if c.proc.poll() is None:
                    log.error("worker did not stop; killing it", extra={"pid": c.pid})
                    c.proc.kill()
                    c.proc.wait()
            break
        try:
            # SIGCHLD wakes this (the wakeup socket); the timeout bounds a missed one.
            sel.select(min(left, 0.5))
        except OSError as e:  # pragma: no cover - EINTR is retried by Python itself
            if e.errno != errno.EINTR:
                raise
        _drain(wake)

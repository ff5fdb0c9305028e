"""Real processes over loopback (the mock upstream, the proxy, the baseline proxy), started as
commands and found through the URL they print when ready. Used by the benchmarks and the
end-to-end tests."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

_URL = re.compile(r"(http://127\.0\.0\.1:\d+)")


class Process:
    """`python -m meterkit ARGS` (or `python -m MODULE ARGS` with `module=`)."""

    def __init__(
        self,
        args: Sequence[str],
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
        module: str = "meterkit",
    ) -> None:
        self.args = [sys.executable, "-m", module, *args]
        self.db: Path | None = None
        self.output: list[str] = []
        self.proc = subprocess.Popen(
            self.args,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=cwd,
            env={**os.environ, **(env or {})},
        )
        self.url = self._wait_for_url()
        self._drainer = threading.Thread(target=self._drain, daemon=True)
        self._drainer.start()

    def _wait_for_url(self, timeout: float = 30) -> str:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            self.output.append(line)
            m = _URL.search(line)
            if m:
                return m.group(1)
        self.proc.kill()
        self.proc.wait(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        raise RuntimeError(f"{' '.join(self.args)} did not start:\n{''.join(self.output)}")

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
) -> Iterator[Process]:
    p = Process(args, cwd, env, module)
    try:
        yield p
    finally:
        p.stop()

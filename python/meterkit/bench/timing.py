"""Small timing helpers shared by the benchmark suites."""

from __future__ import annotations

import gc
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any


def best_of(fn: Callable[[], Any], repeat: int = 5) -> float:
    """Fastest of `repeat` runs in seconds (the least disturbed by other load), GC off."""
    times = []
    for _ in range(repeat):
        gc.collect()
        gc.disable()
        try:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        finally:
            gc.enable()
    return min(times)


def median_of(fn: Callable[[], Any], repeat: int = 5) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def environment() -> dict[str, Any]:
    from meterkit import _core

    return {
        "build": _core.BUILD_PROFILE,
        "meterkit": _core.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "platform": sys.platform,
    }


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))
    out = [line, "  ".join("-" * w for w in widths)]
    out += [
        "  ".join(
            c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))
        )
        for r in rows
    ]
    return "\n".join(out)


class Progress:
    """A one-line progress indicator on stderr ("proxy: TTFT 3/5 …"), rewritten in place.

    Off unless enabled (`meterkit bench` enables it when stderr is a terminal and `--quiet`
    is not given), so logs and pipes never see it. While a line is shown, `wrap` clears it
    before anything else is written to the stream it wraps (the suites' tables on stdout)."""

    def __init__(self) -> None:
        self.enabled = False
        self.shown = False
        self.suite = "bench"

    def __call__(self, step: str, i: int | None = None, n: int | None = None) -> None:
        """Show `<suite>: <step> [i/n] …`, replacing the line shown before."""
        if not self.enabled:
            return
        text = f"{self.suite}: {step}" + (f" {i}/{n}" if i is not None and n is not None else "")
        text += " …"
        try:
            cols = os.get_terminal_size(sys.stderr.fileno()).columns
        except (OSError, ValueError):
            cols = 0
        if cols < 20:  # unknown (a pseudo-terminal without a size) or absurdly narrow
            cols = 100
        sys.stderr.write("\r\x1b[K" + text[: max(10, cols - 1)])
        sys.stderr.flush()
        self.shown = True

    def clear(self) -> None:
        if self.shown:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()
            self.shown = False

    def wrap(self, stream: Any) -> Any:
        """A stream that clears the progress line before each write to `stream`."""
        progress = self

        class _Clearing:
            def write(self, text: str) -> int:
                progress.clear()
                return int(stream.write(text))

            def flush(self) -> None:
                stream.flush()

            def __getattr__(self, name: str) -> Any:
                return getattr(stream, name)

        return _Clearing()


progress = Progress()

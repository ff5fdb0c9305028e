"""The tests start processes the same way the benchmarks do."""

from meterkit.bench.processes import Process, running

__all__ = ["Process", "running"]

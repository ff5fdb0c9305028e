"""`meterkit bench` plots: each drawing function writes a PNG matplotlib reads back, and a
`--quick` run with `--plots DIR` writes its files there (figures are not asserted)."""

from __future__ import annotations

import io
import sys
from pathlib import Path
from typing import Any

import pytest

from meterkit.bench import plots
from meterkit.bench.timing import Progress
from meterkit.cli import main

pytest.importorskip("matplotlib")

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
NOTE = plots.footnote({"meterkit": "0", "build": "release", "python": "3", "cpus": 2}, True)


def assert_png(path: Path) -> None:
    import matplotlib.image

    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    image = matplotlib.image.imread(path)
    height, width = image.shape[:2]
    assert width > 300 and height > 200


def test_each_plot_function_writes_a_png(tmp_path: Path) -> None:
    written = [
        plots.bars(
            tmp_path / "bars.png",
            "CPU per event",
            {"plain proxy": 4.9, "meterkit": 9.8},
            "CPU µs per event",
            baseline="plain proxy",
            note=NOTE,
        ),
        plots.bars(
            tmp_path / "ratios.png",
            "speedups",
            {"a": 2.5, "b": 40.0},
            "speedup (× the baseline)",
            higher_is_better=True,
            ratio_line=True,
        ),
        plots.grouped_bars(
            tmp_path / "grouped.png",
            "Settlement latency per path",
            {"deferred": {"p50": 0.001, "p99": 0.005}, "onchain": {"p50": 12.9, "p99": 41.0}},
            "latency, ms",
            note=NOTE,
        ),
        plots.grouped_bars(
            tmp_path / "grouped-baseline.png",
            "µs per event",
            {"OpenAI": {"meterkit": 1.2, "pure Python": 3.1}, "Anthropic": {"meterkit": 1.0}},
            "µs per event",
            baseline="pure Python",
        ),
        plots.cdf(
            tmp_path / "cdf.png",
            "TTFT distribution",
            {"direct": [1.0, 1.1, 1.3, 2.0], "meterkit": [1.4, 1.5, 2.2, 3.9], "empty": []},
            "TTFT, ms",
            baseline="direct",
            note=NOTE,
        ),
        plots.versus(
            tmp_path / "versus.png",
            "TTFT p50 versus streams",
            [1, 100, 500],
            {"direct": [1.0, 1.5, 3.0], "meterkit": [1.4, 2.0, 4.1]},
            "concurrent streams",
            "TTFT p50, ms",
            baseline="direct",
        ),
    ]
    for path in written:
        assert_png(path)


def test_output_names_and_records_files(tmp_path: Path) -> None:
    out = plots.Output(tmp_path / "new" / "dir", "proxy", NOTE)
    path = out.path("ttft-cdf")
    assert path == tmp_path / "new" / "dir" / "proxy-ttft-cdf.png"
    assert path.parent.is_dir()
    assert out.written == [path]


def test_default_directory_is_the_repository_results_else_temporary(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / "benches").mkdir(parents=True)
    (repo / "pyproject.toml").write_text("")
    (repo / "python").mkdir()
    assert plots.default_directory(repo / "python") == (repo / "benches/results/plots", False)
    elsewhere, temporary = plots.default_directory(tmp_path)
    assert temporary and elsewhere.is_dir()


def test_footnote_marks_smoke_runs_and_debug_builds() -> None:
    env = {"meterkit": "0.1", "build": "debug", "python": "3.11", "cpus": 2}
    assert "--quick" in plots.footnote(env, True)
    assert "Debug build" in plots.footnote(env, False)
    assert "not a measurement" not in plots.footnote({**env, "build": "release"}, False)


def test_progress_is_silent_unless_enabled(monkeypatch: Any) -> None:
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    progress = Progress()
    progress.suite = "proxy"
    progress("TTFT", 3, 5)
    assert err.getvalue() == ""
    progress.enabled = True
    progress("TTFT", 3, 5)
    assert "proxy: TTFT 3/5 …" in err.getvalue()
    out = io.StringIO()
    progress.wrap(out).write("table\n")
    assert err.getvalue().endswith("\r\x1b[K")  # the line is cleared before the table
    assert out.getvalue() == "table\n"


def test_bench_quick_run_writes_its_plots(
    tmp_path: Path, tiktoken_encodings: Any, capsys: Any
) -> None:
    directory = tmp_path / "plots"
    assert main(["bench", "core", "--quick", "--quiet", "--plots", str(directory)]) == 0
    files = sorted(directory.glob("*.png"))
    assert [f.name for f in files] == [
        "core-counting.png",
        "core-pipeline.png",
        "core-speedups.png",
    ]
    for f in files:
        assert_png(f)
    captured = capsys.readouterr()
    assert all(str(f) in captured.out for f in files)
    assert "…" not in captured.err  # no progress line: stderr is not a terminal


def test_bench_no_plots_writes_nothing(
    tmp_path: Path, tiktoken_encodings: Any, capsys: Any
) -> None:
    assert main(["bench", "core", "--quick", "--no-plots", "--plots", str(tmp_path)]) == 0
    assert list(tmp_path.iterdir()) == []
    assert "Plots written" not in capsys.readouterr().out

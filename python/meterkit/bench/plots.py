"""PNG figures beside the tables of `meterkit bench`: small functions the suites call with the
numbers they already computed (nothing here measures anything).

Every figure has a title, its unit on the value axis, the baseline drawn in grey and named
"(baseline)", and a footnote naming the run (build, Python, CPUs; "--quick: smoke run" when it
was one). matplotlib is imported lazily with the non-interactive Agg backend, so the suites
run without it (`meterkit bench` then says plots are skipped).
"""

from __future__ import annotations

import datetime
import tempfile
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

BASELINE_COLOR = "#9e9e9e"
COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b"]
DPI = 110


def available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


@dataclass
class Output:
    """Where one suite's figures go, the footnote they carry, and the files written so far."""

    directory: Path
    suite: str
    note: str = ""
    written: list[Path] = field(default_factory=list)

    def path(self, name: str) -> Path:
        """The file for figure `name` (`<suite>-<name>.png`), recorded as written."""
        self.directory.mkdir(parents=True, exist_ok=True)
        p = self.directory / f"{self.suite}-{name}.png"
        self.written.append(p)
        return p


def repository(cwd: Path | None = None) -> Path | None:
    """The meterkit checkout the command runs in (found from the working directory upwards),
    or None."""
    here = (cwd or Path.cwd()).resolve()
    for d in (here, *here.parents):
        if (d / "benches").is_dir() and (d / "pyproject.toml").is_file():
            return d
    return None


def default_directory(cwd: Path | None = None) -> tuple[Path, bool]:
    """`benches/results/plots/` of the repository the command runs in, else a new temporary
    directory; and whether it is temporary."""
    root = repository(cwd)
    if root is not None:
        return root / "benches" / "results" / "plots", False
    return Path(tempfile.mkdtemp(prefix="meterkit-plots-")), True


def footnote(env: Mapping[str, Any], quick: bool) -> str:
    """The run a figure comes from, for its footnote."""
    text = (
        f"meterkit {env.get('meterkit', '?')}, {env.get('build', '?')} build, "
        f"Python {env.get('python', '?')}, {env.get('cpus', '?')} CPUs, "
        f"{datetime.date.today().isoformat()}"
    )
    if env.get("build") != "release":
        text += ". Debug build: not a measurement"
    if quick:
        text += ". --quick: a smoke run, not a measurement"
    return text


def _figure(width: float = 7.5, height: float = 4.5) -> tuple[Figure, Axes]:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    return fig, fig.add_subplot()


def _save(fig: Figure, path: Path, title: str, note: str) -> Path:
    # about 10 bold 12-point characters per inch: longer titles wrap instead of overflowing
    fig.suptitle(
        "\n".join(textwrap.wrap(title, int(fig.get_figwidth() * 10))),
        fontsize=12,
        fontweight="bold",
    )
    if note:
        lines = textwrap.wrap(note, max(40, int(fig.get_figwidth() * 17)))
        # a figure-level x label: the layout keeps it clear of the axes' own labels
        fig.supxlabel("\n".join(lines), fontsize=7.5, color="#555555")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def _log_scale(ax: Axes, values: Sequence[float]) -> bool:
    """A log value axis when the bars span more than 30×, so the small one stays visible."""
    positive = [v for v in values if v == v and v > 0]
    if len(positive) == len(values) and positive and max(positive) / min(positive) > 30:
        ax.set_yscale("log")
        return True
    return False


def _value_label(unit: str, higher_is_better: bool | None, log: bool) -> str:
    """The value axis label: unit, which way is better (None: neither) and a log scale."""
    notes = (
        []
        if higher_is_better is None
        else ["higher is better" if higher_is_better else "lower is better"]
    )
    if log:
        notes.append("log scale")
    return f"{unit} ({', '.join(notes)})" if notes else unit


def _legend(ax: Axes) -> None:
    """The legend above the axes, under the title: it never hides a bar or a line."""
    n = len(ax.get_legend_handles_labels()[1])
    ax.legend(
        fontsize=9, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=min(n, 4), frameon=False
    )


def _fmt(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    if abs(v) >= 1:
        return f"{v:.2f}"
    return f"{v:.3g}"


def _label(name: str, baseline: str | None) -> str:
    return f"{name}\n(baseline)" if name == baseline else name


def bars(
    path: Path,
    title: str,
    values: Mapping[str, float],
    unit: str,
    *,
    baseline: str | None = None,
    higher_is_better: bool | None = False,
    ratio_line: bool = False,
    note: str = "",
) -> Path:
    """One bar per item (e.g. CPU µs per event for each proxy); the baseline grey, every other
    bar annotated with its value and its ratio to the baseline. `ratio_line`: the values are
    ratios to a baseline; a dashed line marks 1× (the baseline)."""
    fig, ax = _figure(min(12.0, max(6.5, 1.5 * len(values) + 2.5)))
    names = list(values)
    colors = [BASELINE_COLOR if n == baseline else COLORS[0] for n in names]
    xs = range(len(names))
    ax.bar(xs, [values[n] for n in names], color=colors, width=0.6)
    ax.set_xticks(list(xs), [_label(n, baseline) for n in names])
    if len(names) > 8:
        # Many two-line labels in a figure of bounded width: slanted, they do not overlap.
        ax.tick_params(axis="x", labelsize=8)
        for tick in ax.get_xticklabels():
            tick.set_rotation(30)
            tick.set_horizontalalignment("right")
            tick.set_rotation_mode("anchor")
    base = values.get(baseline) if baseline else None
    for x, n in zip(xs, names, strict=True):
        text = _fmt(values[n]) + ("×" if ratio_line else "")
        if base and n != baseline:
            text += f"\n{_fmt(values[n] / base)}× baseline"
        ax.annotate(
            text,
            (x, values[n]),
            ha="center",
            va="bottom",
            fontsize=9,
            xytext=(0, 2),
            textcoords="offset points",
        )
    log = _log_scale(ax, list(values.values()))
    if ratio_line:
        ax.axhline(1.0, color="#555555", ls="--", lw=1, label="baseline (1×)")
        _legend(ax)
    ax.set_ylabel(_value_label(unit, higher_is_better, log))
    ax.margins(y=0.2)
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    return _save(fig, path, title, note)


def grouped_bars(
    path: Path,
    title: str,
    groups: Mapping[str, Mapping[str, float]],
    unit: str,
    *,
    baseline: str | None = None,
    higher_is_better: bool | None = False,
    note: str = "",
) -> Path:
    """Bars side by side per group: `groups[category][series]`, e.g. p50 and p99 latency per
    settlement path, or meterkit and pure Python µs/event per stream format. A series named
    `baseline` is grey and labelled so in the legend."""
    categories = list(groups)
    series: list[str] = []
    for g in groups.values():
        series += [s for s in g if s not in series]
    fig, ax = _figure(max(6.0, 1.3 * len(categories) * max(1, len(series)) / 2 + 3.5))
    width = 0.8 / max(1, len(series))
    color_i = 0
    for j, s in enumerate(series):
        if s == baseline:
            color = BASELINE_COLOR
        else:
            color = COLORS[color_i % len(COLORS)]
            color_i += 1
        xs = [i + (j - (len(series) - 1) / 2) * width for i in range(len(categories))]
        ys = [groups[c].get(s, float("nan")) for c in categories]
        label = f"{s} (baseline)" if s == baseline else s
        bars_ = ax.bar(xs, ys, width=width * 0.95, color=color, label=label)
        ax.bar_label(bars_, labels=[_fmt(y) if y == y else "" for y in ys], fontsize=8, padding=2)
    ax.set_xticks(range(len(categories)), categories)
    log = _log_scale(ax, [v for g in groups.values() for v in g.values()])
    ax.set_ylabel(_value_label(unit, higher_is_better, log))
    ax.margins(y=0.15)
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    if len(series) > 1 or baseline:
        _legend(ax)
    return _save(fig, path, title, note)


def cdf(
    path: Path,
    title: str,
    samples: Mapping[str, Sequence[float]],
    unit: str,
    *,
    baseline: str | None = None,
    log_x: bool = False,
    note: str = "",
) -> Path:
    """Empirical CDFs of latency samples, one line per series, with the p50 and p99 levels
    marked; the baseline dashed grey. `log_x`: a log latency axis, for series an order of
    magnitude apart (a linear one would squeeze the fast ones into one line)."""
    fig, ax = _figure()
    color_i = 0
    for name, values in samples.items():
        s = sorted(values)
        if not s:
            continue
        ys = [(i + 1) / len(s) for i in range(len(s))]
        if name == baseline:
            ax.step(s, ys, where="post", color=BASELINE_COLOR, ls="--", label=f"{name} (baseline)")
        else:
            ax.step(s, ys, where="post", color=COLORS[color_i % len(COLORS)], label=name)
            color_i += 1
    for q in (0.5, 0.99):
        ax.axhline(q, color="#cccccc", lw=0.8, zorder=0)
        ax.annotate(
            f"p{round(q * 100)}",
            (1, q),
            xycoords=("axes fraction", "data"),
            xytext=(3, 0),
            textcoords="offset points",
            ha="left",
            va="center",
            fontsize=8,
            color="#777777",
        )
    if log_x:
        ax.set_xscale("log")
    ax.set_xlabel(f"{unit} (log scale)" if log_x else unit)
    ax.set_ylabel("fraction of requests at or below")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    _legend(ax)
    return _save(fig, path, title, note)


def versus(
    path: Path,
    title: str,
    xs: Sequence[float],
    series: Mapping[str, Sequence[float]],
    xlabel: str,
    unit: str,
    *,
    baseline: str | None = None,
    higher_is_better: bool | None = None,
    note: str = "",
) -> Path:
    """Lines of a figure against a load level (e.g. TTFT or throughput versus concurrent
    streams), one per series; the baseline dashed grey. Lines more than 30× apart get a log
    value axis, so the lowest is not drawn flat on zero."""
    fig, ax = _figure()
    color_i = 0
    for name, ys in series.items():
        if name == baseline:
            ax.plot(xs, ys, marker="o", color=BASELINE_COLOR, ls="--", label=f"{name} (baseline)")
        else:
            ax.plot(xs, ys, marker="o", color=COLORS[color_i % len(COLORS)], label=name)
            color_i += 1
    if len(xs) > 2 and min(xs) > 0 and max(xs) / min(xs) >= 50:
        ax.set_xscale("log")
    ax.set_xticks(list(xs), [f"{x:g}" for x in xs])
    ax.set_xlabel(xlabel)
    log = _log_scale(ax, [y for ys in series.values() for y in ys])
    ax.set_ylabel(_value_label(unit, higher_is_better, log))
    if not log:
        ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    _legend(ax)
    return _save(fig, path, title, note)

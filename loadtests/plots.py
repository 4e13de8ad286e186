"""PNG plots of load-test results (matplotlib, Agg backend, no display).

TTFT against input length per server, TTFT/E2EL latency CDFs, and output
token throughput over time.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from loadtests.client import RequestResult  # noqa: E402
from loadtests.metrics import output_token_timeline  # noqa: E402

ResultsByServer = Mapping[str, Sequence[RequestResult]]


def save_figure(fig: Figure, path: Path) -> Path:
    """Write `fig` as a PNG at `path` and free it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def label_axes(ax: Axes, xlabel: str, ylabel: str, title: str, legend: bool = True) -> None:
    """Axis labels, title, a light grid and (optionally) the legend."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if legend:
        ax.legend()


def plot_ttft_vs_input(results: ResultsByServer, path: Path) -> Path:
    """Scatter of TTFT (ms) against prompt tokens, with per-bucket medians."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, rows in results.items():
        ok = [r for r in rows if r.success and r.ttft_s is not None]
        points = ax.scatter([r.input_tokens for r in ok], [r.ttft_s * 1000 for r in ok], s=14, alpha=0.6, label=label)
        buckets = sorted({r.bucket for r in ok}, key=lambda b: int(b) if b.isdigit() else 0)
        xs = [float(np.median([r.input_tokens for r in ok if r.bucket == b])) for b in buckets]
        ys = [float(np.median([r.ttft_s * 1000 for r in ok if r.bucket == b])) for b in buckets]
        ax.plot(xs, ys, marker="o", color=points.get_facecolor()[0][:3], linewidth=1.5)
    label_axes(ax, "input tokens", "TTFT (ms)", "Time to first token vs input length (line: bucket medians)")
    return save_figure(fig, path)


def plot_latency_cdfs(results: ResultsByServer, path: Path) -> Path:
    """Empirical CDFs of TTFT and end-to-end latency per server."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, name, attr in ((axes[0], "TTFT", "ttft_s"), (axes[1], "E2E latency", "e2el_s")):
        for label, rows in results.items():
            values = np.sort([getattr(r, attr) * 1000 for r in rows if r.success and getattr(r, attr) is not None])
            if len(values):
                fractions = np.arange(0, len(values) + 1) / len(values)
                ax.step(np.concatenate([values[:1], values]), fractions, where="post", label=label)
        label_axes(ax, f"{name} (ms)", "fraction of requests", f"{name} CDF")
    return save_figure(fig, path)


def plot_throughput(results: ResultsByServer, path: Path) -> Path:
    """Output tokens per second in 1 s bins over the run, per server."""
    fig, ax = plt.subplots(figsize=(7, 4))
    for label, rows in results.items():
        timeline = output_token_timeline(rows)
        ax.step(np.arange(len(timeline)), timeline, where="post", label=label)
    label_axes(ax, "time since run start (s)", "output tokens / s", "Output throughput over time")
    return save_figure(fig, path)


def loadtest_plots(results: ResultsByServer, folder: Path) -> list[Path]:
    """All load-test plots into `folder`; returns the PNG paths."""
    return [
        plot_ttft_vs_input(results, folder / "ttft_vs_input.png"),
        plot_latency_cdfs(results, folder / "latency_cdf.png"),
        plot_throughput(results, folder / "throughput.png"),
    ]

"""Depth x length accuracy heat-maps of the needle tasks (PNG, Agg backend)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from accuracy.results import EvalReport
from loadtests.plots import plt


def plot_depth_heatmaps(reports: Mapping[str, EvalReport], path: Path) -> Path | None:
    """One heat-map per server x needle task (rows: depth, columns: length).

    Returns None when no report has depth cells (no needle task was run).
    """
    tasks = list(dict.fromkeys(c.task for r in reports.values() for c in r.depth_cells))
    if not tasks:
        return None
    fig, axes = plt.subplots(len(reports), len(tasks), figsize=(3.2 * len(tasks) + 1, 3.0 * len(reports)), squeeze=False)
    fig.subplots_adjust(wspace=0.35, hspace=0.45)
    image = None
    for row, (label, report) in enumerate(reports.items()):
        for col, task in enumerate(tasks):
            cells = [c for c in report.depth_cells if c.task == task]
            depths = sorted({c.depth for c in cells})
            lengths = sorted({c.length for c in cells})
            grid = np.full((len(depths), len(lengths)), np.nan)
            for c in cells:
                if c.accuracy is not None:
                    grid[depths.index(c.depth), lengths.index(c.length)] = c.accuracy
            ax = axes[row][col]
            image = ax.imshow(grid, vmin=0, vmax=100, cmap="RdYlGn", aspect="auto")
            for (i, j), value in np.ndenumerate(grid):
                ax.text(j, i, "n/a" if np.isnan(value) else f"{value:.0f}", ha="center", va="center", fontsize=8)
            ax.set_xticks(range(len(lengths)), [str(n) for n in lengths], fontsize=8)
            ax.set_yticks(range(len(depths)), [f"{d:.0%}" for d in depths], fontsize=8)
            ax.set_xlabel("context length (tokens)", fontsize=8)
            if col == 0:
                ax.set_ylabel("needle depth", fontsize=8)
            ax.set_title(f"{label}: {task}", fontsize=9)
    if image is not None:
        fig.colorbar(image, ax=axes, shrink=0.8, label="accuracy %")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path

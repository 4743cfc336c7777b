"""Matplotlib set-up shared by the plotters: Agg backend (no display), readable fonts, PNG files."""

from __future__ import annotations

import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

__all__ = ["Axes", "Figure", "new_figure", "save"]

DPI = 100
PANEL_INCHES = (11.0, 6.5)
"""One panel: 1100 x 650 pixels at DPI."""

plt.rcParams.update({
    "font.size": 13,
    "axes.titlesize": 15,
    "axes.labelsize": 13,
    "legend.fontsize": 11,
    "xtick.labelsize": 12,
    "ytick.labelsize": 12,
    "figure.titlesize": 12,
})


def new_figure(subtitle: str, columns: int = 1, rows: int = 1) -> tuple[Figure, Axes | list[Axes]]:
    """A figure of rows x columns panels with the workload as a small line at the top."""
    width = PANEL_INCHES[0] if columns == 1 else 7.0 * columns
    height = PANEL_INCHES[1] if rows == 1 else 5.5 * rows
    fig, axes = plt.subplots(rows, columns, figsize=(width, height), dpi=DPI, squeeze=False)
    lines = textwrap.wrap(subtitle, width=int(width * 13))
    fig.text(0.99, 0.005, "\n".join(lines), ha="right", va="bottom", fontsize=10,
             color="dimgray", gid="subtitle")
    flat = [ax for row in axes for ax in row]
    return fig, (flat[0] if len(flat) == 1 else flat)


def save(fig: Figure, path: Path) -> Path:
    """Lay out, write the PNG, close the figure; return the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = max((t.get_text().count("\n") + 1 for t in fig.texts if t.get_gid() == "subtitle"),
                default=0)
    bottom = (0.05 + 0.18 * lines) / fig.get_figheight()
    fig.tight_layout(rect=(0, bottom, 1, 1))
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path

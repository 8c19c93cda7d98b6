"""PNG plots of results: a value against the compression rate, one line per series (the report stage's figures
and the quality benchmark's methods × rates). Files only (matplotlib's Agg backend), written atomically."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.artifacts import atomic_path

RATE_LABEL = "target compression rate (decoder-block parameters removed)"


def figure(ncols: int = 1, size: tuple[float, float] = (6, 4), **kwargs: Any) -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt.subplots(1, ncols, figsize=size, **kwargs)


def save(fig: Any, out: Path) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def plot_vs_rate(series: dict[str, list[tuple[float, float]]], ylabel: str, out: Path, *,
                 reference: float | None = None, log_y: bool = False, xlabel: str = RATE_LABEL,
                 title: str | None = None, size: tuple[float, float] = (6, 4)) -> None:
    """One line per series of (rate, value) points, a dashed line at the dense ``reference``; a log y axis gets
    labelled minor ticks (perplexities span decades across rates)."""
    fig, ax = figure(size=size)
    for name, points in sorted(series.items()):
        xs, ys = zip(*sorted(points), strict=True)
        ax.plot(xs, ys, marker="o", label=name)
    if reference is not None:
        ax.axhline(reference, color="gray", linestyle="--", label="dense")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title, fontsize=9)
    if log_y:
        from matplotlib.ticker import LogLocator, ScalarFormatter

        ax.set_yscale("log")
        ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(ScalarFormatter())
        ax.yaxis.set_minor_formatter(ScalarFormatter())
        ax.tick_params(axis="y", which="minor", labelsize=7)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save(fig, out)

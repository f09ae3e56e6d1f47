"""Reliability diagrams drawn with matplotlib's object API (no pyplot: headless, no global state).

Used by the run report (:mod:`fedeye.fairness.report`, pooled and per site)
and by ``fedeye evaluate --plot`` (one site folder). Each panel shows the
observed positive rate against the mean predicted probability of each
non-empty bin, before and after calibration, with the diagonal of perfect
calibration and each curve's ECE in the legend.

>>> from fedeye.fairness.reliability import ReliabilityDiagram, bin_sums
>>> bins = bin_sums(np.array([0.1, 0.8, 0.9]), np.array([0.0, 1.0, 1.0]))
>>> fig = reliability_figure({"site": ReliabilityDiagram(bins)})
>>> len(fig.axes)
1
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from fedeye.fairness.reliability import ReliabilityBins, ReliabilityDiagram

_COLUMNS = 3


def reliability_figure(diagrams: Mapping[str, ReliabilityDiagram]) -> Figure:
    """One panel per diagram (titled by its key), up to three a row."""
    count = max(len(diagrams), 1)
    columns = min(count, _COLUMNS)
    rows = math.ceil(count / columns)
    fig = Figure(figsize=(3.8 * columns, 3.8 * rows), dpi=110, layout="constrained")
    for k, (title, diagram) in enumerate(diagrams.items()):
        draw_reliability(fig.add_subplot(rows, columns, k + 1), diagram, title=title)
    return fig


def draw_reliability(ax: Axes, diagram: ReliabilityDiagram, *, title: str) -> None:
    """The diagonal, then the curve before calibration and (when there is one) after it."""
    ax.plot([0, 1], [0, 1], color="grey", linewidth=0.8, linestyle="--", label="perfectly calibrated")
    _curve(ax, diagram.before, "before calibration", "o")
    if diagram.after is not None:
        _curve(ax, diagram.after, "after calibration", "s")
    withheld = f", {diagram.before.withheld} withheld" if diagram.before.withheld else ""
    ax.set(
        xlim=(-0.02, 1.02),
        ylim=(-0.02, 1.02),
        xlabel="mean predicted probability",
        ylabel="observed positive rate",
        title=f"{title} ({diagram.total} images{withheld})",
    )
    ax.set_aspect("equal")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")


def _curve(ax: Axes, bins: ReliabilityBins, label: str, marker: str) -> None:
    shown = np.asarray(bins.images) > 0
    ece = "-" if bins.total == 0 else f"{bins.ece():.3f}"
    ax.plot(
        bins.mean_probability()[shown],
        bins.observed_rate()[shown],
        marker=marker,
        markersize=4,
        label=f"{label} (ECE {ece})",
    )

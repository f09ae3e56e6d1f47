"""The reliability figure: one panel per diagram, the diagonal, and each curve's ECE in its legend."""

from __future__ import annotations

import numpy as np

from fedeye.fairness.operating_point import Calibration
from fedeye.fairness.reliability import ReliabilityDiagram, bin_sums, reliability_diagram
from fedeye.fairness.reliability_plot import reliability_figure
from tests.fairness.conftest import random_site


def test_each_panel_has_the_diagonal_and_both_curves_with_their_ece() -> None:
    labels, probs, _ = random_site(3)
    diagram = reliability_diagram(labels, probs, Calibration(bias=0.2, temperature=0.7))
    assert diagram.after is not None

    fig = reliability_figure({"pooled": diagram, "site A": diagram, "site B": diagram, "site C": diagram})

    assert len(fig.axes) == 4  # three a row, two rows
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert legend == [
        "perfectly calibrated",
        f"before calibration (ECE {diagram.before.ece():.3f})",
        f"after calibration (ECE {diagram.after.ece():.3f})",
    ]
    before = fig.axes[0].get_lines()[1]
    shown = np.asarray(diagram.before.images) > 0
    assert np.allclose(before.get_xdata(), diagram.before.mean_probability()[shown])  # type: ignore[arg-type]
    assert np.allclose(before.get_ydata(), diagram.before.observed_rate()[shown])  # type: ignore[arg-type]
    assert fig.axes[0].get_title() == f"pooled ({len(labels)} images)"


def test_the_title_counts_withheld_images() -> None:
    labels, probs, _ = random_site(4)
    diagram = reliability_diagram(labels, probs, min_group_size=15)
    assert diagram.before.withheld > 0
    title = reliability_figure({"site": diagram}).axes[0].get_title()
    assert title == f"site ({diagram.total} images, {diagram.before.withheld} withheld)"


def test_a_diagram_without_calibration_has_one_curve() -> None:
    bins = bin_sums(np.array([0.1, 0.15, 0.9]), np.array([0.0, 1.0, 1.0]))
    fig = reliability_figure({"site": ReliabilityDiagram(bins)})
    assert len(fig.axes[0].get_lines()) == 2  # the diagonal and "before"

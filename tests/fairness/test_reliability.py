"""Reliability-diagram bins: sums of sites are the pooled diagram, small bins are withheld, ECE agrees."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedeye.fairness.metrics import expected_calibration_error
from fedeye.fairness.operating_point import Calibration
from fedeye.fairness.reliability import (
    NUM_BINS,
    ReliabilityBins,
    ReliabilityDiagram,
    RunReliability,
    bin_sums,
    reliability_diagram,
)

CALIBRATION = Calibration(bias=0.4, temperature=1.8)


def _site(seed: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels and overconfident two-column probabilities of one fake site."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    d = 2.5 * (labels - 0.5) + rng.normal(0.3, 1.5, n)
    p1 = 1 / (1 + np.exp(-2 * d))
    return labels, np.column_stack([1 - p1, p1])


def _reference_ece(labels: np.ndarray, confidence: np.ndarray, outcome: np.ndarray, n_bins: int) -> float:
    """The ECE as FedEye computed it before it was read off the bins (mean gap per occupied bin)."""
    bins = np.minimum((confidence * n_bins).astype(np.int64), n_bins - 1)
    return float(
        sum((bins == b).mean() * abs(outcome[bins == b].mean() - confidence[bins == b].mean()) for b in np.unique(bins))
    )


def test_the_sum_of_site_bins_is_the_pooled_diagram() -> None:
    # Prepare: three sites of different sizes, and all their images pooled
    sites = [_site(seed, n) for seed, n in ((1, 80), (2, 150), (3, 45))]
    labels = np.concatenate([s[0] for s in sites])
    probs = np.concatenate([s[1] for s in sites])

    # Execute
    summed = RunReliability.from_sites(
        {f"site-{k}": reliability_diagram(lab, pr, CALIBRATION) for k, (lab, pr) in enumerate(sites)}
    ).pooled
    pooled = reliability_diagram(labels, probs, CALIBRATION)

    # Assert: counts equal exactly, probability sums to rounding, and so the ECE of the pooled images
    for got, want in ((summed.before, pooled.before), (summed.after, pooled.after)):
        assert got is not None and want is not None
        assert got.images == want.images and got.positives == want.positives and got.total == len(labels)
        assert got.probability_sums == pytest.approx(want.probability_sums, rel=1e-12)
    assert summed.before.ece() == pytest.approx(expected_calibration_error(labels, probs))
    assert summed.after.ece() == pytest.approx(  # type: ignore[union-attr]
        expected_calibration_error(labels, CALIBRATION.probability(np.log(probs[:, 1]) - np.log(probs[:, 0])))
    )
    assert summed.after.images != summed.before.images  # type: ignore[union-attr]  # calibration moved images


def test_bins_under_min_group_size_are_withheld() -> None:
    # Prepare: 20 images near 0.15, 3 near 0.55, 12 near 0.95
    probs1 = np.array([0.15] * 20 + [0.55] * 3 + [0.95] * 12)
    labels = np.array([0] * 18 + [1] * 2 + [1, 0, 1] + [1] * 11 + [0])
    probs = np.column_stack([1 - probs1, probs1])

    # Execute
    diagram = reliability_diagram(labels, probs, min_group_size=10)

    # Assert: the 3-image bin is sent as empty and only counted; the others are whole
    bins = diagram.before
    assert bins.images[5] == 0 and bins.positives[5] == 0 and bins.probability_sums[5] == 0.0
    assert bins.withheld == 3 and bins.total == 32
    assert (bins.images[1], bins.positives[1], bins.images[9], bins.positives[9]) == (20, 2, 12, 11)
    assert bins.probability_sums[1] == pytest.approx(3.0)
    assert diagram.after is None  # no calibration given
    assert reliability_diagram(labels, probs, min_group_size=21).before.total == 0  # every bin withheld


def test_a_pooled_diagram_keeps_after_only_when_every_site_has_it() -> None:
    labels, probs = _site(4, 60)
    calibrated = reliability_diagram(labels, probs, CALIBRATION)
    plain = reliability_diagram(labels, probs)
    assert (calibrated + plain).after is None
    assert (calibrated + calibrated).after == calibrated.after + calibrated.after  # type: ignore[operator]
    assert (calibrated + plain).before.images == tuple(2 * n for n in plain.before.images)


@pytest.mark.parametrize("n_bins", [1, 5, NUM_BINS, 15])
def test_ece_read_off_the_bins_equals_the_per_bin_mean_gap(n_bins: int) -> None:
    rng = np.random.default_rng(n_bins)
    labels, probs = _site(n_bins, 300)
    three = rng.dirichlet(np.ones(3), 200)  # multiclass: top-label confidence and accuracy
    three_labels = rng.integers(0, 3, 200)
    assert expected_calibration_error(labels, probs, n_bins=n_bins) == pytest.approx(
        _reference_ece(labels, probs[:, 1], (labels == 1).astype(float), n_bins)
    )
    assert expected_calibration_error(three_labels, three, n_bins=n_bins) == pytest.approx(
        _reference_ece(three_labels, three.max(axis=1), (three.argmax(axis=1) == three_labels).astype(float), n_bins)
    )


def test_probability_one_falls_in_the_last_bin_and_no_images_is_nan() -> None:
    bins = bin_sums(np.array([1.0, 0.0]), np.array([1.0, 0.0]))
    assert bins.images[-1] == 1 and bins.images[0] == 1 and bins.ece() == 0.0
    assert math.isnan(ReliabilityBins.empty().ece())
    assert np.isnan(ReliabilityBins.empty().observed_rate()).all()


def test_json_round_trip_and_mismatched_bins_are_refused() -> None:
    labels, probs = _site(5, 70)
    run = RunReliability.from_sites({"a": reliability_diagram(labels, probs, CALIBRATION, min_group_size=8)})
    assert RunReliability.from_json(run.to_json()) == run
    with pytest.raises(ValueError, match="cannot add 10 bins to 5"):
        _ = ReliabilityBins.empty() + ReliabilityBins.empty(5)
    with pytest.raises(ValueError, match="no site"):
        RunReliability.from_sites({})
    assert ReliabilityDiagram.from_json({"before": ReliabilityBins.empty().to_json()}).after is None

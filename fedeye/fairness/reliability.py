"""Reliability diagrams from per-bin sums: pure functions, no I/O.

A reliability diagram (DeGroot and Fienberg, "The Comparison and Evaluation
of Forecasters", 1983; Guo et al., "On Calibration of Modern Neural
Networks", ICML 2017, Fig. 1) puts the images in equal-width bins of
predicted probability and plots, per bin, the observed positive rate against
the mean predicted probability. Both are ratios of sums, so per bin three
numbers describe it (:class:`ReliabilityBins`): the images, the sum of their
predicted probabilities and the positives. Bins of several sites add up to
the pooled diagram, and :meth:`ReliabilityBins.ece` of the sum is the ECE of
the pooled images (:func:`fedeye.fairness.metrics.expected_calibration_error`
is computed from these bins).

A site sends them before and after the federation's calibration
(:class:`ReliabilityDiagram`). A bin with fewer images than the site's
``min_group_size`` is withheld, as a class of the score summary is
(:mod:`fedeye.client.operating_point`): its three numbers are sent as 0 and
its images only counted in ``withheld`` (which follows from the site's image
count anyway). Nothing in it is per image.

>>> labels = np.array([0, 0, 1, 1])
>>> bins = bin_sums(np.array([0.05, 0.15, 0.15, 0.95]), labels.astype(float))
>>> bins.images[:2], bins.positives[:2], round(bins.ece(), 3)
((1, 2), (0, 1), 0.2)
>>> (bins + bins).images[:2], (bins + bins).ece() == bins.ece()
((2, 4), True)
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedeye.fairness.operating_point import Calibration, positive_log_odds

#: Equal-width probability bins of a reliability diagram (and of the ECE FedEye reports).
NUM_BINS = 10


@dataclass(frozen=True)
class ReliabilityBins:
    """Per probability bin: images, sum of predicted probabilities, positives; and images withheld.

    Bin ``b`` of ``k`` holds probabilities in ``[b / k, (b + 1) / k)``, the
    last one includes 1. A withheld bin reads as empty.
    """

    images: tuple[int, ...]
    probability_sums: tuple[float, ...]
    positives: tuple[int, ...]
    withheld: int = 0

    def __post_init__(self) -> None:
        if not len(self.images) == len(self.probability_sums) == len(self.positives):
            raise ValueError(
                f"reliability bins differ in length: {len(self.images)} images, "
                f"{len(self.probability_sums)} probability sums, {len(self.positives)} positives"
            )

    @classmethod
    def empty(cls, num_bins: int = NUM_BINS) -> ReliabilityBins:
        """No image in any bin."""
        return cls((0,) * num_bins, (0.0,) * num_bins, (0,) * num_bins)

    def __add__(self, other: ReliabilityBins) -> ReliabilityBins:
        if len(self.images) != len(other.images):
            raise ValueError(f"cannot add {len(self.images)} bins to {len(other.images)}")
        return ReliabilityBins(
            tuple(a + b for a, b in zip(self.images, other.images)),
            tuple(a + b for a, b in zip(self.probability_sums, other.probability_sums)),
            tuple(a + b for a, b in zip(self.positives, other.positives)),
            self.withheld + other.withheld,
        )

    @property
    def total(self) -> int:
        """Images in the bins (withheld ones not included)."""
        return sum(self.images)

    def mean_probability(self) -> np.ndarray:
        """Mean predicted probability per bin (NaN where empty)."""
        return _ratio(self.probability_sums, self.images)

    def observed_rate(self) -> np.ndarray:
        """Share of positives per bin (NaN where empty)."""
        return _ratio(self.positives, self.images)

    def ece(self) -> float:
        """Expected calibration error of the binned images: ``sum_b |positives_b - probability_sum_b| / n``."""
        if self.total == 0:
            return math.nan
        gaps = np.abs(np.asarray(self.positives, dtype=np.float64) - np.asarray(self.probability_sums))
        return float(gaps.sum() / self.total)

    def withhold_below(self, min_size: int) -> ReliabilityBins:
        """The bins with fewer than ``min_size`` images emptied, their images counted in ``withheld``."""
        kept = [n >= min_size for n in self.images]
        return ReliabilityBins(
            tuple(n if k else 0 for n, k in zip(self.images, kept)),
            tuple(s if k else 0.0 for s, k in zip(self.probability_sums, kept)),
            tuple(p if k else 0 for p, k in zip(self.positives, kept)),
            self.withheld + sum(n for n, k in zip(self.images, kept) if not k),
        )

    def to_json(self) -> dict[str, Any]:
        """Plain lists and numbers (the run store keeps this)."""
        return {
            "images": list(self.images),
            "probability_sums": list(self.probability_sums),
            "positives": list(self.positives),
            "withheld": self.withheld,
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> ReliabilityBins:
        """The bins :meth:`to_json` wrote (ValueError or KeyError if malformed)."""
        return cls(
            tuple(int(v) for v in raw["images"]),
            tuple(float(v) for v in raw["probability_sums"]),
            tuple(int(v) for v in raw["positives"]),
            int(raw.get("withheld", 0)),
        )


def _ratio(numerator: Iterable[float], denominator: Iterable[int]) -> np.ndarray:
    top, bottom = np.asarray(list(numerator), dtype=np.float64), np.asarray(list(denominator), dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(bottom > 0, top / bottom, np.nan)


def bin_sums(confidence: np.ndarray, outcome: np.ndarray, *, num_bins: int = NUM_BINS) -> ReliabilityBins:
    """The bins of ``confidence`` (probabilities in [0, 1]) with ``outcome`` (1.0: positive, or correct).

    Raises
    ------
    ValueError
        ``num_bins`` < 1, or the arrays differ in length.
    """
    if num_bins < 1:
        raise ValueError(f"num_bins must be >= 1, got {num_bins}")
    confidence, outcome = np.asarray(confidence, dtype=np.float64), np.asarray(outcome, dtype=np.float64)
    if len(confidence) != len(outcome):
        raise ValueError(f"confidence and outcome differ in length: {len(confidence)} vs {len(outcome)}")
    index = np.clip((confidence * num_bins).astype(np.int64), 0, num_bins - 1)
    images = np.bincount(index, minlength=num_bins)
    sums = np.bincount(index, weights=confidence, minlength=num_bins)
    positives = np.rint(np.bincount(index, weights=outcome, minlength=num_bins)).astype(np.int64)
    return ReliabilityBins(
        tuple(int(v) for v in images), tuple(float(v) for v in sums), tuple(int(v) for v in positives)
    )


@dataclass(frozen=True)
class ReliabilityDiagram:
    """A binary classifier's bins before calibration and, when it has one, after it."""

    before: ReliabilityBins
    after: ReliabilityBins | None = None

    def __add__(self, other: ReliabilityDiagram) -> ReliabilityDiagram:
        """The pooled diagram; ``after`` only where both have one (else the sum would mix in uncalibrated sites)."""
        after = None if self.after is None or other.after is None else self.after + other.after
        return ReliabilityDiagram(self.before + other.before, after)

    @property
    def total(self) -> int:
        """Images in the bins before calibration."""
        return self.before.total

    def to_json(self) -> dict[str, Any]:
        """Plain data (the run store and ``fedeye evaluate --json`` show this)."""
        return {"before": self.before.to_json(), "after": None if self.after is None else self.after.to_json()}

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> ReliabilityDiagram:
        """The diagram :meth:`to_json` wrote."""
        after = raw.get("after")
        return cls(
            ReliabilityBins.from_json(raw["before"]), None if after is None else ReliabilityBins.from_json(after)
        )


def reliability_diagram(
    labels: np.ndarray,
    probs: np.ndarray,
    calibration: Calibration | None = None,
    *,
    min_group_size: int = 0,
    num_bins: int = NUM_BINS,
) -> ReliabilityDiagram:
    """The bins of two-column class probabilities, before and (given ``calibration``) after it.

    Bins with fewer than ``min_group_size`` images are withheld (0: none).

    >>> labels = np.array([0] * 12 + [1] * 3)
    >>> probs = np.column_stack([np.full(15, 0.9), np.full(15, 0.1)])
    >>> diagram = reliability_diagram(labels, probs, Calibration(bias=0.0, temperature=0.5), min_group_size=10)
    >>> diagram.before.images[1], diagram.before.positives[1], diagram.after.images[0]
    (15, 3, 15)
    """
    labels, probs = np.asarray(labels), np.asarray(probs, dtype=np.float64)
    outcome = (labels == 1).astype(np.float64)
    before = bin_sums(probs[:, 1], outcome, num_bins=num_bins).withhold_below(min_group_size)
    if calibration is None:
        return ReliabilityDiagram(before)
    calibrated = calibration.probability(positive_log_odds(probs))
    return ReliabilityDiagram(before, bin_sums(calibrated, outcome, num_bins=num_bins).withhold_below(min_group_size))


@dataclass(frozen=True)
class RunReliability:
    """A run's reliability diagrams: each site's, and their sum (computed by the coordinator)."""

    sites: Mapping[str, ReliabilityDiagram]
    pooled: ReliabilityDiagram

    @classmethod
    def from_sites(cls, sites: Mapping[str, ReliabilityDiagram]) -> RunReliability:
        """The sites' diagrams and their sum (ValueError: no site, or bins of different counts)."""
        diagrams = list(sites.values())
        if not diagrams:
            raise ValueError("no site sent a reliability diagram")
        pooled = diagrams[0]
        for diagram in diagrams[1:]:
            pooled = pooled + diagram
        return cls(dict(sites), pooled)

    def to_json(self) -> dict[str, Any]:
        """Plain data for the run store."""
        return {"pooled": self.pooled.to_json(), "sites": {s: d.to_json() for s, d in self.sites.items()}}

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> RunReliability:
        """What :meth:`to_json` wrote."""
        sites = {str(s): ReliabilityDiagram.from_json(d) for s, d in raw["sites"].items()}
        return cls(sites, ReliabilityDiagram.from_json(raw["pooled"]))

"""The site's side of the operating point: its score summary, and metrics at a given point.

A site asked to summarise (:data:`fedeye.protocol.SUMMARIZE_SCORES`) sends a
:data:`fedeye.protocol.SCORE_SUMMARY` record, in two steps: first the count,
sum and sum of squares of its validation log-odds (``moments``), from which
the coordinator places the grids; then (``counts``) per class, the count of
images scoring at or above each threshold of the grid, and the summed
log-loss at each (bias, temperature) of the calibration grid, flattened, and
its bias-0 row on its own for coordinators that fit a temperature only
(:mod:`fedeye.fairness.operating_point`). Nothing in it is per image; a
class with fewer than the site's ``min_group_size`` images is not sent, nor
is the log-loss then, nor are the moments of fewer images. The audit mod
logs the record with the rest of the reply.

The final test evaluation (:data:`fedeye.protocol.SEND_RELIABILITY`) also
asks for a :data:`fedeye.protocol.RELIABILITY` record: per probability bin,
images, summed probability and positives, before and after the federation's
calibration (:mod:`fedeye.fairness.reliability`); a bin with fewer than
``min_group_size`` images is withheld by the same rule.
"""

from __future__ import annotations

import numpy as np
from flwr.app import ConfigRecord, MetricRecord

from fedeye import protocol as p
from fedeye.fairness.metrics import expected_calibration_error
from fedeye.fairness.operating_point import (
    ModelOperatingPoint,
    ScoreScale,
    bootstrap_rates,
    counts_above,
    nll_per_bias_temperature,
    positive_log_odds,
    rates_at,
    score_moments,
)
from fedeye.fairness.reliability import ReliabilityBins, reliability_diagram


def summary_for(
    config: ConfigRecord, probs: np.ndarray, labels: np.ndarray, *, min_group_size: int
) -> MetricRecord | None:
    """The summary an evaluate message asks for (None: none asked, a multiclass task, or nothing to send)."""
    asked = config.get(p.SUMMARIZE_SCORES)
    if not asked or probs.ndim != 2 or probs.shape[1] != 2:
        return None
    if asked == p.MOMENTS:
        return score_moments_record(probs, min_group_size=min_group_size)
    scale = ScoreScale(float(config.get(p.SCORE_CENTER, 0.0)), float(config.get(p.SCORE_SCALE, 1.0)))  # type: ignore[arg-type]
    return score_summary(probs, labels, min_group_size=min_group_size, scale=scale)


def score_moments_record(probs: np.ndarray, *, min_group_size: int) -> MetricRecord | None:
    """Count, sum and sum of squares of the site's log-odds (None: fewer than ``min_group_size`` images)."""
    count, total, squares = score_moments(positive_log_odds(probs))
    if count < min_group_size:
        return None
    return MetricRecord({p.SUMMARY_IMAGES: count, p.SUMMARY_SUM: total, p.SUMMARY_SQUARES: squares})


def score_summary(
    probs: np.ndarray, labels: np.ndarray, *, min_group_size: int, scale: ScoreScale | None = None
) -> MetricRecord | None:
    """The site's counts and log-losses on ``scale``'s grids (None: a multiclass task or nothing to send)."""
    if probs.ndim != 2 or probs.shape[1] != 2:
        return None
    scale = scale or ScoreScale()
    d = positive_log_odds(probs)
    pos, neg = counts_above(labels, d, scale.thresholds)
    num_pos, num_neg = int((labels == 1).sum()), int((labels != 1).sum())
    record: dict[str, int | float | list[int] | list[float]] = {}
    if num_pos >= min_group_size:
        record.update({p.SUMMARY_POSITIVES: num_pos, p.SUMMARY_POSITIVES_ABOVE: [int(v) for v in pos]})
    if num_neg >= min_group_size:
        record.update({p.SUMMARY_NEGATIVES: num_neg, p.SUMMARY_NEGATIVES_ABOVE: [int(v) for v in neg]})
    if num_pos >= min_group_size and num_neg >= min_group_size:
        nll = nll_per_bias_temperature(labels, d, scale.biases, scale.temperatures)
        record[p.SUMMARY_NLL_GRID] = [float(v) for v in nll.ravel()]
        record[p.SUMMARY_NLL] = [float(v) for v in nll[-1]]  # the bias-0 row: temperature scaling
    return MetricRecord(record) if record else None


def reliability_for(
    config: ConfigRecord,
    probs: np.ndarray,
    labels: np.ndarray,
    point: ModelOperatingPoint | None,
    *,
    min_group_size: int,
) -> MetricRecord | None:
    """The reliability bins an evaluate message asks for (None: not asked, a multiclass task, or all withheld).

    After calibration only when the message carries the federation's ``point``.
    """
    if not config.get(p.SEND_RELIABILITY) or probs.ndim != 2 or probs.shape[1] != 2:
        return None
    calibration = None if point is None else point.calibration
    diagram = reliability_diagram(labels, probs, calibration, min_group_size=min_group_size)
    if diagram.total == 0 and (diagram.after is None or diagram.after.total == 0):
        return None
    record = _bin_values(diagram.before)
    if diagram.after is not None:
        record.update({p.calibrated_key(k): v for k, v in _bin_values(diagram.after).items()})
    return MetricRecord(record)


def _bin_values(bins: ReliabilityBins) -> dict[str, int | float | list[int] | list[float]]:
    return {
        p.BIN_IMAGES: list(bins.images),
        p.BIN_PROBABILITY_SUMS: list(bins.probability_sums),
        p.BIN_POSITIVES: list(bins.positives),
        p.BIN_WITHHELD: bins.withheld,
    }


def point_from_config(config: ConfigRecord) -> ModelOperatingPoint | None:
    """The operating point an evaluate message carries, if any."""
    if p.OPERATING_LOG_ODDS not in config:
        return None
    log_odds, temperature = float(config[p.OPERATING_LOG_ODDS]), float(config.get(p.TEMPERATURE, 1.0))  # type: ignore[arg-type]
    bias = float(config.get(p.CALIBRATION_BIAS, 0.0))  # type: ignore[arg-type]
    return ModelOperatingPoint(log_odds, temperature, "", "federation", (0, 0), float("nan"), float("nan"), bias)


def metrics_at_point(
    probs: np.ndarray,
    labels: np.ndarray,
    point: ModelOperatingPoint,
    *,
    resamples: int = 1000,
    seed: int = 0,
) -> dict[str, float]:
    """Accuracy and :data:`~fedeye.fairness.operating_point.RATE_NAMES` at ``point``, with bootstrap 95% CIs.

    Keys: each rate, ``<rate>-ci-low``/``<rate>-ci-high``, ``accuracy``,
    ``threshold`` (calibrated probability), ``temperature``, ``bias``,
    ``ece`` (uncalibrated) and ``ece-calibrated``. A binary task only.
    """
    d = positive_log_odds(probs)
    rates = rates_at(labels, d, point.log_odds)
    out: dict[str, float] = dict(rates)
    for name, (low, high) in bootstrap_rates(labels, d, point.log_odds, resamples=resamples, seed=seed).items():
        out[f"{name}-ci-low"], out[f"{name}-ci-high"] = low, high
    out["accuracy"] = float(((d >= point.log_odds) == (labels == 1)).mean()) if len(labels) else float("nan")
    out["threshold"], out["temperature"], out["bias"] = point.threshold, point.temperature, point.bias
    out["ece"] = expected_calibration_error(labels, probs[:, 1])
    out["ece-calibrated"] = expected_calibration_error(labels, point.calibration.probability(d))
    return out

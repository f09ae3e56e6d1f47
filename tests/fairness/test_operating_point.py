"""Threshold choice, temperature and affine calibration fitting against sklearn and brute force."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import minimize, minimize_scalar
from sklearn.metrics import log_loss, roc_curve

from fedeye.fairness.metrics import expected_calibration_error
from fedeye.fairness.operating_point import (
    LOG_ODDS_GRID,
    METADATA_KEY,
    NLL_GRID_SHAPE,
    TEMPERATURE_GRID,
    Calibration,
    ModelOperatingPoint,
    ScoreScale,
    bootstrap_rates,
    choose_threshold,
    counts_above,
    fit_calibration,
    fit_local_operating_point,
    fit_temperature,
    nll_per_bias_temperature,
    nll_per_temperature,
    positive_log_odds,
    rates_at,
)


@pytest.fixture
def scores() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, 400)
    return labels, rng.normal(2.5 * labels - 1.0, 1.5)  # log-odds, overconfident by design


def test_counts_match_sklearn_roc(scores: tuple[np.ndarray, np.ndarray]) -> None:
    labels, d = scores
    pos, neg = counts_above(labels, d)
    fpr, tpr, thresholds = roc_curve(labels, d, drop_intermediate=False)
    for t, f, s in zip(thresholds[1:], fpr[1:], tpr[1:], strict=True):
        # at a sample's own score the grid-free ROC and a grid threshold placed there agree
        p_at, n_at = counts_above(labels, d, grid=np.array([t]))
        assert p_at[0] / labels.sum() == pytest.approx(s)
        assert n_at[0] / (1 - labels).sum() == pytest.approx(f)
    assert np.all(np.diff(pos) <= 0) and np.all(np.diff(neg) <= 0)


def test_youden_is_the_brute_force_maximum(scores: tuple[np.ndarray, np.ndarray]) -> None:
    labels, d = scores
    pos, neg = counts_above(labels, d)
    point = choose_threshold(pos, neg, num_positive=int(labels.sum()), num_negative=int((1 - labels).sum()))
    brute = max(rates_at(labels, d, t)["sensitivity"] + rates_at(labels, d, t)["specificity"] for t in LOG_ODDS_GRID)
    assert point.sensitivity + point.specificity == pytest.approx(brute)
    rates = rates_at(labels, d, point.log_odds)
    assert (rates["sensitivity"], rates["specificity"]) == pytest.approx((point.sensitivity, point.specificity))


def test_youden_takes_the_middle_of_a_plateau() -> None:
    labels = np.array([0, 0, 1, 1])
    d = np.array([-3.0, -2.9, 3.0, 3.1])  # every threshold in (-2.9, 3.0] separates perfectly
    pos, neg = counts_above(labels, d)
    point = choose_threshold(pos, neg, num_positive=2, num_negative=2)
    assert abs(point.log_odds) < 0.1
    assert (point.sensitivity, point.specificity) == (1.0, 1.0)


def test_target_sensitivity_is_met_with_the_best_specificity(scores: tuple[np.ndarray, np.ndarray]) -> None:
    labels, d = scores
    pos, neg = counts_above(labels, d)
    point = choose_threshold(
        pos, neg, num_positive=int(labels.sum()), num_negative=int((1 - labels).sum()), target=0.85
    )
    assert point.sensitivity >= 0.85
    meeting = [rates_at(labels, d, t) for t in LOG_ODDS_GRID if rates_at(labels, d, t)["sensitivity"] >= 0.85]
    assert point.specificity == pytest.approx(max(r["specificity"] for r in meeting))


def test_counts_sum_over_sites_to_the_pooled_counts(scores: tuple[np.ndarray, np.ndarray]) -> None:
    labels, d = scores
    parts = [counts_above(labels[i::3], d[i::3]) for i in range(3)]
    pooled = counts_above(labels, d)
    assert np.array_equal(sum(p for p, _ in parts), pooled[0])
    assert np.array_equal(sum(n for _, n in parts), pooled[1])


def test_temperature_is_the_continuous_minimum_on_the_grid(scores: tuple[np.ndarray, np.ndarray]) -> None:
    labels, d = scores
    nll = nll_per_temperature(labels, d)
    fitted = fit_temperature(nll)
    exact = minimize_scalar(
        lambda t: log_loss(labels, Calibration(0.0, t).probability(d), labels=[0, 1]),
        bounds=(0.05, 20),
        method="bounded",
    ).x
    step = TEMPERATURE_GRID[1] / TEMPERATURE_GRID[0]
    assert exact / step <= fitted <= exact * step
    assert nll[np.argmin(nll)] / len(labels) == pytest.approx(log_loss(labels, Calibration(0.0, fitted).probability(d)))


def _offset_scores(seed: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from true log-odds z; the model's log-odds compressed and offset: ``0.05 z + 0.15``.

    Like the benchmark's FedAvg models (log-odds within a few hundredths of an offset, prevalence ~0.6).
    """
    rng = np.random.default_rng(seed)
    z = rng.normal(1.0, 2.0, n)
    labels = (rng.random(n) < 1 / (1 + np.exp(-z))).astype(np.int64)
    return labels, 0.05 * z + 0.15


def test_affine_calibration_lowers_ece_where_temperature_alone_raises_it() -> None:
    labels, d = _offset_scores(0, 400)  # fitted here
    new_labels, new_d = _offset_scores(1, 4000)  # scored here
    scale = ScoreScale.of(d)
    temperature = fit_temperature(nll_per_temperature(labels, d, scale.temperatures), scale.temperatures)
    affine = fit_calibration(nll_per_bias_temperature(labels, d, scale.biases, scale.temperatures), scale)

    raw = expected_calibration_error(new_labels, Calibration().probability(new_d))
    temperature_only = expected_calibration_error(new_labels, Calibration(0.0, temperature).probability(new_d))
    calibrated = expected_calibration_error(new_labels, affine.probability(new_d))

    assert temperature_only > raw + 0.02  # stretching about 0 when the scores sit at +0.15: worse
    assert calibrated < raw / 2 and calibrated < 0.05
    assert affine.bias == pytest.approx(0.15, abs=0.02) and affine.temperature == pytest.approx(0.05, rel=0.15)


def test_nll_grid_cells_are_the_log_loss_of_each_calibration(scores: tuple[np.ndarray, np.ndarray]) -> None:
    labels, d = scores
    scale = ScoreScale.of(d)
    grid = nll_per_bias_temperature(labels, d, scale.biases, scale.temperatures)

    assert grid.shape == NLL_GRID_SHAPE
    for row, column in [(0, 60), (20, 30), (40, 120), (41, 50)]:  # not so sharp that sklearn clips
        cell = Calibration(float(scale.biases[row]), float(scale.temperatures[column]))
        assert grid[row, column] / len(labels) == pytest.approx(log_loss(labels, cell.probability(d), labels=[0, 1]))
    assert scale.biases[-1] == 0.0
    assert grid[-1] == pytest.approx(nll_per_temperature(labels, d, scale.temperatures))  # bias 0: temperature only


def test_affine_fit_is_near_the_continuous_maximum_likelihood(scores: tuple[np.ndarray, np.ndarray]) -> None:
    labels, d = scores
    d = 0.3 * d - 2.0  # offset and scaled: the grid moves with the scores
    scale = ScoreScale.of(d)
    fitted = fit_calibration(nll_per_bias_temperature(labels, d, scale.biases, scale.temperatures), scale)
    sign = np.where(labels == 1, 1.0, -1.0)

    def nll(x: np.ndarray) -> float:
        return float(np.logaddexp(0.0, -sign * (d - x[0]) / np.exp(x[1])).sum())

    exact = minimize(nll, np.array([scale.center, np.log(scale.scale)]), method="Nelder-Mead").x
    assert abs(fitted.bias - exact[0]) <= 0.2 * scale.scale  # one bias step
    assert fitted.temperature == pytest.approx(np.exp(exact[1]), rel=0.06)  # one temperature step
    assert nll(np.array([fitted.bias, np.log(fitted.temperature)])) <= nll(exact) * 1.002


def test_summed_site_grids_give_the_pooled_calibration(scores: tuple[np.ndarray, np.ndarray]) -> None:
    labels, d = scores
    d = d - 1.5
    scale = ScoreScale.of(d)
    sites = [nll_per_bias_temperature(labels[i::3], d[i::3], scale.biases, scale.temperatures) for i in range(3)]
    pooled = nll_per_bias_temperature(labels, d, scale.biases, scale.temperatures)

    assert sum(sites) == pytest.approx(pooled)
    assert fit_calibration(sum(sites), scale) == fit_calibration(pooled, scale)
    assert fit_calibration(pooled, scale).bias != 0.0  # the offset was found, not the temperature-only column


def test_local_fit_stores_the_bias_and_the_threshold_on_the_calibrated_probability() -> None:
    labels, d = _offset_scores(0, 400)
    point = fit_local_operating_point(labels, d, target="youden", source="calibrate")

    assert point.bias == pytest.approx(0.15, abs=0.02)
    assert point.threshold == pytest.approx(1 / (1 + np.exp(-(point.log_odds - point.bias) / point.temperature)))
    assert ModelOperatingPoint.from_metadata({METADATA_KEY: point.to_metadata()}) == point


def test_a_point_stored_before_the_bias_loads_with_bias_zero() -> None:
    old = {"log_odds": 0.4, "threshold": 0.731, "temperature": 0.4, "target": "youden", "source": "federation"}
    point = ModelOperatingPoint.from_metadata({METADATA_KEY: old})

    assert point is not None and point.bias == 0.0 and point.calibration == Calibration(0.0, 0.4)
    assert point.threshold == pytest.approx(1 / (1 + np.exp(-1.0)))


def test_log_odds_of_probabilities() -> None:
    probs = np.array([[0.5, 0.5], [0.2, 0.8]])
    assert positive_log_odds(probs) == pytest.approx([0.0, np.log(4.0)])
    with pytest.raises(ValueError, match="binary"):
        positive_log_odds(np.ones((2, 3)) / 3)


def test_bootstrap_interval_holds_the_estimate(scores: tuple[np.ndarray, np.ndarray]) -> None:
    labels, d = scores
    point, ci = rates_at(labels, d, 0.0), bootstrap_rates(labels, d, 0.0, resamples=500)
    for name, (low, high) in ci.items():
        assert low <= point[name] <= high
        assert high - low < 0.2


def test_bootstrap_with_one_class_is_nan_for_the_missing_class() -> None:
    ci = bootstrap_rates(np.zeros(10, dtype=int), np.linspace(-1, 1, 10), 0.0, resamples=50)
    assert np.isnan(ci["sensitivity"][0]) and np.isfinite(ci["specificity"][0])


def test_a_barely_trained_model_is_still_resolved() -> None:
    labels = np.array([0, 0, 0, 1, 1, 1])
    d = np.array([-0.02, -0.015, -0.01, 0.01, 0.015, 0.02])  # softmax outputs within 0.5 +- 0.005
    pos, neg = counts_above(labels, d)
    point = choose_threshold(pos, neg, num_positive=3, num_negative=3)
    assert (point.sensitivity, point.specificity) == (1.0, 1.0)


def test_grids_placed_by_the_pooled_moments_resolve_a_narrow_offset_cluster() -> None:
    from fedeye.fairness.operating_point import ScoreScale, score_moments

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 300)
    d = -0.3 + 0.001 * rng.normal(2.0 * labels - 1.0, 0.5)  # a barely trained model: every score near -0.3
    parts = [score_moments(d[i::3]) for i in range(3)]  # three sites' moments, summed
    scale = ScoreScale.from_moments(*(sum(x) for x in zip(*parts, strict=True)))
    pos, neg = counts_above(labels, d, scale.thresholds)
    fitted = choose_threshold(
        pos, neg, num_positive=int(labels.sum()), num_negative=int((1 - labels).sum()), grid=scale.thresholds
    )
    fixed = choose_threshold(
        *counts_above(labels, d), num_positive=int(labels.sum()), num_negative=int((1 - labels).sum())
    )
    assert fitted.sensitivity + fitted.specificity > 1.9
    assert fixed.sensitivity + fixed.specificity < 1.5  # the fixed grid has one threshold near -0.3
    assert scale.center == pytest.approx(d.mean()) and scale.scale == pytest.approx(d.std())

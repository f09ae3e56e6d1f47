"""The coordinator sums the sites' log-loss grids and fits the same calibration as on the pooled scores."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import MetricRecord

from fedeye import protocol as p
from fedeye.client.operating_point import score_summary
from fedeye.config import RunConfig
from fedeye.fairness.operating_point import (
    Calibration,
    ScoreScale,
    fit_calibration,
    fit_temperature,
    nll_per_bias_temperature,
    nll_per_temperature,
    positive_log_odds,
    score_moments,
)
from fedeye.server.operating_point import SummedScores, choose_from_summaries, point_config


def _site(seed: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Two-column probabilities whose log-odds sit near -1 with a small spread (a biased model)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    d = rng.normal(-1.0 + 0.3 * labels, 0.2)
    p1 = 1 / (1 + np.exp(-d))
    return np.stack([1 - p1, p1], axis=1), labels


@pytest.fixture
def sites() -> list[tuple[np.ndarray, np.ndarray]]:
    return [_site(seed, n) for seed, n in ((0, 60), (1, 90), (2, 45))]


def _pooled(sites: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    return np.concatenate([positive_log_odds(probs) for probs, _ in sites]), np.concatenate([y for _, y in sites])


def test_summed_site_summaries_give_the_pooled_affine_calibration(sites: list[tuple[np.ndarray, np.ndarray]]) -> None:
    d, labels = _pooled(sites)
    scale = ScoreScale.from_moments(*score_moments(d))  # what the sites' summed moments give
    total = SummedScores()
    for probs, y in sites:
        record = score_summary(probs, y, min_group_size=10, scale=scale)
        assert record is not None
        total.add(record)

    point = choose_from_summaries(total, RunConfig(), scale)

    expected = fit_calibration(nll_per_bias_temperature(labels, d, scale.biases, scale.temperatures), scale)
    assert point is not None and point.calibration == expected
    assert expected.bias < -0.5  # the offset was fitted, not left at 0
    assert point_config(point)[p.CALIBRATION_BIAS] == expected.bias


def test_a_site_without_the_grid_falls_back_to_the_temperature(sites: list[tuple[np.ndarray, np.ndarray]]) -> None:
    d, labels = _pooled(sites)
    scale = ScoreScale.from_moments(*score_moments(d))
    total = SummedScores()
    for index, (probs, y) in enumerate(sites):
        record = score_summary(probs, y, min_group_size=10, scale=scale)
        assert record is not None
        if index == 0:  # a site on a FedEye from before affine calibration
            record = MetricRecord({k: v for k, v in record.items() if k != p.SUMMARY_NLL_GRID})
        total.add(record)

    point = choose_from_summaries(total, RunConfig(), scale)

    temperature = fit_temperature(nll_per_temperature(labels, d, scale.temperatures), scale.temperatures)
    assert point is not None and point.calibration == Calibration(0.0, temperature)


def test_calibrate_off_keeps_the_identity(sites: list[tuple[np.ndarray, np.ndarray]]) -> None:
    total = SummedScores()
    for probs, y in sites:
        record = score_summary(probs, y, min_group_size=10)
        assert record is not None
        total.add(record)
    cfg = RunConfig.model_validate({"evaluation": {"calibrate": False}})

    point = choose_from_summaries(total, cfg)

    assert point is not None and point.calibration == Calibration()


@pytest.mark.parametrize(("kept", "asks"), [("with-moments", 1), ("without", 2), ("none", 2)])
def test_the_last_rounds_moments_save_a_request_unless_none_came(
    kept: str, asks: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Moments kept from the last evaluation are used; without any (no summary, no replies) the sites are asked."""
    import fedeye.server.operating_point as op
    from tests.strategies.conftest import reply

    asked: list[object] = []
    monkeypatch.setattr(op, "_ask", lambda *args: asked.append(args[-1][p.SUMMARIZE_SCORES]) or [])
    last = [reply(1), reply(2)]
    if kept == "with-moments":
        last[0].content[p.SCORE_SUMMARY] = MetricRecord(
            {p.SUMMARY_IMAGES: 10, p.SUMMARY_SUM: -5.0, p.SUMMARY_SQUARES: 4.0}
        )

    op.federated_operating_point(None, None, None, RunConfig(), run_id="r", moments=None if kept == "none" else last)  # type: ignore[arg-type]

    assert asked == ([p.COUNTS] if asks == 1 else [p.MOMENTS, p.COUNTS])

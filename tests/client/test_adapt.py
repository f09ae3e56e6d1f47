"""Unlabelled adaptation: the mixture threshold, and no collapse onto one class."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from fedeye.client.adapt import AdaptSettings, adapt_model, fit_mixture, mixture_calibration, mixture_threshold
from fedeye.client.training import predict, train_local
from fedeye.config import TrainingConfig
from fedeye.fairness.operating_point import ModelOperatingPoint, positive_log_odds
from fedeye.models import build_model
from fedeye.models.config import ModelConfig
from fedeye.sites.base import open_site
from fedeye.sites.dataset import SiteDataset


def _two_classes(prior: float, n: int = 4000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < prior).astype(int)
    return labels, np.where(labels == 1, rng.normal(3.0, 1.0, n), rng.normal(-1.0, 1.5, n))


@pytest.mark.parametrize("prior", [0.2, 0.5, 0.7])
def test_mixture_recovers_the_prevalence_without_labels(prior: float) -> None:
    labels, scores = _two_classes(prior)
    fit = fit_mixture(scores, start=5.0)  # a start far off, as after a camera shift
    assert fit.prior == pytest.approx(labels.mean(), abs=0.03)
    assert fit.means == pytest.approx((-1.0, 3.0), abs=0.15) and fit.separated


def test_youden_under_the_mixture_is_where_the_densities_cross() -> None:
    from scipy.stats import norm

    _, scores = _two_classes(0.3)
    fit = fit_mixture(scores)
    t = mixture_threshold(fit, "youden")
    grid = np.linspace(fit.means[0], fit.means[1], 5001)
    youden = norm.sf(grid, fit.means[1], fit.sds[1]) + norm.cdf(grid, fit.means[0], fit.sds[0])
    assert t == pytest.approx(grid[np.argmax(youden)], abs=0.01)
    assert norm.sf(mixture_threshold(fit, 0.9), fit.means[1], fit.sds[1]) == pytest.approx(0.9)


def test_calibration_follows_the_shifted_scores_without_labels() -> None:
    from fedeye.fairness.metrics import expected_calibration_error
    from fedeye.fairness.operating_point import Calibration

    labels, scores = _two_classes(0.3, seed=1)
    shifted = scores + 6.0  # a camera that moves every score; the federation's calibration was fitted before
    stored = Calibration(bias=0.0, temperature=1.0)
    refit = mixture_calibration(fit_mixture(shifted, start=0.0), shifted)

    def ece(calibration: Calibration) -> float:
        p = calibration.probability(shifted)
        return expected_calibration_error(labels, np.stack([1 - p, p], axis=1))

    assert ece(refit) < 0.05 < 0.3 < ece(stored)
    assert refit.bias > 5.0  # it moved with the scores


def test_one_blob_is_not_separated() -> None:
    assert not fit_mixture(np.random.default_rng(0).normal(0, 1, 2000)).separated


class _Shifted(Dataset[tuple[torch.Tensor, int]]):
    """A site seen through another camera: darker, colour cast, lower contrast."""

    def __init__(self, base: SiteDataset) -> None:
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image, label = self.base[index]
        return image * 0.6 + torch.tensor([0.8, -0.3, -0.5]).view(3, 1, 1), label


@pytest.mark.slow
def test_adapt_does_not_collapse_on_a_shifted_tiny_site(tiny_sites: Path) -> None:
    torch.manual_seed(0)
    cfg = ModelConfig(img_size=32)
    model = build_model(cfg)
    train = SiteDataset(open_site(tiny_sites / "site-1"), "train", image_size=32)
    for r in range(1, 4):
        train_local(model, train, cfg=TrainingConfig(local_epochs=3, lr=2e-3, batch_size=16), server_round=r)
    shifted = _Shifted(SiteDataset(open_site(tiny_sites / "site-3"), "train", image_size=32))
    start = ModelOperatingPoint(0.0, 1.0, "youden", "federation", (10, 10), 0.8, 0.8)

    point, report = adapt_model(model, shifted, point=start, settings=AdaptSettings(tent_steps=20, batch_size=16))

    probs, _ = predict(model, shifted)
    share = float((positive_log_odds(probs) >= point.log_odds).mean())
    assert 0.0 < share < 1.0  # both classes predicted
    assert report.tent_steps == 20 and 0.0 < report.positive_share_after < 1.0
    assert report.tent_kept == (0.05 <= float((positive_log_odds(probs) >= 0.0).mean()) <= 0.95) or not report.tent_kept


def test_without_two_modes_the_threshold_follows_the_scores_to_the_same_positive_share() -> None:
    from fedeye.client.adapt import _quantile_point

    start = ModelOperatingPoint(0.0, 1.0, "youden", "federation", (40, 60), 0.8, 0.9)  # called 0.38 positive
    shifted = np.random.default_rng(0).normal(5.0, 1.0, 1000)  # every score moved up by a camera
    point, reason = _quantile_point(start, shifted)
    assert float((shifted >= point.log_odds).mean()) == pytest.approx(0.38, abs=0.01)
    assert point.source == "adapt" and "not bimodal" in reason


def _two_cameras(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Negatives from two cameras (two humps), 30% positives above the second: three humps in all."""
    rng = np.random.default_rng(seed)
    negatives = np.concatenate([rng.normal(-4.0, 0.7, 140), rng.normal(-1.0, 0.7, 140)])
    return negatives, rng.normal(2.0, 1.0, 120)


def test_the_prevalence_prior_keeps_two_negative_humps_in_one_component() -> None:
    from fedeye.client.adapt import PrevalencePrior

    negatives, positives = _two_cameras()
    scores = np.concatenate([negatives, positives])

    def rates(prior: PrevalencePrior) -> tuple[float, float, float]:
        fit = fit_mixture(scores, prior=prior)
        t = mixture_threshold(fit, "youden")
        return fit.prior, float((positives >= t).mean()), float((negatives < t).mean())

    ml_weight, _, ml_spec = rates(PrevalencePrior(0.3, 0.0))
    map_weight, map_sens, map_spec = rates(PrevalencePrior(0.3, 200.0))
    assert ml_weight > 0.6 and ml_spec < 0.5  # likelihood alone: the middle hump joins the positives
    assert map_weight == pytest.approx(0.3, abs=0.05) and map_sens > 0.85 and map_spec > 0.95


def test_the_prior_is_the_federations_validation_prevalence_or_off() -> None:
    from fedeye.client.adapt import NO_PRIOR, prevalence_prior

    fitted = ModelOperatingPoint(0.0, 1.0, "youden", "federation", (30, 90), 0.8, 0.8)
    assert prevalence_prior(fitted, 50.0).mean == pytest.approx(0.25)
    assert prevalence_prior(fitted, 50.0).strength == 50.0
    unknown = ModelOperatingPoint(0.0, 1.0, "youden", "adapt", (0, 0), 0.8, 0.8)  # adapted: no labels behind it
    assert prevalence_prior(unknown, 50.0) is NO_PRIOR and prevalence_prior(fitted, 0.0) is NO_PRIOR


def test_without_a_prior_map_em_is_maximum_likelihood() -> None:
    from fedeye.client.adapt import NO_PRIOR, PrevalencePrior

    _, scores = _two_classes(0.3, n=1000, seed=3)
    assert fit_mixture(scores, prior=PrevalencePrior(0.9, 0.0)) == fit_mixture(scores, prior=NO_PRIOR)
    pulled = fit_mixture(scores, prior=PrevalencePrior(0.9, 1000.0))
    assert fit_mixture(scores).prior < pulled.prior < 0.9  # a prior moves the estimate toward it, not onto it

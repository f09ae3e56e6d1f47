"""Adapt a trained model to a hospital the federation never saw, from its unlabelled images only.

What changes at a new hospital, and what this module does about each
(``fedeye adapt --model M --data NEW_SITE --out M2``):

1. **The operating point.** A camera shift moves every score: on FedEye's
   leave-one-site-out benchmark, and on an independently rendered hospital,
   a fixed threshold predicted every image positive (or negative) although
   the ranking (AUC) held. A threshold can be re-estimated without labels:
   fit a two-component Gaussian mixture to the new site's positive-class
   log-odds by EM, started from the two sides of the federation's threshold.
   The component weights are the new site's prevalence (the EM prior
   estimate of Saerens, Latinne & Decaestecker, Neural Computation 2002, with
   the class-conditional score distributions re-fitted at the new site
   instead of assumed unchanged, since here the scores themselves move), and
   the point where the two component *densities* cross is where sensitivity
   + specificity is highest under the mixture (Youden's J does not depend on
   prevalence). A target sensitivity ``s`` puts the threshold at the
   positive component's ``1 - s`` quantile. The same mixture re-fits the
   calibration (bias and temperature, :func:`mixture_calibration`): the
   federation's was fitted where the scores sat before the camera moved
   them. Guards: the mixture must put at least 5% on each component and
   separate them (their means at least one pooled SD apart); otherwise the
   federation's threshold and calibration stay (the threshold then follows
   the scores' quantile).
   **The prevalence prior.** Maximum likelihood alone can explain a score
   histogram with more than two humps (negatives from two cameras, say) by
   a component that straddles both classes, whose threshold then calls most
   images one way: on the leave-one-site-out benchmark such fits gave
   specificity 0.43 with an estimated prevalence of 0.75-0.84. The EM is
   therefore MAP-EM with a Beta prior on the positive weight, centred on the
   prevalence of the federation's validation images (the counts the stored
   point was fitted on) and worth :data:`PREVALENCE_STRENGTH` pseudo-images
   (``--prevalence-strength``; 0 turns it off). Prevalence differs between
   hospitals, so the prior only chooses between fits the scores leave open;
   ``benchmarks/adapt_prior.py`` measures it on the benchmark's held-out
   sites at their own prevalence and subsampled to 0.15 and 0.7 (see
   docs/dg-benchmark.md), where it did not cost balanced accuracy.
2. **The features (optional, ``--tent-steps``).** TENT (Wang et al., "Tent:
   Fully Test-time Adaptation by Entropy Minimization", ICLR 2021) updates
   only the normalisation layers' affine parameters to lower the entropy of
   the predictions; in a ViT those are the LayerNorms (no batch statistics
   to re-estimate, unlike BatchNorm), plus the prompt tokens when the model
   has them. Entropy minimisation alone can collapse onto one class, so the
   loss is SHOT's information maximisation (Liang, Hu & Feng, "Do We Really
   Need to Access the Source Data?", ICML 2020): mean per-image entropy minus
   the entropy of the mean prediction, which rewards using both classes.
   If the share of images predicted positive still leaves [0.05, 0.95], the
   weights are put back. It is off by default: in a pilot (FedAvg, held-out
   synthetic site-5, seed 0) 10 steps left the unseen AUC at 0.957 and the
   balanced accuracy at 0.887 against 0.892 with the threshold step alone;
   a from-scratch ViT-tiny on 64 px images has little in its norms to adapt.
3. **The experts.** With domain experts the router already mixes experts
   per image by style (``fedeye.models.router``): a new hospital's images go
   to the hospitals they resemble, without training, so nothing is changed.

Everything is recorded in the model file's metadata (``adaptation``), and
the new operating point replaces the stored one (``source = "adapt"``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from fedeye.client.training import ImageDataset, predict
from fedeye.fairness.operating_point import (
    DEFAULT_POINT,
    Calibration,
    ModelOperatingPoint,
    Target,
    positive_log_odds,
)
from fedeye.models import select_device

MIN_COMPONENT_WEIGHT = 0.05
MIN_SEPARATION_SD = 1.0
COLLAPSE_SHARE = 0.05
PREVALENCE_STRENGTH = 200.0


@dataclass(frozen=True)
class MixtureFit:
    """A two-component Gaussian mixture on the log-odds: component 1 is the positive one."""

    prior: float  # weight of the positive component: the estimated prevalence
    means: tuple[float, float]
    sds: tuple[float, float]
    iterations: int

    @property
    def separated(self) -> bool:
        """Both components hold weight and their means are at least one pooled SD apart."""
        pooled = math.sqrt((self.sds[0] ** 2 + self.sds[1] ** 2) / 2)
        return (
            MIN_COMPONENT_WEIGHT <= self.prior <= 1 - MIN_COMPONENT_WEIGHT
            and self.means[1] - self.means[0] >= MIN_SEPARATION_SD * pooled
        )


@dataclass(frozen=True)
class PrevalencePrior:
    """A Beta prior on the mixture's positive weight: ``strength`` pseudo-images at prevalence ``mean``.

    MAP-EM (the M-step's weight becomes ``(sum r + strength * mean) / (n +
    strength)``) instead of maximum likelihood: at a new hospital the score
    distributions move, and a likelihood-only mixture can explain a skewed
    or three-humped score histogram by putting most of the weight on one
    component, which then straddles both classes and its threshold calls
    nearly everything one way. Prevalence differs between hospitals, but by
    far less than such fits claim, so the federation's own validation
    prevalence is the prior's centre; the new site's images still move it.
    """

    mean: float
    strength: float

    def log_density(self, weight: float) -> float:
        """Log prior of ``weight`` up to a constant (0 when the prior is off)."""
        if self.strength <= 0:
            return 0.0
        w = min(max(weight, 1e-12), 1 - 1e-12)
        return self.strength * (self.mean * math.log(w) + (1 - self.mean) * math.log(1 - w))


NO_PRIOR = PrevalencePrior(mean=0.5, strength=0.0)


def fit_mixture(
    log_odds: np.ndarray, *, start: float = 0.0, iterations: int = 200, prior: PrevalencePrior = NO_PRIOR
) -> MixtureFit:
    """EM (MAP-EM under ``prior``) for a two-Gaussian mixture on 1-D scores; the most probable of several starts.

    The starts split the scores at ``start`` (the stored threshold) and at
    their quartiles and median: after a camera shift the stored threshold
    may leave almost every image on one side, where EM alone would stay.
    """
    x = np.asarray(log_odds, dtype=np.float64)
    splits = [start, *np.percentile(x, [25, 50, 75])]
    fits = [_em(x, x >= split, iterations, prior) for split in splits if 0.05 <= float((x >= split).mean()) <= 0.95]
    if not fits:
        fits = [_em(x, x >= np.median(x), iterations, prior)]
    return max(fits, key=lambda fit: _log_likelihood(x, fit) + prior.log_density(fit.prior))


def _em(x: np.ndarray, high: np.ndarray, iterations: int, prior: PrevalencePrior, *, again: bool = True) -> MixtureFit:
    resp = high.astype(np.float64)
    floor = max(float(np.std(x)) * 0.05, 1e-12)  # no component narrower than 5% of the spread (no spikes)
    done = 0
    while done < iterations:
        done += 1
        weight, means, sds = _m_step(x, resp, floor, prior)
        new = _e_step(x, weight, means, sds)
        if np.max(np.abs(new - resp)) < 1e-6:
            break
        resp = new
    weight, means, sds = _m_step(x, resp, floor, prior)
    if means[0] > means[1] and prior.strength > 0 and again:  # the prior weighed the wrong component: once more
        return _em(x, 1 - resp, iterations, prior, again=False)
    if means[0] > means[1]:  # the positive component is the one of higher log-odds
        weight, means, sds = 1 - weight, (means[1], means[0]), (sds[1], sds[0])
    return MixtureFit(prior=weight, means=means, sds=sds, iterations=done)


def _log_likelihood(x: np.ndarray, fit: MixtureFit) -> float:
    log0 = math.log(max(1 - fit.prior, 1e-12)) + _log_normal(x, fit.means[0], fit.sds[0])
    log1 = math.log(max(fit.prior, 1e-12)) + _log_normal(x, fit.means[1], fit.sds[1])
    return float(np.logaddexp(log0, log1).sum())


def _m_step(
    x: np.ndarray, resp: np.ndarray, floor: float, prior: PrevalencePrior
) -> tuple[float, tuple[float, float], tuple[float, float]]:
    w1 = float(np.clip((resp.sum() + prior.strength * prior.mean) / (len(x) + prior.strength), 1e-6, 1 - 1e-6))
    stats = []
    for r in (1 - resp, resp):
        total = max(float(r.sum()), 1e-9)
        mean = float((r * x).sum() / total)
        stats.append((mean, max(math.sqrt(float((r * (x - mean) ** 2).sum() / total)), floor)))
    return w1, (stats[0][0], stats[1][0]), (stats[0][1], stats[1][1])


def _e_step(x: np.ndarray, w1: float, means: tuple[float, float], sds: tuple[float, float]) -> np.ndarray:
    log0 = math.log(1 - w1) + _log_normal(x, means[0], sds[0])
    log1 = math.log(w1) + _log_normal(x, means[1], sds[1])
    return np.asarray(1.0 / (1.0 + np.exp(np.clip(log0 - log1, -500, 500))))


def _log_normal(x: np.ndarray, mean: float, sd: float) -> np.ndarray:
    return np.asarray(-0.5 * ((x - mean) / sd) ** 2 - math.log(sd))


def mixture_threshold(fit: MixtureFit, target: Target) -> float:
    """The log-odds threshold for ``target`` under the mixture (see the module docstring)."""
    (m0, m1), (s0, s1) = fit.means, fit.sds
    if target != "youden":
        from scipy.stats import norm

        return float(m1 + s1 * norm.ppf(1 - float(target)))
    grid = np.linspace(m0, m1, 2001)  # between the means the densities cross once (or the SDs make it flat)
    gap = _log_normal(grid, m1, s1) - _log_normal(grid, m0, s0)
    return float(grid[int(np.argmin(np.abs(gap)))])


@dataclass(frozen=True)
class AdaptSettings:
    """How ``fedeye adapt`` adapts (keyword-only; the defaults are the command's)."""

    tent_steps: int = 0  # optimiser steps of entropy minimisation (0: threshold only)
    lr: float = 1e-3
    batch_size: int = 64
    diversity: float = 1.0  # weight of SHOT's diversity term (entropy of the mean prediction)
    seed: int = 0
    #: Pseudo-images of the prevalence prior (:class:`PrevalencePrior`), centred on the prevalence of the
    #: federation's validation images; 0 = maximum-likelihood EM.
    prevalence_strength: float = PREVALENCE_STRENGTH


@dataclass(frozen=True)
class AdaptReport:
    """What ``adapt_model`` did, as recorded in the model file."""

    method: str
    num_images: int
    tent_steps: int
    tent_kept: bool
    positive_share_before: float
    positive_share_after: float
    mean_entropy_before: float
    mean_entropy_after: float
    prior_estimate: float
    prevalence_prior: tuple[float, float]  # (centre, pseudo-images); strength 0 when off or unknown
    mixture_means: tuple[float, float]
    mixture_sds: tuple[float, float]
    threshold_moved: bool
    reason: str


def adapt_model(
    model: nn.Module, images: ImageDataset, *, point: ModelOperatingPoint | None, settings: AdaptSettings
) -> tuple[ModelOperatingPoint, AdaptReport]:
    """Adapt ``model`` in place to ``images`` (labels unused) and return its new point and a report."""
    start = point or DEFAULT_POINT
    before = _scores(model, images, settings)
    kept = False
    if settings.tent_steps > 0:
        saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
        entropy_minimisation(model, images, settings=settings)
        after_tent = _scores(model, images, settings)
        kept = COLLAPSE_SHARE <= _positive_share(after_tent, start) <= 1 - COLLAPSE_SHARE
        if not kept:
            model.load_state_dict(saved)
    after = _scores(model, images, settings)
    new_point, fit, prior, reason = point_from_scores(
        positive_log_odds(after), start, prevalence_strength=settings.prevalence_strength
    )
    report = AdaptReport(
        method="tent+shot-im" if settings.tent_steps else "mixture-threshold",
        num_images=len(after),
        tent_steps=settings.tent_steps,
        tent_kept=kept,
        positive_share_before=_positive_share(before, start),
        positive_share_after=_positive_share(after, new_point),
        mean_entropy_before=_mean_entropy(before),
        mean_entropy_after=_mean_entropy(after),
        prior_estimate=fit.prior,
        prevalence_prior=(prior.mean, prior.strength),
        mixture_means=fit.means,
        mixture_sds=fit.sds,
        threshold_moved=new_point is not start,
        reason=reason,
    )
    return new_point, report


def point_from_scores(
    log_odds: np.ndarray, start: ModelOperatingPoint, *, prevalence_strength: float
) -> tuple[ModelOperatingPoint, MixtureFit, PrevalencePrior, str]:
    """The threshold step of :func:`adapt_model` on the new site's log-odds: the new point, the fit, the prior, why."""
    prior = prevalence_prior(start, prevalence_strength)
    fit = fit_mixture(log_odds, start=start.log_odds, prior=prior)
    point, reason = _point_from_mixture(fit, start, log_odds)
    return point, fit, prior, reason


def prevalence_prior(point: ModelOperatingPoint, strength: float) -> PrevalencePrior:
    """The prior centred on the prevalence of the images ``point`` was fitted on; off when it records none."""
    positives, negatives = point.fitted_on
    if strength <= 0 or positives <= 0 or negatives <= 0:
        return NO_PRIOR
    return PrevalencePrior(mean=positives / (positives + negatives), strength=strength)


def _point_from_mixture(
    fit: MixtureFit, start: ModelOperatingPoint, log_odds: np.ndarray
) -> tuple[ModelOperatingPoint, str]:
    if not fit.separated:
        return _quantile_point(start, log_odds)
    target: Target = "youden" if start.target in ("youden", "p >= 0.5", "") else float(start.target)
    threshold = mixture_threshold(fit, target)
    sens, spec = _mixture_rates(fit, threshold)
    calibration = mixture_calibration(fit, log_odds)
    moved = ModelOperatingPoint(
        threshold, calibration.temperature, str(target), "adapt", (0, 0), sens, spec, calibration.bias
    )
    return moved, (
        f"mixture threshold; estimated prevalence {fit.prior:.2f}; calibration re-fitted to the mixture "
        f"({calibration.describe()})"
    )


def mixture_calibration(fit: MixtureFit, log_odds: np.ndarray) -> Calibration:
    """Affine calibration of the new site fitted to the mixture's posteriors, without labels.

    Under the fitted mixture the probability that image ``i`` is positive is
    its responsibility ``r_i`` (the E-step). The federation's calibration
    was fitted where the scores sat before the camera moved them; this
    re-fits ``sigmoid((d - bias) / temperature)`` to the ``r_i`` by
    minimising the cross-entropy with soft labels (Saerens et al. 2002
    re-weight posteriors for a new prior; here the score distributions moved
    too, so the whole map is re-fitted). Only called when the mixture is
    separated (:attr:`MixtureFit.separated`).

    >>> fit = MixtureFit(prior=0.3, means=(-2.0, 2.0), sds=(1.0, 1.0), iterations=1)
    >>> cal = mixture_calibration(fit, np.linspace(-5, 5, 201))
    >>> round(cal.bias, 2), round(cal.temperature, 2)  # exact here: equal SDs give affine posteriors
    (0.21, 0.25)
    """
    from scipy.optimize import minimize

    x = np.asarray(log_odds, dtype=np.float64)
    r = _e_step(x, fit.prior, fit.means, fit.sds)

    def loss(theta: np.ndarray) -> float:
        z = (x - theta[0]) * np.exp(-theta[1])
        return float(np.mean(r * np.logaddexp(0.0, -z) + (1 - r) * np.logaddexp(0.0, z)))

    scale = max(float(np.std(x)), 1e-3)
    best = minimize(loss, np.array([float(np.mean(x)), math.log(scale)]), method="L-BFGS-B")
    return Calibration(bias=float(best.x[0]), temperature=float(math.exp(best.x[1])))


def _quantile_point(start: ModelOperatingPoint, log_odds: np.ndarray) -> tuple[ModelOperatingPoint, str]:
    """Fallback: keep the share of images called positive that the stored point gave where it was fitted.

    Where the new site's scores are not bimodal the mixture says nothing
    reliable, but a shifted camera typically moves every score the same
    way; the threshold moves with them to the quantile that calls the same
    share positive as the stored point did on its validation images
    (prevalence there x sensitivity + (1 - prevalence) x (1 - specificity)).
    """
    positives, negatives = start.fitted_on
    if positives + negatives == 0 or not (math.isfinite(start.sensitivity) and math.isfinite(start.specificity)):
        return start, "scores not bimodal and the stored point has no validation rates: kept the stored threshold"
    share = (positives * start.sensitivity + negatives * (1 - start.specificity)) / (positives + negatives)
    share = min(max(share, MIN_COMPONENT_WEIGHT), 1 - MIN_COMPONENT_WEIGHT)
    threshold = float(np.quantile(log_odds, 1 - share))
    moved = ModelOperatingPoint(
        threshold, start.temperature, start.target, "adapt", (0, 0), start.sensitivity, start.specificity, start.bias
    )
    return moved, f"scores not bimodal: threshold at the quantile calling {share:.2f} positive, as where it was fitted"


def _mixture_rates(fit: MixtureFit, threshold: float) -> tuple[float, float]:
    """Sensitivity and specificity the mixture predicts at ``threshold`` (no labels involved)."""
    from scipy.stats import norm

    sens = 1 - norm.cdf(threshold, fit.means[1], fit.sds[1])
    spec = norm.cdf(threshold, fit.means[0], fit.sds[0])
    return float(sens), float(spec)


def entropy_minimisation(model: nn.Module, images: ImageDataset, *, settings: AdaptSettings) -> None:
    """TENT on LayerNorm affine weights and prompts with SHOT's diversity term, ``settings.tent_steps`` steps."""
    device = select_device("auto")
    model.to(device).train()
    params = _adaptable(model)
    optimizer = torch.optim.Adam(params, lr=settings.lr)
    loader = DataLoader(
        images, batch_size=settings.batch_size, shuffle=True, generator=torch.Generator().manual_seed(settings.seed)
    )
    step = 0
    while step < settings.tent_steps:
        for batch, _ in loader:
            probs = torch.softmax(model(batch.to(device)).float(), dim=1)
            mean = probs.mean(dim=0)
            entropy = -(probs * probs.clamp_min(1e-8).log()).sum(dim=1).mean()
            diversity = -(mean * mean.clamp_min(1e-8).log()).sum()
            optimizer.zero_grad(set_to_none=True)
            (entropy - settings.diversity * diversity).backward()  # type: ignore[no-untyped-call]
            optimizer.step()
            step += 1
            if step >= settings.tent_steps:
                break
    for p in model.parameters():
        p.requires_grad_(True)
    model.eval()


def _adaptable(model: nn.Module) -> list[nn.Parameter]:
    """LayerNorm affine parameters and prompt tokens; every other weight is frozen."""
    chosen = {id(p) for m in model.modules() if isinstance(m, nn.LayerNorm) for p in m.parameters(recurse=False)}
    chosen |= {id(p) for name, p in model.named_parameters() if "prompts" in name}
    for p in model.parameters():
        p.requires_grad_(id(p) in chosen)
    return [p for p in model.parameters() if id(p) in chosen]


def _scores(model: nn.Module, images: ImageDataset, settings: AdaptSettings) -> np.ndarray:
    probs, _ = predict(model, images, batch_size=settings.batch_size)
    return probs


def _positive_share(probs: np.ndarray, point: ModelOperatingPoint) -> float:
    return float((positive_log_odds(probs) >= point.log_odds).mean())


def _mean_entropy(probs: np.ndarray) -> float:
    clipped = np.clip(probs, 1e-8, 1.0)
    return float(-(clipped * np.log(clipped)).sum(axis=1).mean())


def report_metadata(report: AdaptReport) -> dict[str, object]:
    """JSON-ready form of a report."""
    return asdict(report)

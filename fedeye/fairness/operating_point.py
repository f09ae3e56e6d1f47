"""Operating point and affine (Platt) calibration from aggregate score summaries: pure functions, no I/O.

A binary classifier is used at one threshold; a clinician reads sensitivity
and specificity there, not AUC. FedEye chooses that threshold, and a bias and
a temperature that calibrate the probabilities (:class:`Calibration`:
``sigmoid((d - bias) / temperature)``, Platt scaling; with bias 0 the
temperature scaling of Guo et al., "On Calibration of Modern Neural
Networks", ICML 2017), from summaries that never hold a per-image value:

- :func:`counts_above`: per class, how many validation images score at or
  above each threshold of the fixed grid :data:`LOG_ODDS_GRID` (an empirical
  ROC curve at a fixed resolution, 201 points; summed over sites it is the
  pooled one);
- :func:`nll_per_bias_temperature`: the summed log-loss of the validation
  images at each (bias, temperature) of the grid :data:`BIAS_OFFSETS` x
  :data:`TEMPERATURE_GRID`; summed over sites, its minimum is the pooled
  maximum-likelihood calibration on the grid (:func:`fit_calibration`).
  (:func:`nll_per_temperature`, its bias-0 row, is what sites sent before.)

Scores are the positive-class log-odds ``d = log p1 - log p0`` (the logit
difference). The threshold grid is on ``d``, so one summary serves any
calibration: the threshold ``t`` on ``d`` is the threshold
``sigmoid((t - bias) / T)`` on the calibrated probability.

Why a bias: temperature alone stretches ``d`` around 0. Where a model's
log-odds are offset (class weighting, a new camera; the threshold chosen is
then far from 0), the maximum-likelihood temperature flattens every
probability towards 0.5, or sharpens them about the wrong point, and the
calibration error rises; a bias moves the centre first.

The grids are placed by a :class:`ScoreScale`: centre and spread of the
pooled log-odds, which the coordinator first learns from each site's count,
sum and sum of squares (:func:`score_moments`). A model whose log-odds all
lie within +-0.001 of -0.3 (barely trained, or from another camera) is then
resolved as finely as a confident one.

>>> import numpy as np
>>> labels = np.array([0, 0, 0, 1, 1, 1])
>>> d = np.array([-2.0, -1.0, 0.5, 0.2, 1.5, 3.0])
>>> pos, neg = counts_above(labels, d)
>>> point = choose_threshold(pos, neg, num_positive=3, num_negative=3, target="youden")
>>> float(round(point.sensitivity, 2)), float(round(point.specificity, 2))
(1.0, 0.67)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np

_MAGNITUDES = np.geomspace(1e-3, 16.0, 100)
#: Thresholds on the positive-class log-odds: 0 and +-1e-3 ... +-16 in steps of 10% (scale-free: a barely
#: trained model whose log-odds all lie within +-0.05 is resolved as well as a confident one).
LOG_ODDS_GRID: np.ndarray = np.concatenate([-_MAGNITUDES[::-1], [0.0], _MAGNITUDES])
#: Temperatures tried by temperature scaling (0.05 to 20, geometric, 5% apart).
TEMPERATURE_GRID: np.ndarray = np.geomspace(0.05, 20.0, 121)
#: Biases tried by affine calibration, in spreads from the centre: -4 ... +4, 0.2 apart (41, 0 included).
BIAS_OFFSETS: np.ndarray = np.linspace(-4.0, 4.0, 41)
#: Shape of the log-loss summary: the biases of :data:`BIAS_OFFSETS` plus bias 0 (temperature scaling), by temperature.
NLL_GRID_SHAPE = (len(BIAS_OFFSETS) + 1, len(TEMPERATURE_GRID))
#: The target of an operating point: Youden's J, or a minimum sensitivity in (0, 1).
Target = Literal["youden"] | float
_EPS = 1e-7


@dataclass(frozen=True)
class ScoreScale:
    """Where the grids sit: thresholds ``center + scale * LOG_ODDS_GRID``, temperatures ``scale * TEMPERATURE_GRID``.

    Biases: ``center + scale * BIAS_OFFSETS`` and 0 (so plain temperature scaling is always a candidate, and the
    affine fit is never worse than it in log-loss on the images it is fitted on).
    """

    center: float = 0.0
    scale: float = 1.0

    @property
    def thresholds(self) -> np.ndarray:
        """The threshold grid on the log-odds."""
        return self.center + self.scale * LOG_ODDS_GRID

    @property
    def temperatures(self) -> np.ndarray:
        """The temperature grid."""
        return self.scale * TEMPERATURE_GRID

    @property
    def biases(self) -> np.ndarray:
        """The bias grid (the last entry is 0)."""
        return np.append(self.center + self.scale * BIAS_OFFSETS, 0.0)

    @classmethod
    def from_moments(cls, count: float, total: float, squares: float) -> ScoreScale:
        """Centre and standard deviation of pooled scores from their count, sum and sum of squares."""
        if count <= 0:
            return cls()
        mean = total / count
        spread = float(np.sqrt(max(squares / count - mean**2, 0.0)))
        return cls(float(mean), spread if spread > 1e-9 else 1.0)

    @classmethod
    def of(cls, log_odds: np.ndarray) -> ScoreScale:
        """The scale of one set of scores (``fedeye calibrate``)."""
        return cls.from_moments(*score_moments(log_odds))


def score_moments(log_odds: np.ndarray) -> tuple[int, float, float]:
    """Count, sum and sum of squares of the log-odds (what a site sends first)."""
    d = np.asarray(log_odds, dtype=np.float64)
    return len(d), float(d.sum()), float((d**2).sum())


@dataclass(frozen=True)
class Calibration:
    """Affine (Platt) scaling of the positive-class log-odds: ``p = sigmoid((d - bias) / temperature)``.

    Platt, "Probabilistic outputs for support vector machines", 1999: a
    logistic regression on the score. With ``bias`` 0 it is temperature
    scaling (Guo et al., ICML 2017), which cannot undo an offset in ``d``.

    >>> Calibration(bias=1.0, temperature=2.0).probability(np.array([1.0, 3.0])).round(3).tolist()
    [0.5, 0.731]
    """

    bias: float = 0.0
    temperature: float = 1.0

    def probability(self, log_odds: np.ndarray) -> np.ndarray:
        """The calibrated positive-class probability of each log-odds."""
        scaled = (np.asarray(log_odds, dtype=np.float64) - self.bias) / self.temperature
        return np.asarray(np.exp(-np.logaddexp(0.0, -scaled)))

    @classmethod
    def from_metadata(cls, point: Mapping[str, object]) -> Calibration:
        """The calibration of a stored point's metadata (no ``bias``: written before it was fitted, 0)."""
        return cls(float(point.get("bias", 0.0)), float(point.get("temperature", 1.0)))  # type: ignore[arg-type]

    def describe(self) -> str:
        """``bias -0.024, temperature 0.15``: for a report line."""
        return f"bias {self.bias:.3g}, temperature {self.temperature:.3g}"


@dataclass(frozen=True)
class OperatingPoint:
    """A threshold on the positive-class log-odds and what it gave on the pooled validation images."""

    log_odds: float
    sensitivity: float
    specificity: float

    def probability(self, calibration: Calibration | None = None) -> float:
        """The threshold on the probability calibrated by ``calibration`` (None: uncalibrated)."""
        return float((calibration or Calibration()).probability(np.array([self.log_odds]))[0])


def positive_log_odds(probs: np.ndarray) -> np.ndarray:
    """``log p1 - log p0`` of two-column class probabilities (clipped at 1e-7)."""
    probs = np.clip(np.asarray(probs, dtype=np.float64), _EPS, 1.0)
    if probs.ndim != 2 or probs.shape[1] != 2:
        raise ValueError(f"operating points are for binary tasks: probs must be (n, 2), got {probs.shape}")
    return np.asarray(np.log(probs[:, 1]) - np.log(probs[:, 0]))


def counts_above(
    labels: np.ndarray, log_odds: np.ndarray, grid: np.ndarray = LOG_ODDS_GRID
) -> tuple[np.ndarray, np.ndarray]:
    """Per threshold of ``grid``: positives and negatives scoring at or above it.

    Returns
    -------
    tuple of (np.ndarray, np.ndarray)
        Integer counts, each of ``grid``'s length, non-increasing.
    """
    labels, log_odds = np.asarray(labels), np.asarray(log_odds, dtype=np.float64)
    return _above(log_odds[labels == 1], grid), _above(log_odds[labels != 1], grid)


def _above(scores: np.ndarray, grid: np.ndarray) -> np.ndarray:
    ordered = np.sort(scores)
    return (len(ordered) - np.searchsorted(ordered, grid, side="left")).astype(np.int64)


def choose_threshold(
    positives_above: np.ndarray,
    negatives_above: np.ndarray,
    *,
    num_positive: int,
    num_negative: int,
    target: Target = "youden",
    grid: np.ndarray = LOG_ODDS_GRID,
) -> OperatingPoint:
    """The grid threshold meeting ``target`` on summed counts.

    ``"youden"``: the threshold maximising sensitivity + specificity - 1; on a
    plateau of equal values, its middle (a margin on both sides, which keeps
    the point away from either class's scores at a new site). A float ``s``:
    among thresholds with sensitivity >= ``s``, the one with the highest
    specificity (screening).

    Raises
    ------
    ValueError
        No positive or no negative image was summarised.
    """
    if num_positive <= 0 or num_negative <= 0:
        raise ValueError(f"need positives and negatives to choose a threshold; got {num_positive} and {num_negative}")
    sens = np.asarray(positives_above, dtype=np.float64) / num_positive
    spec = 1.0 - np.asarray(negatives_above, dtype=np.float64) / num_negative
    index = _youden_index(sens, spec) if target == "youden" else _sensitivity_index(sens, spec, float(target))
    return OperatingPoint(float(grid[index]), float(sens[index]), float(spec[index]))


def _youden_index(sens: np.ndarray, spec: np.ndarray) -> int:
    youden = sens + spec
    best = np.flatnonzero(np.isclose(youden, youden.max()))
    run_end = int(np.argmax(np.diff(np.append(best, best[-1] + 2)) > 1))  # end of the first contiguous run
    return int(best[run_end // 2])


def _sensitivity_index(sens: np.ndarray, spec: np.ndarray, minimum: float) -> int:
    meeting = np.flatnonzero(sens >= minimum - 1e-12)
    return int(meeting[np.argmax(spec[meeting])]) if len(meeting) else 0


def nll_per_bias_temperature(
    labels: np.ndarray, log_odds: np.ndarray, biases: np.ndarray, temperatures: np.ndarray = TEMPERATURE_GRID
) -> np.ndarray:
    """Summed binary log-loss at each (bias, temperature): ``sum_i log(1 + exp(-s_i (d_i - b) / T))``.

    Returns
    -------
    np.ndarray
        ``(len(biases), len(temperatures))``; one sum per cell, whatever the number of images.
    """
    sign = np.where(np.asarray(labels) == 1, 1.0, -1.0)
    d = np.asarray(log_odds, dtype=np.float64)
    inverse = 1.0 / np.asarray(temperatures, dtype=np.float64)
    rows = [np.logaddexp(0.0, -np.outer(inverse, sign * (d - b))).sum(axis=1) for b in np.asarray(biases)]
    return np.asarray(rows).reshape(len(biases), len(temperatures))


def nll_per_temperature(
    labels: np.ndarray, log_odds: np.ndarray, temperatures: np.ndarray = TEMPERATURE_GRID
) -> np.ndarray:
    """Summed binary log-loss at each temperature, bias 0 (the summary of sites before affine calibration)."""
    return np.asarray(nll_per_bias_temperature(labels, log_odds, np.zeros(1), temperatures)[0])


def fit_temperature(nll_sums: np.ndarray, temperatures: np.ndarray = TEMPERATURE_GRID) -> float:
    """The temperature of least summed log-loss."""
    return float(np.asarray(temperatures)[int(np.argmin(nll_sums))])


def fit_calibration(nll_sums: np.ndarray, scale: ScoreScale | None = None) -> Calibration:
    """The (bias, temperature) of least summed log-loss on ``scale``'s grids (first cell on a tie: deterministic)."""
    scale = scale or ScoreScale()
    row, column = np.unravel_index(int(np.argmin(nll_sums)), np.shape(nll_sums))
    return Calibration(float(scale.biases[row]), float(scale.temperatures[column]))


RATE_NAMES = ("sensitivity", "specificity", "balanced-accuracy", "ppv", "npv")


def rates_at(labels: np.ndarray, log_odds: np.ndarray, threshold: float) -> dict[str, float]:
    """Sensitivity, specificity, balanced accuracy, PPV and NPV at ``threshold`` (NaN where undefined)."""
    rates = _rates(np.asarray(labels)[None, :] == 1, np.asarray(log_odds)[None, :] >= threshold)
    return {name: float(values[0]) for name, values in rates.items()}


def _rates(truth: np.ndarray, predicted: np.ndarray) -> dict[str, np.ndarray]:
    """Rates per row of boolean ``(rows, n)`` arrays."""
    tp = (truth & predicted).sum(axis=1).astype(np.float64)
    fn = (truth & ~predicted).sum(axis=1)
    fp = (~truth & predicted).sum(axis=1)
    tn = (~truth & ~predicted).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        sens, spec = tp / (tp + fn), tn / (tn + fp)
        return {
            "sensitivity": sens,
            "specificity": spec,
            "balanced-accuracy": (sens + spec) / 2,
            "ppv": tp / (tp + fp),
            "npv": tn / (tn + fn),
        }


def bootstrap_rates(
    labels: np.ndarray,
    log_odds: np.ndarray,
    threshold: float,
    *,
    resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap confidence intervals of :data:`RATE_NAMES` (images resampled with replacement).

    Resamples where a rate is undefined (e.g. no positive drawn) are left out
    of that rate's interval; ``(nan, nan)`` when none defines it.
    """
    labels, log_odds = np.asarray(labels), np.asarray(log_odds, dtype=np.float64)
    if len(labels) == 0:
        return {name: (float("nan"), float("nan")) for name in RATE_NAMES}
    draws = np.random.default_rng(seed).integers(0, len(labels), size=(resamples, len(labels)))
    rates = _rates(labels[draws] == 1, log_odds[draws] >= threshold)
    tail = 100 * (1 - level) / 2
    return {name: _percentiles(values, tail) for name, values in rates.items()}


def _percentiles(values: np.ndarray, tail: float) -> tuple[float, float]:
    finite = values[np.isfinite(values)]
    if not len(finite):
        return float("nan"), float("nan")
    low, high = np.percentile(finite, [tail, 100 - tail])
    return float(low), float(high)


# ------------------------------------------------------------------ what a model file carries


@dataclass(frozen=True)
class ModelOperatingPoint:
    """The operating point and calibration a model file carries (metadata key :data:`METADATA_KEY`).

    ``log_odds`` is the threshold on the uncalibrated positive-class log-odds;
    ``threshold`` the same threshold on the calibrated probability
    (``temperature`` and ``bias``, :class:`Calibration`; a model file written
    before the bias was fitted has none: 0). ``source``
    says who set it (``federation``, ``calibrate``, ``adapt``), ``target``
    what it aimed at, ``fitted_on`` how many images (positives, negatives) it
    was chosen on, and ``sensitivity``/``specificity`` what it gave there.
    """

    log_odds: float
    temperature: float
    target: str
    source: str
    fitted_on: tuple[int, int]
    sensitivity: float
    specificity: float
    bias: float = 0.0

    @property
    def calibration(self) -> Calibration:
        """The stored bias and temperature."""
        return Calibration(self.bias, self.temperature)

    @property
    def threshold(self) -> float:
        """The threshold on the calibrated positive-class probability: ``sigmoid((log_odds - bias) / temperature)``."""
        return float(self.calibration.probability(np.array([self.log_odds]))[0])

    def to_metadata(self) -> dict[str, object]:
        """JSON-ready form for a model file's metadata."""
        return {
            "log_odds": self.log_odds,
            "threshold": self.threshold,
            "temperature": self.temperature,
            "bias": self.bias,
            "target": self.target,
            "source": self.source,
            "fitted_on": list(self.fitted_on),
            "sensitivity": self.sensitivity,
            "specificity": self.specificity,
        }

    @classmethod
    def from_metadata(cls, metadata: dict[str, object]) -> ModelOperatingPoint | None:
        """The point stored in a model file's metadata, or None (an older model: threshold 0.5)."""
        raw = metadata.get(METADATA_KEY)
        if not isinstance(raw, dict):
            return None
        positives, negatives = raw.get("fitted_on", (0, 0))
        return cls(
            log_odds=float(raw["log_odds"]),
            temperature=Calibration.from_metadata(raw).temperature,
            target=str(raw.get("target", "youden")),
            source=str(raw.get("source", "")),
            fitted_on=(int(positives), int(negatives)),
            sensitivity=float(raw.get("sensitivity", float("nan"))),
            specificity=float(raw.get("specificity", float("nan"))),
            bias=Calibration.from_metadata(raw).bias,
        )


METADATA_KEY = "operating_point"
#: Without a stored operating point a model is used at p1 >= 0.5, i.e. log-odds >= 0.
DEFAULT_POINT = ModelOperatingPoint(0.0, 1.0, "p >= 0.5", "default", (0, 0), float("nan"), float("nan"))


def fit_operating_point(
    *,
    positives_above: np.ndarray,
    negatives_above: np.ndarray,
    num_positive: int,
    num_negative: int,
    calibration: Calibration | None,
    target: Target,
    source: str,
    scale: ScoreScale | None = None,
) -> ModelOperatingPoint:
    """Threshold (for ``target``) from summed counts on ``scale``'s grid, with ``calibration`` (None: none)."""
    scale = scale or ScoreScale()
    point = choose_threshold(
        positives_above,
        negatives_above,
        num_positive=num_positive,
        num_negative=num_negative,
        target=target,
        grid=scale.thresholds,
    )
    calibration = calibration or Calibration()
    return ModelOperatingPoint(
        point.log_odds,
        calibration.temperature,
        str(target),
        source,
        (num_positive, num_negative),
        point.sensitivity,
        point.specificity,
        bias=calibration.bias,
    )


def fit_local_operating_point(
    labels: np.ndarray, log_odds: np.ndarray, *, target: Target, source: str
) -> ModelOperatingPoint:
    """:func:`fit_operating_point` on one labelled set (``fedeye calibrate``), on grids placed by its own scores.

    The calibration is fitted on the same (bias, temperature) grid as the
    federation's, not by a continuous logistic regression: one code path for
    both, deterministic, and bounded. With 20-40 labels a class is often
    separable, where the unpenalised maximum-likelihood slope is infinite; the
    grid stops at temperature ``0.05 * spread``. Its steps (0.2 spreads in
    bias, 5% in temperature) are finer than such a set can resolve.
    """
    scale = ScoreScale.of(log_odds)
    pos, neg = counts_above(labels, log_odds, scale.thresholds)
    return fit_operating_point(
        positives_above=pos,
        negatives_above=neg,
        num_positive=int((labels == 1).sum()),
        num_negative=int((labels != 1).sum()),
        calibration=fit_calibration(
            nll_per_bias_temperature(labels, log_odds, scale.biases, scale.temperatures), scale
        ),
        target=target,
        source=source,
        scale=scale,
    )

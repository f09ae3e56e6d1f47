"""Fairness metrics over arrays: pure functions, no I/O.

A site computes :func:`site_fairness_metrics` on its own evaluation split and
sends the flat dict (scalars only) in the Flower ``MetricRecord`` of its
evaluate reply; the coordinator stores it beside AUC, accuracy, sensitivity and
specificity. The coordinator summarises sites with :func:`cross_site_summary`.

Key schema of :func:`site_fairness_metrics` (stable; hyphenated like Flower)::

    ece                              expected calibration error, all images
    group.<attr>.<group>.n           images in the group (only groups >= min size)
    group.<attr>.<group>.auc         \
    group.<attr>.<group>.sensitivity  } NaN where undefined (one class present)
    group.<attr>.<group>.specificity /
    fair.<attr>.es-auc               equity-scaled AUC over the kept groups
    fair.<attr>.dpd                  demographic parity difference (binary only)
    fair.<attr>.eod                  equalized odds difference (binary only)
    fair.<attr>.worst-auc            lowest group AUC
    fair.<attr>.gap                  highest minus lowest group AUC
    fair.<attr>.suppressed           groups not sent because n < min_group_size

``<attr>`` is one of :data:`ATTRIBUTES` (``age-band`` is derived from ``age``)
and ``<group>`` is the value's :func:`slug`. The ``fair.<attr>.*`` values
other than ``suppressed`` are sent only when two or more groups are kept.

Small-cell suppression: a group with fewer than ``min_group_size`` images is
neither sent nor used in any ``fair.*`` number of its attribute. ES-AUC, DPD,
EOD, worst AUC and gap are computed on the images of the kept groups only (the
ES-AUC reference AUC too), so no sent number moves with a suppressed group's
data. Only ``ece`` uses every image, like the overall metrics the site already
sends. Images with no value for an attribute are left out of that attribute.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence

import numpy as np
from fairlearn.metrics import demographic_parity_difference, equalized_odds_difference

from fedeye.fairness.reliability import bin_sums
from fedeye.metrics import classification_metrics

ATTRIBUTES = ("sex", "race", "ethnicity", "age-band")
AGE_BANDS = ("<50", "50-64", "65-74", ">=75")
GROUP_METRICS = ("n", "auc", "sensitivity", "specificity")
FAIR_METRICS = ("es-auc", "dpd", "eod", "worst-auc", "gap")
DEFAULT_MIN_GROUP_SIZE = 10
_SLUG_WORDS = ((">=", "ge"), ("<=", "le"), ("<", "lt"), (">", "gt"))
_MISSING = {"", "nan", "none", "na", "n/a", "unknown"}


# ------------------------------------------------------------------ calibration


def expected_calibration_error(labels: np.ndarray, probs: np.ndarray, *, n_bins: int = 10) -> float:
    """Expected calibration error with equal-width confidence bins.

    Parameters
    ----------
    labels : np.ndarray
        Integer class per image, shape ``(n,)``.
    probs : np.ndarray
        Positive-class probability ``(n,)``, or class probabilities
        ``(n, num_classes)``.
    n_bins : int
        Number of bins over ``[0, 1]``; bin ``b`` holds confidences in
        ``[b / n_bins, (b + 1) / n_bins)``, the last one includes 1.

    Returns
    -------
    float
        ``sum_b (n_b / n) * |observed_b - confidence_b|``, from the bins of
        :func:`fedeye.fairness.reliability.bin_sums` (what a reliability
        diagram shows). Binary tasks
        (``(n,)`` or two columns) use the positive-class probability and the
        positive rate; multiclass tasks the top-label confidence and accuracy.
        NaN for no images.

    Examples
    --------
    >>> expected_calibration_error(np.array([0, 1]), np.array([0.25, 0.75]), n_bins=2)
    0.25
    """
    labels = np.asarray(labels, dtype=np.int64)
    confidence, outcome = _confidence_and_outcome(labels, np.asarray(probs, dtype=np.float64))
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    return bin_sums(confidence, outcome, num_bins=n_bins).ece()  # NaN for no images


def _confidence_and_outcome(labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if probs.ndim == 1 or probs.shape[1] == 2:
        positive = probs if probs.ndim == 1 else probs[:, 1]
        _check_length(labels, positive)
        return positive, (labels == 1).astype(np.float64)
    _check_length(labels, probs)
    return probs.max(axis=1), (probs.argmax(axis=1) == labels).astype(np.float64)


def _check_length(labels: np.ndarray, probs: np.ndarray) -> None:
    if len(labels) != len(probs):
        raise ValueError(f"labels and probs differ in length: {len(labels)} vs {len(probs)}")


# --------------------------------------------------------------------- groups


def age_band(age: str | None) -> str | None:
    """The age band of an age in years: ``"<50"``, ``"50-64"``, ``"65-74"`` or ``">=75"``.

    Returns None for a missing, unparsable, negative or non-finite age.

    >>> [age_band(a) for a in ("49.9", "50", "74", "75", "", None)]
    ['<50', '50-64', '65-74', '>=75', None, None]
    """
    try:
        years = float(age) if age is not None else math.nan
    except ValueError:
        return None
    if not math.isfinite(years) or years < 0:
        return None
    if years < 50:
        return AGE_BANDS[0]
    if years < 65:
        return AGE_BANDS[1]
    return AGE_BANDS[2] if years < 75 else AGE_BANDS[3]


def slug(value: str) -> str:
    """A group value as it appears in metric keys.

    Comparison signs become words (``<50`` -> ``lt50``, ``>=75`` -> ``ge75``),
    then the value is lower-cased and every run of other non-alphanumerics
    becomes ``-``.

    >>> [slug(v) for v in ("Non-Hispanic", "Black or African American", "<50", ">=75")]
    ['non-hispanic', 'black-or-african-american', 'lt50', 'ge75']
    """
    text = value.strip()
    for sign, word in _SLUG_WORDS:
        text = text.replace(sign, word)
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "blank"


def attribute_values(attrs: Sequence[Mapping[str, str]], attribute: str) -> list[str | None]:
    """Each image's value of ``attribute`` (``age-band`` from ``age``), None if missing."""
    if attribute == "age-band":
        return [age_band(a.get("age")) for a in attrs]
    values = [a.get(attribute) for a in attrs]
    return [None if v is None or v.strip().lower() in _MISSING else v.strip() for v in values]


# ---------------------------------------------------------------- per-site metrics


def site_fairness_metrics(
    labels: np.ndarray,
    probs: np.ndarray,
    attrs: Sequence[Mapping[str, str]],
    *,
    min_group_size: int = DEFAULT_MIN_GROUP_SIZE,
    threshold: float = 0.5,
) -> dict[str, float]:
    """Calibration and per-group metrics of one site, as a flat dict of scalars.

    Parameters
    ----------
    labels : np.ndarray
        Integer class per image, shape ``(n,)``.
    probs : np.ndarray
        Class probabilities, shape ``(n, num_classes)``.
    attrs : Sequence[Mapping[str, str]]
        Each image's manifest attributes (``sex``, ``race``, ``ethnicity``,
        ``age``; others are ignored), in the order of ``labels``.
    min_group_size : int
        Groups with fewer images are suppressed (see the module docstring).
    threshold : float
        Operating threshold on the positive-class probability (binary tasks).

    Returns
    -------
    dict[str, float]
        The keys described in the module docstring. Multiclass tasks (e.g. DR
        grade 0-4) get macro one-vs-rest AUC and macro sensitivity/specificity
        per group and no ``dpd``/``eod`` (fairlearn defines them for binary
        predictions only).

    Examples
    --------
    >>> labels = np.array([0, 1] * 10)
    >>> probs = np.column_stack([1 - labels * 0.8, labels * 0.8]).astype(float)
    >>> out = site_fairness_metrics(labels, probs, [{"sex": "F"}] * 20)
    >>> out["group.sex.f.n"], out["fair.sex.suppressed"]
    (20.0, 0.0)
    """
    labels = np.asarray(labels, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or len(probs) != len(labels) or len(attrs) != len(labels):
        raise ValueError(
            f"expected labels (n,), probs (n, classes) and n attribute mappings; "
            f"got {labels.shape}, {probs.shape} and {len(attrs)}"
        )
    out = {"ece": expected_calibration_error(labels, probs)}
    for attribute in ATTRIBUTES:
        values = attribute_values(attrs, attribute)
        if any(v is not None for v in values):
            out.update(
                _attribute_metrics(labels, probs, values, attribute, min_group_size=min_group_size, threshold=threshold)
            )
    return out


def _attribute_metrics(
    labels: np.ndarray,
    probs: np.ndarray,
    values: list[str | None],
    attribute: str,
    *,
    min_group_size: int,
    threshold: float,
) -> dict[str, float]:
    slugs = np.asarray([slug(v) if v is not None else "" for v in values], dtype=object)
    groups = _kept_groups(slugs, min_group_size)
    present = {s for s in slugs if s}
    out: dict[str, float] = {f"fair.{attribute}.suppressed": float(len(present) - len(groups))}
    group_auc: dict[str, float] = {}
    for group, mask in groups.items():
        metrics = classification_metrics(labels[mask], probs[mask], threshold=threshold)
        prefix = f"group.{attribute}.{group}"
        out[f"{prefix}.n"] = float(mask.sum())
        out.update({f"{prefix}.{k}": metrics[k] for k in ("auc", "sensitivity", "specificity")})
        group_auc[group] = metrics["auc"]
    if len(groups) >= 2:
        kept = np.logical_or.reduce(list(groups.values()))
        out.update(_disparities(labels[kept], probs[kept], slugs[kept], group_auc, attribute, threshold=threshold))
    return out


def _kept_groups(slugs: np.ndarray, min_group_size: int) -> dict[str, np.ndarray]:
    """Boolean mask of each group (by slug) with at least ``min_group_size`` images."""
    masks = {g: slugs == g for g in sorted({s for s in slugs if s})}
    return {g: m for g, m in masks.items() if m.sum() >= min_group_size}


def _disparities(
    labels: np.ndarray,
    probs: np.ndarray,
    sensitive: np.ndarray,
    group_auc: Mapping[str, float],
    attribute: str,
    *,
    threshold: float,
) -> dict[str, float]:
    """ES-AUC, worst AUC, gap (and DPD/EOD if binary); the arrays hold the kept groups' images only."""
    reference = classification_metrics(labels, probs, threshold=threshold)["auc"]
    prefix = f"fair.{attribute}"
    out = {f"{prefix}.{k}": v for k, v in auc_disparities(reference, list(group_auc.values())).items()}
    if probs.shape[1] == 2:
        out.update(_parity(labels, probs[:, 1] >= threshold, sensitive, prefix))
    return out


def _parity(labels: np.ndarray, preds: np.ndarray, sensitive: np.ndarray, prefix: str) -> dict[str, float]:
    """fairlearn's DPD and EOD; EOD is NaN when a group lacks a class (its TPR or FPR is undefined)."""
    preds = preds.astype(np.int64)
    dpd = float(demographic_parity_difference(labels, preds, sensitive_features=sensitive))
    defined = all(len(np.unique(labels[sensitive == g])) == 2 for g in np.unique(sensitive))
    eod = float(equalized_odds_difference(labels, preds, sensitive_features=sensitive)) if defined else math.nan
    return {f"{prefix}.dpd": dpd, f"{prefix}.eod": eod}


# ------------------------------------------------------------------ AUC disparity


def equity_scaled_auc(auc: float, group_aucs: Sequence[float]) -> float:
    """Equity-scaled AUC: ``auc / (1 + sum_g |auc - auc_g|)``.

    Harvard FairVision (Luo et al., 2024, "FairVision: Equitable Deep Learning
    for Eye Disease Screening via Fair Identity Scaling"). Groups with an
    undefined (NaN) AUC are left out; NaN if fewer than two remain or ``auc``
    is NaN.

    >>> round(equity_scaled_auc(0.8, [0.9, 0.7]), 6)
    0.666667
    """
    defined = [float(g) for g in group_aucs if math.isfinite(g)]
    if len(defined) < 2 or not math.isfinite(auc):
        return math.nan
    return float(auc) / (1.0 + sum(abs(auc - g) for g in defined))


def auc_disparities(auc: float, group_aucs: Sequence[float]) -> dict[str, float]:
    """``es-auc``, ``worst-auc`` and ``gap`` (max - min) of group AUCs; NaN groups left out."""
    defined = [float(g) for g in group_aucs if math.isfinite(g)]
    if len(defined) < 2:
        return {"es-auc": math.nan, "worst-auc": math.nan, "gap": math.nan}
    return {
        "es-auc": equity_scaled_auc(auc, defined),
        "worst-auc": min(defined),
        "gap": max(defined) - min(defined),
    }


def cross_site_summary(site_auc: Mapping[str, float], site_n: Mapping[str, int] | None = None) -> dict[str, float]:
    """How evenly a model serves the sites, with sites as the groups.

    Parameters
    ----------
    site_auc : Mapping[str, float]
        Each site's AUC; NaN (or None) sites are left out.
    site_n : Mapping[str, int] | None
        Each site's number of images. Given: ``mean-auc`` (and the ES-AUC
        reference) is the mean weighted by images; not given: the plain mean
        over sites (each hospital counts once).

    Returns
    -------
    dict[str, float]
        ``sites`` (number with an AUC), ``mean-auc``, ``worst-auc``, ``gap``
        (max - min) and ``es-auc`` = ``mean-auc / (1 + sum_s |mean-auc - auc_s|)``;
        NaN where fewer sites than needed (one for the mean, two for the rest).

    >>> out = cross_site_summary({"a": 0.9, "b": 0.7})
    >>> round(out["mean-auc"], 3), round(out["gap"], 3), round(out["es-auc"], 3)
    (0.8, 0.2, 0.667)
    """
    aucs = {s: float(a) for s, a in site_auc.items() if a is not None and math.isfinite(a)}
    weights = np.asarray([float(site_n[s]) if site_n is not None else 1.0 for s in aucs])
    values = np.asarray(list(aucs.values()))
    mean = float(np.average(values, weights=weights)) if len(values) and weights.sum() > 0 else math.nan
    return {"sites": float(len(aucs)), "mean-auc": mean, **auc_disparities(mean, list(values))}


# --------------------------------------------------------------- reading the keys


def parse_group_metrics(metrics: Mapping[str, float | None]) -> dict[str, dict[str, dict[str, float | None]]]:
    """``group.<attr>.<group>.<metric>`` keys as ``{attr: {group: {metric: value}}}``.

    >>> parse_group_metrics({"group.sex.f.auc": 0.8, "auc": 0.9})
    {'sex': {'f': {'auc': 0.8}}}
    """
    out: dict[str, dict[str, dict[str, float | None]]] = {}
    for key, value in metrics.items():
        parts = key.split(".")
        if len(parts) == 4 and parts[0] == "group":
            out.setdefault(parts[1], {}).setdefault(parts[2], {})[parts[3]] = value
    return out


def parse_fair_metrics(metrics: Mapping[str, float | None]) -> dict[str, dict[str, float | None]]:
    """``fair.<attr>.<metric>`` keys as ``{attr: {metric: value}}``.

    >>> parse_fair_metrics({"fair.sex.gap": 0.1, "fair.sex.suppressed": 1.0})
    {'sex': {'gap': 0.1, 'suppressed': 1.0}}
    """
    out: dict[str, dict[str, float | None]] = {}
    for key, value in metrics.items():
        parts = key.split(".")
        if len(parts) == 3 and parts[0] == "fair":
            out.setdefault(parts[1], {})[parts[2]] = value
    return out


def group_label(attribute: str, group_slug: str) -> str:
    """A display label for a group slug (age bands get their signs back).

    >>> group_label("age-band", "ge75"), group_label("race", "black")
    ('>=75', 'black')
    """
    if attribute == "age-band":
        return {slug(b): b for b in AGE_BANDS}.get(group_slug, group_slug)
    return group_slug

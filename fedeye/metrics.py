"""Classification metrics over arrays: pure functions, no I/O.

Sites compute these on their own evaluation split and send only the
aggregates, never per-image scores or labels.
"""

from __future__ import annotations

import math

import numpy as np
from sklearn.metrics import confusion_matrix, roc_auc_score

METRIC_NAMES = ("auc", "accuracy", "sensitivity", "specificity")


def classification_metrics(labels: np.ndarray, probs: np.ndarray, *, threshold: float = 0.5) -> dict[str, float]:
    """AUC, accuracy, sensitivity and specificity of a classifier.

    Parameters
    ----------
    labels : np.ndarray
        Integer class per image, shape ``(n,)``.
    probs : np.ndarray
        Class probabilities, shape ``(n, num_classes)``.
    threshold : float
        Operating threshold on the positive-class probability (binary tasks).

    Returns
    -------
    dict[str, float]
        Always the keys of :data:`METRIC_NAMES`; a value that is undefined on
        this data (AUC with one class present) is ``nan``. Multiclass tasks use
        macro one-vs-rest AUC and macro sensitivity/specificity.
    """
    labels = np.asarray(labels, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or len(probs) != len(labels):
        raise ValueError(f"probs must be (n, classes) matching labels; got {probs.shape} vs {labels.shape}")
    if probs.shape[1] == 2:
        preds = (probs[:, 1] >= threshold).astype(np.int64)
    else:
        preds = probs.argmax(axis=1)
    sens, spec = _macro_sens_spec(labels, preds, probs.shape[1])
    return {
        "auc": _auc(labels, probs),
        "accuracy": float((preds == labels).mean()) if len(labels) else math.nan,
        "sensitivity": sens,
        "specificity": spec,
    }


def _auc(labels: np.ndarray, probs: np.ndarray) -> float:
    present = np.unique(labels)
    if len(present) < 2:
        return math.nan
    if probs.shape[1] == 2:
        return float(roc_auc_score(labels, probs[:, 1]))
    if len(present) < probs.shape[1]:
        return math.nan
    return float(roc_auc_score(labels, probs, multi_class="ovr", average="macro"))


def _macro_sens_spec(labels: np.ndarray, preds: np.ndarray, num_classes: int) -> tuple[float, float]:
    """Binary: sensitivity/specificity of class 1. Multiclass: macro over classes."""
    cm = confusion_matrix(labels, preds, labels=list(range(num_classes)))
    positives = range(1, 2) if num_classes == 2 else range(num_classes)
    sens, spec = [], []
    for k in positives:
        tp = cm[k, k]
        fn = cm[k, :].sum() - tp
        fp = cm[:, k].sum() - tp
        tn = cm.sum() - tp - fn - fp
        sens.append(tp / (tp + fn) if tp + fn else math.nan)
        spec.append(tn / (tn + fp) if tn + fp else math.nan)
    return _mean_defined(sens), _mean_defined(spec)


def _mean_defined(values: list[float]) -> float:
    """Mean over the defined (non-NaN) values; NaN when none is defined."""
    defined = [v for v in values if not math.isnan(v)]
    return float(np.mean(defined)) if defined else math.nan

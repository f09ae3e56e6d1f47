"""Classification metrics against hand-computed cases."""

from __future__ import annotations

import math

import numpy as np

from fedeye.metrics import classification_metrics


def test_binary_hand_computed() -> None:
    labels = np.array([0, 0, 1, 1, 1])
    p1 = np.array([0.1, 0.6, 0.4, 0.8, 0.9])
    m = classification_metrics(labels, np.stack([1 - p1, p1], axis=1))
    # positives ranked above negatives in 5 of 6 pairs
    assert math.isclose(m["auc"], 5 / 6)
    # threshold 0.5: preds 0,1,0,1,1 -> TP=2 FN=1 TN=1 FP=1
    assert math.isclose(m["sensitivity"], 2 / 3)
    assert math.isclose(m["specificity"], 1 / 2)
    assert math.isclose(m["accuracy"], 3 / 5)


def test_one_class_gives_nan_auc() -> None:
    m = classification_metrics(np.array([1, 1]), np.array([[0.2, 0.8], [0.6, 0.4]]))
    assert math.isnan(m["auc"]) and math.isnan(m["specificity"])
    assert math.isclose(m["sensitivity"], 0.5)


def test_multiclass_macro_ovr() -> None:
    labels = np.array([0, 1, 2, 0, 1, 2])
    probs = np.eye(3)[labels] * 0.7 + 0.1
    m = classification_metrics(labels, probs)
    assert m["auc"] == 1.0 and m["accuracy"] == 1.0 and m["sensitivity"] == 1.0

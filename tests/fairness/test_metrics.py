"""Fairness metrics: hand-computed cases, agreement with fairlearn, small-cell suppression."""

from __future__ import annotations

import math

import numpy as np
import pytest
from fairlearn.metrics import (
    MetricFrame,
    demographic_parity_difference,
    equalized_odds_difference,
)
from sklearn.metrics import recall_score, roc_auc_score

from fedeye.fairness.metrics import (
    age_band,
    cross_site_summary,
    equity_scaled_auc,
    expected_calibration_error,
    site_fairness_metrics,
    slug,
)
from tests.fairness.conftest import random_site


def _two_class(score: np.ndarray) -> np.ndarray:
    return np.column_stack([1 - score, score])


# ---------------------------------------------------------------- hand cases


def test_ece_hand_case() -> None:
    # bin [0.2, 0.3): conf 0.2, 0.2 -> 1 of 2 positive: |0.5 - 0.2| = 0.3, weight 0.5
    # bin [0.8, 0.9): conf 0.8, 0.8 -> 2 of 2 positive: |1.0 - 0.8| = 0.2, weight 0.5
    labels = np.array([0, 1, 1, 1])
    probs = np.array([0.2, 0.2, 0.8, 0.8])
    assert expected_calibration_error(labels, probs) == pytest.approx(0.25)
    assert expected_calibration_error(labels, _two_class(probs)) == pytest.approx(0.25)


def test_ece_multiclass_uses_top_label_confidence() -> None:
    probs = np.array([[0.6, 0.3, 0.1], [0.1, 0.7, 0.2]])
    labels = np.array([0, 2])  # first right (conf 0.6), second wrong (conf 0.7)
    assert expected_calibration_error(labels, probs) == pytest.approx(0.5 * 0.4 + 0.5 * 0.7)


def test_ece_perfectly_calibrated_is_zero_and_empty_is_nan() -> None:
    assert expected_calibration_error(np.array([0, 1, 0, 1]), np.full(4, 0.5)) == pytest.approx(0.0)
    assert math.isnan(expected_calibration_error(np.array([], int), np.array([])))


def test_es_auc_hand_case() -> None:
    # AUC 0.8, groups 0.9 and 0.6: 0.8 / (1 + 0.1 + 0.2) = 0.61538...
    assert equity_scaled_auc(0.8, [0.9, 0.6]) == pytest.approx(0.8 / 1.3)
    assert equity_scaled_auc(0.8, [0.8, 0.8]) == pytest.approx(0.8)
    assert math.isnan(equity_scaled_auc(0.8, [0.9, math.nan]))


@pytest.mark.parametrize(
    ("age", "band"),
    [
        ("0", "<50"),
        ("49", "<50"),
        ("50", "50-64"),
        ("64.9", "50-64"),
        ("65", "65-74"),
        ("74", "65-74"),
        ("75", ">=75"),
        ("101", ">=75"),
        (None, None),
        ("", None),
        ("old", None),
        ("-3", None),
        ("nan", None),
    ],
)
def test_age_band(age: str | None, band: str | None) -> None:
    assert age_band(age) == band


def test_slug() -> None:
    assert slug("Black or African American") == "black-or-african-american"
    assert slug(" Non-Hispanic ") == "non-hispanic"
    assert slug(">=75") == "ge75"


def test_cross_site_summary_plain_and_weighted() -> None:
    plain = cross_site_summary({"a": 0.9, "b": 0.7, "c": math.nan})
    assert plain["sites"] == 2 and plain["mean-auc"] == pytest.approx(0.8)
    assert plain["worst-auc"] == pytest.approx(0.7) and plain["gap"] == pytest.approx(0.2)
    assert plain["es-auc"] == pytest.approx(0.8 / 1.2)
    weighted = cross_site_summary({"a": 0.9, "b": 0.7}, {"a": 300, "b": 100})
    assert weighted["mean-auc"] == pytest.approx(0.85)
    assert weighted["es-auc"] == pytest.approx(0.85 / (1 + 0.05 + 0.15))


# ------------------------------------------------------------ against fairlearn


def test_group_metrics_equal_metricframe_by_group() -> None:
    labels, probs, attrs = random_site(7, n=400)
    out = site_fairness_metrics(labels, probs, attrs, min_group_size=1)
    preds = (probs[:, 1] >= 0.5).astype(int)
    sex = np.array([a["sex"] for a in attrs])
    frame = MetricFrame(
        metrics={"sens": recall_score, "spec": lambda y, p: recall_score(y, p, pos_label=0)},
        y_true=labels,
        y_pred=preds,
        sensitive_features=sex,
    )
    auc = MetricFrame(metrics=roc_auc_score, y_true=labels, y_pred=probs[:, 1], sensitive_features=sex)
    for group in ("F", "M"):
        key = f"group.sex.{group.lower()}"
        assert out[f"{key}.sensitivity"] == pytest.approx(frame.by_group.loc[group, "sens"])
        assert out[f"{key}.specificity"] == pytest.approx(frame.by_group.loc[group, "spec"])
        assert out[f"{key}.auc"] == pytest.approx(auc.by_group.loc[group])
        assert out[f"{key}.n"] == (sex == group).sum()
    assert out["fair.sex.dpd"] == pytest.approx(demographic_parity_difference(labels, preds, sensitive_features=sex))
    assert out["fair.sex.eod"] == pytest.approx(equalized_odds_difference(labels, preds, sensitive_features=sex))
    assert out["fair.sex.worst-auc"] == pytest.approx(auc.by_group.min())
    assert out["fair.sex.gap"] == pytest.approx(auc.difference())


def test_all_values_are_python_floats_and_keys_follow_the_schema() -> None:
    labels, probs, attrs = random_site(3)
    out = site_fairness_metrics(labels, probs, attrs)
    assert all(type(v) is float for v in out.values())
    for key in out:
        parts = key.split(".")
        assert key == "ece" or (parts[0] == "group" and len(parts) == 4) or (parts[0] == "fair" and len(parts) == 3)
        assert key == "ece" or parts[1] in ("sex", "race", "ethnicity", "age-band")


# ----------------------------------------------------------------- suppression


def test_small_groups_are_suppressed_and_do_not_enter_dpd() -> None:
    labels, probs, attrs = random_site(11, n=300)
    race = np.array([a["race"] for a in attrs])
    assert 0 < (race == "White").sum() < 30  # the fixture's small group
    out = site_fairness_metrics(labels, probs, attrs, min_group_size=30)

    assert not any(k.startswith("group.race.white.") for k in out)
    assert out["fair.race.suppressed"] == 1.0
    kept = race != "White"
    preds = (probs[:, 1] >= 0.5).astype(int)
    assert out["fair.race.dpd"] == pytest.approx(
        demographic_parity_difference(labels[kept], preds[kept], sensitive_features=race[kept])
    )
    kept_auc = roc_auc_score(labels[kept], probs[kept, 1])
    groups = [out[f"group.race.{g}.auc"] for g in ("asian", "black")]
    assert out["fair.race.es-auc"] == pytest.approx(kept_auc / (1 + sum(abs(kept_auc - g) for g in groups)))


def test_suppressed_groups_data_does_not_move_any_sent_number() -> None:
    labels, probs, attrs = random_site(5, n=300)
    white = np.array([a["race"] == "White" for a in attrs])
    out = site_fairness_metrics(labels, probs, attrs, min_group_size=30)
    flipped = probs.copy()
    flipped[white] = flipped[white][:, ::-1]  # scramble only the suppressed group's scores
    again = site_fairness_metrics(labels, flipped, attrs, min_group_size=30)
    race_keys = [k for k in out if ".race." in k]
    assert race_keys and all(out[k] == pytest.approx(again[k], nan_ok=True) for k in race_keys)


def test_one_kept_group_sends_no_disparities_and_missing_attribute_is_absent() -> None:
    labels, probs, _ = random_site(2, n=40)
    attrs = [{"sex": "F" if i < 35 else "M"} for i in range(40)]
    out = site_fairness_metrics(labels, probs, attrs, min_group_size=10)
    assert "group.sex.f.n" in out and "group.sex.m.n" not in out
    assert out["fair.sex.suppressed"] == 1.0 and "fair.sex.es-auc" not in out
    assert not any(".race." in k or ".age-band." in k for k in out)


def test_one_class_group_has_nan_auc_and_nan_eod() -> None:
    labels = np.array([0, 1] * 10 + [1] * 20)
    score = np.where(labels == 1, 0.8, 0.3).astype(float)
    attrs = [{"sex": "F"}] * 20 + [{"sex": "M"}] * 20
    out = site_fairness_metrics(labels, _two_class(score), attrs)
    assert math.isnan(out["group.sex.m.auc"]) and math.isnan(out["group.sex.m.specificity"])
    assert math.isnan(out["fair.sex.eod"]) and math.isnan(out["fair.sex.es-auc"])
    assert out["fair.sex.dpd"] == pytest.approx(0.5)


def test_age_band_attribute_uses_slugged_bands() -> None:
    labels, probs, _ = random_site(4, n=60)
    attrs = [{"age": a} for a in ["40"] * 20 + ["80"] * 20 + ["60"] * 20]
    out = site_fairness_metrics(labels, probs, attrs)
    assert {k for k in out if k.endswith(".n")} == {
        "group.age-band.lt50.n",
        "group.age-band.ge75.n",
        "group.age-band.50-64.n",
    }


def test_multiclass_uses_macro_auc_and_omits_dpd_eod() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, 300)
    logits = rng.normal(0, 1, (300, 5))
    logits[np.arange(300), labels] += 1.5
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    attrs = [{"sex": "F" if i % 2 else "M"} for i in range(300)]
    out = site_fairness_metrics(labels, probs, attrs)
    f = np.array([i % 2 == 1 for i in range(300)])
    assert out["group.sex.f.auc"] == pytest.approx(
        roc_auc_score(labels[f], probs[f], multi_class="ovr", average="macro")
    )
    assert "fair.sex.es-auc" in out and "fair.sex.dpd" not in out and "fair.sex.eod" not in out


# ------------------------------------------------------------- built-in bias


def test_noisier_group_has_lower_auc_and_es_auc_below_auc() -> None:
    rng = np.random.default_rng(42)
    n = 1000
    labels = rng.integers(0, 2, n)
    noisy = rng.random(n) < 0.5
    noise = np.where(noisy, 1.5, 0.3)  # the model sees group B's images badly
    score = 1 / (1 + np.exp(-((labels - 0.5) * 2 + rng.normal(0, 1, n) * noise)))
    attrs = [{"race": "B" if b else "A"} for b in noisy]
    out = site_fairness_metrics(labels, _two_class(score), attrs)

    assert out["group.race.b.auc"] < out["group.race.a.auc"] - 0.1
    overall = roc_auc_score(labels, score)
    assert out["fair.race.es-auc"] < overall
    assert out["fair.race.worst-auc"] == pytest.approx(out["group.race.b.auc"])
    assert out["fair.race.gap"] == pytest.approx(out["group.race.a.auc"] - out["group.race.b.auc"])


def test_bad_shapes_are_refused() -> None:
    with pytest.raises(ValueError, match="expected labels"):
        site_fairness_metrics(np.array([0, 1]), np.array([0.2, 0.8]), [{}, {}])

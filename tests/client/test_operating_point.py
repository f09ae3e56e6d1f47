"""The site's score summary: aggregate counts on fixed grids only, small classes withheld."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, Metadata, RecordDict
from flwr.app.message.message import make_message

from fedeye import protocol as p
from fedeye.client.app import app
from fedeye.client.operating_point import metrics_at_point, score_summary
from fedeye.config import RunConfig
from fedeye.fairness.operating_point import (
    LOG_ODDS_GRID,
    NLL_GRID_SHAPE,
    TEMPERATURE_GRID,
    ModelOperatingPoint,
    ScoreScale,
    nll_per_bias_temperature,
    positive_log_odds,
)
from fedeye.models import build_model


def _probs(labels: np.ndarray, seed: int = 0) -> np.ndarray:
    p1 = np.clip(np.random.default_rng(seed).normal(0.3 + 0.4 * labels, 0.2), 0.01, 0.99)
    return np.stack([1 - p1, p1], axis=1)


def test_summary_holds_only_counts_on_fixed_grids() -> None:
    labels = np.array([0] * 30 + [1] * 25)
    summary = score_summary(_probs(labels), labels, min_group_size=10)

    assert summary is not None
    assert {k: len(v) if isinstance(v, list) else v for k, v in summary.items()} == {
        p.SUMMARY_POSITIVES: 25,
        p.SUMMARY_NEGATIVES: 30,
        p.SUMMARY_POSITIVES_ABOVE: len(LOG_ODDS_GRID),
        p.SUMMARY_NEGATIVES_ABOVE: len(LOG_ODDS_GRID),
        p.SUMMARY_NLL: len(TEMPERATURE_GRID),
        p.SUMMARY_NLL_GRID: NLL_GRID_SHAPE[0] * NLL_GRID_SHAPE[1],
    }  # vector lengths are the grids', never the number of images


def test_the_log_loss_grid_is_row_major_and_its_last_row_is_the_temperature_summary() -> None:
    labels = np.array([0] * 30 + [1] * 25)
    probs, scale = _probs(labels), ScoreScale(-0.5, 1.2)
    summary = score_summary(probs, labels, min_group_size=10, scale=scale)

    assert summary is not None
    grid = np.asarray(summary[p.SUMMARY_NLL_GRID]).reshape(NLL_GRID_SHAPE)
    expected = nll_per_bias_temperature(labels, positive_log_odds(probs), scale.biases, scale.temperatures)
    assert grid == pytest.approx(expected)
    assert np.asarray(summary[p.SUMMARY_NLL]) == pytest.approx(expected[-1])  # bias 0, for older coordinators


def test_summary_does_not_depend_on_image_order() -> None:
    labels = np.array([0] * 30 + [1] * 25)
    probs = _probs(labels)
    order = np.random.default_rng(1).permutation(len(labels))
    first, shuffled = (
        score_summary(probs, labels, min_group_size=10),
        score_summary(probs[order], labels[order], min_group_size=10),
    )
    assert first is not None and shuffled is not None
    assert {k: np.round(v, 6).tolist() for k, v in first.items()} == {
        k: np.round(v, 6).tolist() for k, v in shuffled.items()
    }


def test_a_class_under_min_group_size_is_withheld_with_the_log_loss() -> None:
    labels = np.array([0] * 30 + [1] * 4)
    summary = score_summary(_probs(labels), labels, min_group_size=10)

    assert summary is not None
    assert set(summary) == {p.SUMMARY_NEGATIVES, p.SUMMARY_NEGATIVES_ABOVE}
    assert score_summary(_probs(labels[:8]), labels[:8], min_group_size=10) is None


def test_multiclass_sends_no_summary() -> None:
    assert score_summary(np.full((20, 3), 1 / 3), np.arange(20) % 3, min_group_size=1) is None


def test_metrics_at_a_point_carry_intervals_threshold_and_calibration() -> None:
    labels = np.array([0] * 40 + [1] * 40)
    point = ModelOperatingPoint(0.2, 2.0, "youden", "federation", (40, 40), 0.8, 0.8, bias=-0.4)
    metrics = metrics_at_point(_probs(labels), labels, point, resamples=200)

    for name in ("sensitivity", "specificity", "balanced-accuracy", "ppv", "npv"):
        assert metrics[f"{name}-ci-low"] <= metrics[name] <= metrics[f"{name}-ci-high"]
    assert metrics["threshold"] == pytest.approx(1 / (1 + np.exp(-0.3)))  # (0.2 - -0.4) / 2
    assert metrics["temperature"] == 2.0 and metrics["bias"] == -0.4 and 0 <= metrics["ece-calibrated"] <= 1


def _evaluate_request(cfg: RunConfig, **extra: object) -> Message:
    metadata = Metadata(
        run_id=1,
        message_id="m1",
        src_node_id=0,
        dst_node_id=7,
        reply_to_message_id="",
        group_id="1",
        created_at=time.time(),
        ttl=600.0,
        message_type=MessageType.EVALUATE,
    )
    config = ConfigRecord({p.RUN_CONFIG: cfg.to_json(), p.SERVER_ROUND: 1, p.SPLIT: "test", **extra})  # type: ignore[dict-item]
    return make_message(
        metadata, content=RecordDict({p.ARRAYS: ArrayRecord(build_model(cfg.model).state_dict()), p.CONFIG: config})
    )


def test_the_clientapp_replies_a_summary_only_when_asked(tiny_sites: Path) -> None:
    cfg = RunConfig.model_validate({"data": {"root": str(tiny_sites)}, "model": {"img_size": 32}})
    node = Context(
        run_id=1, node_id=7, node_config={"site-dir": str(tiny_sites / "site-1")}, state=RecordDict(), run_config={}
    )

    plain = app(_evaluate_request(cfg), node)
    asked = app(
        _evaluate_request(
            cfg,
            **{p.SUMMARIZE_SCORES: True, p.OPERATING_LOG_ODDS: 0.0, p.TEMPERATURE: 1.5, p.CALIBRATION_BIAS: 0.25},
        ),
        node,
    )

    assert p.SCORE_SUMMARY not in plain.content.metric_records
    assert "balanced-accuracy" not in plain.content[p.METRICS] and "balanced-accuracy" in asked.content[p.METRICS]
    assert asked.content[p.METRICS]["temperature"] == 1.5 and asked.content[p.METRICS]["bias"] == 0.25
    # 40 images at 32 px: the test split holds fewer than 10 of a class, so nothing of it is sent
    assert p.SCORE_SUMMARY not in asked.content.metric_records or all(
        len(v) in (len(LOG_ODDS_GRID), len(TEMPERATURE_GRID), NLL_GRID_SHAPE[0] * NLL_GRID_SHAPE[1])
        for v in asked.content[p.SCORE_SUMMARY].values()
        if isinstance(v, list)
    )


def test_moments_are_three_numbers_and_respect_min_group_size() -> None:
    from fedeye.client.operating_point import summary_for

    labels = np.array([0] * 30 + [1] * 25)
    asked = ConfigRecord({p.SUMMARIZE_SCORES: p.MOMENTS})
    record = summary_for(asked, _probs(labels), labels, min_group_size=10)
    assert record is not None and set(record) == {p.SUMMARY_IMAGES, p.SUMMARY_SUM, p.SUMMARY_SQUARES}
    assert record[p.SUMMARY_IMAGES] == 55
    assert summary_for(asked, _probs(labels[:8]), labels[:8], min_group_size=10) is None
    assert summary_for(ConfigRecord({}), _probs(labels), labels, min_group_size=10) is None  # not asked


def test_reliability_bins_are_sent_only_when_asked_with_small_bins_withheld() -> None:
    from fedeye.client.operating_point import reliability_for

    labels = np.array([0] * 30 + [1] * 25)
    probs = _probs(labels)
    asked = ConfigRecord({p.SEND_RELIABILITY: True})
    point = ModelOperatingPoint(0.0, 1.5, "youden", "federation", (0, 0), 0.8, 0.8, bias=0.2)

    record = reliability_for(asked, probs, labels, point, min_group_size=5)

    assert record is not None
    for key in (p.BIN_IMAGES, p.BIN_PROBABILITY_SUMS, p.BIN_POSITIVES):
        assert len(record[key]) == 10 and len(record[p.calibrated_key(key)]) == 10  # type: ignore[arg-type]
    images = np.asarray(record[p.BIN_IMAGES])
    assert not ((images > 0) & (images < 5)).any()  # no bin of 1-4 images leaves the site
    assert images.sum() + int(record[p.BIN_WITHHELD]) == 55  # type: ignore[call-overload]
    assert int(record[p.BIN_WITHHELD]) > 0  # type: ignore[call-overload]  # this data has small bins
    assert reliability_for(ConfigRecord({}), probs, labels, point, min_group_size=5) is None  # not asked
    assert p.calibrated_key(p.BIN_IMAGES) not in reliability_for(asked, probs, labels, None, min_group_size=5)  # type: ignore[operator]
    assert reliability_for(asked, probs, labels, point, min_group_size=56) is None  # every bin withheld
    three = np.full((55, 3), 1 / 3)
    assert reliability_for(asked, three, labels, point, min_group_size=5) is None  # multiclass


def test_the_clientapp_sends_reliability_bins_at_the_final_test(tiny_sites: Path, tmp_path: Path) -> None:
    # Prepare: site-1 as is (min_group_size 10, 7 test images) and a copy that allows groups of 2
    cfg = RunConfig.model_validate({"data": {"root": str(tiny_sites)}, "model": {"img_size": 32}})
    small = tmp_path / "site-1"
    shutil.copytree(tiny_sites / "site-1", small)
    (small / "fedeye-site.toml").write_text("[privacy]\nmin_group_size = 2\n")
    point = {p.OPERATING_LOG_ODDS: 0.0, p.TEMPERATURE: 1.5, p.CALIBRATION_BIAS: 0.25}

    def ask(site: Path, **extra: object) -> Message:
        node = Context(run_id=1, node_id=7, node_config={"site-dir": str(site)}, state=RecordDict(), run_config={})
        return app(_evaluate_request(cfg, **point, **extra), node)  # type: ignore[arg-type]

    # Execute
    plain, default, allowed = (
        ask(small),
        ask(tiny_sites / "site-1", **{p.SEND_RELIABILITY: True}),
        ask(small, **{p.SEND_RELIABILITY: True}),
    )

    # Assert: only when asked, and nothing from bins under the site's min_group_size
    assert p.RELIABILITY not in plain.content.metric_records
    assert default.content[p.METRICS][p.NUM_EXAMPLES] < 10 and p.RELIABILITY not in default.content.metric_records
    record = allowed.content[p.RELIABILITY]
    sent = sum(record[p.BIN_IMAGES]) + int(record[p.BIN_WITHHELD])  # type: ignore[arg-type,call-overload]
    assert sent == allowed.content[p.METRICS][p.NUM_EXAMPLES] and sum(record[p.BIN_IMAGES]) > 0  # type: ignore[arg-type]
    assert p.calibrated_key(p.BIN_POSITIVES) in record

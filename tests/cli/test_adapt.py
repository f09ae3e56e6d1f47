"""`fedeye calibrate` and `fedeye adapt`: a new model file that records what was done."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from fedeye.cli.main import app
from fedeye.fairness.operating_point import METADATA_KEY, ModelOperatingPoint
from fedeye.models import build_model, load_model, save_model
from fedeye.models.config import ModelConfig

runner = CliRunner()


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cfg = ModelConfig(img_size=32)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "global-model.pt"
    point = ModelOperatingPoint(0.0, 1.0, "0.85", "federation", (30, 40), 0.86, 0.5)
    save_model(path, build_model(cfg), cfg, metadata={"round": 3, METADATA_KEY: point.to_metadata()})
    return path


def test_calibrate_writes_a_new_point_and_keeps_the_old_one_in_history(
    model_file: Path, tiny_sites: Path, tmp_path: Path
) -> None:
    out = tmp_path / "calibrated.pt"
    result = runner.invoke(
        app,
        ["calibrate", "--model", str(model_file), "--data", str(tiny_sites / "site-1"), "--out", str(out), "--json"],
    )

    assert result.exit_code == 0, result.output
    _, _, meta = load_model(out)
    point = ModelOperatingPoint.from_metadata(meta)
    assert point is not None and point.source == "calibrate" and point.target == "0.85"  # the model's own target
    assert point.sensitivity >= 0.85 and sum(point.fitted_on) == 40
    (record,) = meta["history"]
    assert record["command"] == "calibrate" and record["previous"]["source"] == "federation"
    assert meta["round"] == 3 and load_model(model_file)[2][METADATA_KEY]["source"] == "federation"  # input kept


def test_calibrate_stores_and_shows_the_fitted_bias(model_file: Path, tiny_sites: Path, tmp_path: Path) -> None:
    out = tmp_path / "calibrated.pt"
    result = runner.invoke(
        app, ["calibrate", "--model", str(model_file), "--data", str(tiny_sites / "site-1"), "--out", str(out)]
    )

    assert result.exit_code == 0, result.output
    stored = load_model(out)[2][METADATA_KEY]
    point = ModelOperatingPoint.from_metadata({METADATA_KEY: stored})
    assert point is not None and stored["bias"] == point.bias
    assert stored["threshold"] == pytest.approx(point.calibration.probability(np.array([point.log_odds]))[0])
    assert f"after {point.calibration.describe()}" in " ".join(result.output.split())


def test_calibrate_refuses_too_few_labels_and_says_what_to_do(
    model_file: Path, tiny_sites: Path, tmp_path: Path
) -> None:
    result = runner.invoke(
        app,
        [
            "calibrate",
            "--model",
            str(model_file),
            "--data",
            str(tiny_sites / "site-1"),
            "--out",
            str(tmp_path / "m.pt"),
            "--max-labels",
            "6",
        ],
    )
    assert result.exit_code == 1
    text = " ".join(result.output.split())
    assert "needs at least 5 of each" in text and "fedeye adapt" in text


def test_calibrate_checks_the_operating_point_option(model_file: Path, tiny_sites: Path, tmp_path: Path) -> None:
    result = runner.invoke(
        app,
        [
            "calibrate",
            "--model",
            str(model_file),
            "--data",
            str(tiny_sites / "site-1"),
            "--out",
            str(tmp_path / "m.pt"),
            "--operating-point",
            "1.2",
        ],
    )
    assert result.exit_code == 1 and "target sensitivity in (0, 1)" in " ".join(result.output.split())


def test_adapt_records_what_it_did(model_file: Path, tiny_sites: Path, tmp_path: Path) -> None:
    out = tmp_path / "adapted.pt"
    result = runner.invoke(
        app, ["adapt", "--model", str(model_file), "--data", str(tiny_sites / "site-3"), "--out", str(out), "--json"]
    )

    assert result.exit_code == 0, result.output
    reported = json.loads(result.output)
    _, _, meta = load_model(out)
    (record,) = meta["history"]
    assert record["command"] == "adapt" and record["num_images"] == 40 and 0.0 <= record["prior_estimate"] <= 1.0
    assert meta[METADATA_KEY] == reported["operating_point"]
    assert meta[METADATA_KEY]["source"] == ("adapt" if record["threshold_moved"] else "federation")


@pytest.mark.parametrize("option", [[], ["--prevalence-strength", "0"], ["--prevalence-strength", "25"]])
def test_adapt_records_its_prevalence_prior(
    model_file: Path, tiny_sites: Path, tmp_path: Path, option: list[str]
) -> None:
    from fedeye.client.adapt import PREVALENCE_STRENGTH

    out = tmp_path / "adapted.pt"
    args = ["adapt", "--model", str(model_file), "--data", str(tiny_sites / "site-3"), "--out", str(out), "--json"]
    result = runner.invoke(app, [*args, *option])

    assert result.exit_code == 0, result.output
    (record,) = load_model(out)[2]["history"]
    strength = float(option[1]) if option else PREVALENCE_STRENGTH
    centre = 30 / 70 if strength else 0.5  # the model file's point was fitted on 30 positives and 40 negatives
    assert record["prevalence_prior"] == pytest.approx([centre, strength])


@pytest.mark.parametrize("value", ["nan", "inf", "-1"])
def test_adapt_refuses_a_prevalence_strength_that_is_not_a_finite_count(
    model_file: Path, tiny_sites: Path, tmp_path: Path, value: str
) -> None:
    out = tmp_path / "adapted.pt"
    args = ["adapt", "--model", str(model_file), "--data", str(tiny_sites / "site-3"), "--out", str(out)]
    result = runner.invoke(app, [*args, "--prevalence-strength", value])
    assert result.exit_code == 2 and "is not a finite number >= 0" in " ".join(result.output.split())
    assert not out.exists()

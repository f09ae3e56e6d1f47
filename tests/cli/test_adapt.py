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


# ---------------------------------------------------------------- --out that could never be written


def _flat(output: str) -> str:
    """The output with the console's line wrapping undone."""
    return " ".join(output.split())


@pytest.mark.parametrize("command", ["calibrate", "adapt"])
def test_out_is_checked_before_any_work(model_file: Path, tiny_sites: Path, tmp_path: Path, command: str) -> None:
    site = tiny_sites / "site-1"
    (tmp_path / "a-file").write_text("x")
    cases = {
        str(tmp_path): "is a folder",
        str(model_file): "one of the inputs",
        str(site / "manifest.csv"): "one of the inputs",
        str(tmp_path / "a-file" / "m.pt"): "is a file, so",
    }
    for out, message in cases.items():
        before = Path(out).read_bytes() if Path(out).is_file() else None
        result = runner.invoke(app, [command, "--model", str(model_file), "--data", str(site), "--out", out])
        assert result.exit_code == 1 and message in _flat(result.output), (out, result.output)
        assert before is None or Path(out).read_bytes() == before


def test_an_unwritable_out_is_a_clean_error(model_file: Path, tiny_sites: Path) -> None:
    result = runner.invoke(
        app, ["adapt", "--model", str(model_file), "--data", str(tiny_sites / "site-1"), "--out", "/proc/fedeye/m.pt"]
    )
    assert result.exit_code == 1 and "cannot write model file /proc/fedeye/m.pt" in _flat(result.output)


@pytest.mark.parametrize(
    ("point", "message"),
    [
        ({"threshold": 0.3}, "malformed (KeyError"),
        ([0.3], "is a list, not a table"),
        ({"log_odds": float("nan"), "temperature": 1.0}, "expected finite numbers"),
        ({"log_odds": 0.0, "temperature": 0.0}, "temperature above 0"),
        ({"log_odds": 0.0, "fitted_on": 5}, "malformed (TypeError"),
    ],
)
def test_a_malformed_stored_operating_point_is_a_model_error(
    tiny_sites: Path, tmp_path: Path, point: object, message: str
) -> None:
    cfg = ModelConfig(img_size=32)
    model = tmp_path / "odd.pt"
    save_model(model, build_model(cfg), cfg, metadata={METADATA_KEY: point})
    site = str(tiny_sites / "site-1")
    for args in (
        ["evaluate"],
        ["calibrate", "--out", str(tmp_path / "c.pt")],
        ["adapt", "--out", str(tmp_path / "a.pt")],
    ):
        result = runner.invoke(app, [*args, "--model", str(model), "--data", site])
        assert result.exit_code == 1 and message in _flat(result.output) and "odd.pt" in _flat(result.output), (
            result.output
        )
    assert not (tmp_path / "c.pt").exists() and not (tmp_path / "a.pt").exists()

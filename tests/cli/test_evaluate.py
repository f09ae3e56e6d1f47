"""`fedeye evaluate` on external validation sets: test-only manifests, no split column, every split."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from fedeye.cli.main import app
from fedeye.fairness.operating_point import METADATA_KEY, ModelOperatingPoint
from fedeye.models import build_model, save_model
from fedeye.models.config import ModelConfig

runner = CliRunner()
POINT = ModelOperatingPoint(0.3, 1.5, "youden", "federation", (20, 30), 0.8, 0.75)


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cfg = ModelConfig(img_size=32)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "global-model.pt"
    save_model(path, build_model(cfg), cfg, metadata={METADATA_KEY: POINT.to_metadata()})
    return path


@pytest.fixture(scope="module")
def test_only_site(tiny_sites: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """site-1 with a split column that marks every image ``test`` (an external validation set)."""
    site = tmp_path_factory.mktemp("external") / "site"
    shutil.copytree(tiny_sites / "site-1", site)
    with (site / "manifest.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    with (site / "manifest.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=[*rows[0], "split"])
        writer.writeheader()
        writer.writerows({**r, "split": "test"} for r in rows)
    return site


def _evaluate(model: Path, site: Path, *extra: str) -> dict[str, object]:
    result = runner.invoke(app, ["evaluate", "--model", str(model), "--data", str(site), "--json", *extra])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)  # type: ignore[no-any-return]


@pytest.mark.parametrize("split", ["test", "all"])
def test_a_test_only_site_is_evaluated_on_every_image(model_file: Path, test_only_site: Path, split: str) -> None:
    report = _evaluate(model_file, test_only_site, "--split", split)
    assert report["num_examples"] == 40 and report["note"] is None


def test_a_missing_split_falls_back_to_every_image_with_a_note(model_file: Path, test_only_site: Path) -> None:
    report = _evaluate(model_file, test_only_site, "--split", "val")
    assert report["split"] == "all" and report["num_examples"] == 40
    assert "no 'val' images" in str(report["note"])


def test_a_site_without_split_column_is_evaluated_on_all_splits(model_file: Path, tiny_sites: Path) -> None:
    assert "split" not in (tiny_sites / "site-2" / "manifest.csv").read_text().splitlines()[0]
    report = _evaluate(model_file, tiny_sites / "site-2", "--split", "all")
    assert report["num_examples"] == 40


def test_metrics_are_at_the_stored_operating_point_with_intervals(model_file: Path, test_only_site: Path) -> None:
    report = _evaluate(model_file, test_only_site)
    metrics, point = report["metrics"], report["operating_point"]
    assert isinstance(metrics, dict) and isinstance(point, dict)
    assert point["stored"] and point["threshold"] == pytest.approx(POINT.threshold)
    for rate in ("sensitivity", "specificity", "balanced-accuracy", "ppv", "npv"):
        assert f"{rate}-ci-low" in metrics and f"{rate}-ci-high" in metrics
    assert metrics["temperature"] == 1.5


def test_the_table_names_the_operating_point(model_file: Path, test_only_site: Path) -> None:
    result = runner.invoke(
        app, ["evaluate", "--model", str(model_file), "--data", str(test_only_site), "--split", "val"]
    )
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())  # rich wraps long lines
    assert "no 'val' images" in text and "set by federation on 20 positive and 30" in text
    assert "balanced-accuracy" in text and "95% CI" in text


def test_a_model_file_written_before_the_bias_loads_with_bias_zero(tmp_path: Path, test_only_site: Path) -> None:
    cfg = ModelConfig(img_size=32)
    stored = {k: v for k, v in POINT.to_metadata().items() if k != "bias"}  # as written before affine calibration
    save_model(tmp_path / "old.pt", build_model(cfg), cfg, metadata={METADATA_KEY: stored})

    report = _evaluate(tmp_path / "old.pt", test_only_site)

    point, metrics = report["operating_point"], report["metrics"]
    assert isinstance(point, dict) and isinstance(metrics, dict)
    assert point["bias"] == 0.0 and metrics["bias"] == 0.0 and metrics["temperature"] == 1.5
    assert metrics["threshold"] == pytest.approx(1 / (1 + np.exp(-0.3 / 1.5)))


def test_a_model_without_a_point_keeps_the_half_threshold(tmp_path: Path, test_only_site: Path) -> None:
    cfg = ModelConfig(img_size=32)
    save_model(tmp_path / "old.pt", build_model(cfg), cfg, metadata={"round": 3})
    report = _evaluate(tmp_path / "old.pt", test_only_site)
    assert report["operating_point"]["stored"] is False and report["metrics"]["threshold"] == 0.5  # type: ignore[index]


def test_plot_writes_the_reliability_diagram_of_the_site(
    model_file: Path, test_only_site: Path, tmp_path: Path
) -> None:
    plot = tmp_path / "plots" / "reliability.png"

    result = runner.invoke(
        app, ["evaluate", "--model", str(model_file), "--data", str(test_only_site), "--plot", str(plot)]
    )

    assert result.exit_code == 0, result.output
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "reliability diagram written to" in " ".join(result.output.split())
    report = _evaluate(model_file, test_only_site)  # the bins behind it, every image (nothing leaves the site)
    reliability = report["reliability"]
    assert isinstance(reliability, dict) and reliability["after"] is not None
    assert sum(reliability["before"]["images"]) == report["num_examples"] == 40
    assert reliability["before"]["withheld"] == 0


def test_plot_with_json_keeps_stdout_json_and_a_bad_name_is_refused(
    model_file: Path, test_only_site: Path, tmp_path: Path
) -> None:
    plot = tmp_path / "r.svg"
    result = runner.invoke(
        app, ["evaluate", "--model", str(model_file), "--data", str(test_only_site), "--json", "--plot", str(plot)]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["num_examples"] == 40  # the note went to stderr
    assert "reliability diagram written" in result.stderr and plot.read_text().lstrip().startswith("<?xml")

    refused = runner.invoke(
        app, ["evaluate", "--model", str(model_file), "--data", str(test_only_site), "--plot", str(tmp_path / "r.txt")]
    )
    assert refused.exit_code == 1 and "--plot" in refused.output and not (tmp_path / "r.txt").exists()


def test_the_model_files_preprocessing_is_applied_at_a_site_that_sets_none(
    tmp_path: Path, test_only_site: Path
) -> None:
    """A model trained on CLAHE images is evaluated on CLAHE images, whatever the new site's site.toml says."""
    from fedeye.client.evaluate import open_external_site, site_images
    from fedeye.models import load_model

    cfg = ModelConfig(img_size=32, preprocess="fov-crop+clahe")
    save_model(tmp_path / "clahe.pt", build_model(cfg), cfg, metadata={})
    _, loaded, _ = load_model(tmp_path / "clahe.pt")
    site = open_external_site(test_only_site)

    images, _, _ = site_images(site, "all", loaded)
    own, _, _ = site_images(site, "all", ModelConfig(img_size=32))

    assert loaded.preprocess == "fov-crop+clahe" and site.info.preprocess == "none"
    assert not torch.equal(images[0][0], own[0][0])
    assert _evaluate(tmp_path / "clahe.pt", test_only_site)["metrics"]  # and `fedeye evaluate` runs with it


@pytest.mark.parametrize("command", ["evaluate", "calibrate"])
def test_a_site_with_labels_the_model_has_no_output_for_is_refused(
    model_file: Path, tiny_sites: Path, tmp_path: Path, command: str
) -> None:
    site = tmp_path / "four-classes"
    shutil.copytree(tiny_sites / "site-1", site)
    (site / "site.toml").write_text('name = "four"\nlabel_names = ["a", "b", "c", "d"]\n')
    lines = (site / "manifest.csv").read_text().splitlines()
    header, first, rest = lines[0], lines[1].split(","), lines[2:]
    first[header.split(",").index("label")] = "3"
    (site / "manifest.csv").write_text("\n".join([header, ",".join(first), *rest]) + "\n")
    out = ["--out", str(tmp_path / "c.pt")] if command == "calibrate" else []

    result = runner.invoke(app, [command, "--model", str(model_file), "--data", str(site), "--split", "all", *out])

    assert result.exit_code == 1 and "has labels [3]" in " ".join(result.output.split())
    assert not (tmp_path / "c.pt").exists()

"""benchmarks/dp_utility.py: runs of different training settings are never averaged together."""

from __future__ import annotations

import csv
from pathlib import Path
from types import ModuleType

import pytest

from tests.benchmarks.conftest import load_script


@pytest.fixture(scope="module")
def dp_utility() -> ModuleType:
    return load_script("dp_utility")


def _outcome(module: ModuleType, *, image_size: int, seed: int, auc: float) -> object:
    return module.Outcome(
        strategy="fedavg",
        mode="full",
        backbone="scratch",
        epsilon="8",
        image_size=image_size,
        rounds=4,
        local_epochs=1,
        dp_batch=64,
        lr=1e-3,
        lr_schedule="constant",
        pool="cls",
        augment=True,
        seed=seed,
        unseen="",
        auc=auc,
        bacc=0.5,
        spent=8.0,
        sigma=0.9,
        seconds=1.0,
    )


def test_summary_keeps_image_sizes_apart(dp_utility: ModuleType, tmp_path: Path) -> None:
    runs, summary = tmp_path / "runs.csv", tmp_path / "summary.csv"
    for image_size, seed, auc in [(32, 0, 0.5), (32, 1, 0.6), (64, 0, 0.9)]:
        dp_utility.append_run(runs, _outcome(dp_utility, image_size=image_size, seed=seed, auc=auc))

    rows = dp_utility.summarize(runs, summary)

    assert [(r["image_size"], r["auc_mean"], r["runs"]) for r in rows] == [("64", "0.900", "1"), ("32", "0.550", "2")]
    with summary.open() as handle:
        assert [r["image_size"] for r in csv.DictReader(handle)] == ["64", "32"]


def test_learning_rate_is_written_in_full(dp_utility: ModuleType, tmp_path: Path) -> None:
    runs = tmp_path / "runs.csv"
    outcome = _outcome(dp_utility, image_size=64, seed=0, auc=0.9)
    dp_utility.append_run(runs, dp_utility.Outcome(**{**vars(outcome), "lr": 2e-5}))

    with runs.open() as handle:
        assert next(csv.DictReader(handle))["lr"] == "2e-05"


def test_append_refuses_a_runs_file_with_other_columns(dp_utility: ModuleType, tmp_path: Path) -> None:
    runs = tmp_path / "runs.csv"
    runs.write_text("strategy,mode,backbone,epsilon,seed,unseen,auc,bacc,spent,sigma,seconds\n")

    with pytest.raises(SystemExit, match="has the columns"):
        dp_utility.append_run(runs, _outcome(dp_utility, image_size=64, seed=0, auc=0.9))


def test_summary_refuses_runs_without_a_setting(dp_utility: ModuleType, tmp_path: Path) -> None:
    runs = tmp_path / "runs.csv"
    runs.write_text("strategy,mode,backbone,epsilon,seed,unseen,auc,bacc,spent,sigma,seconds\n")

    with pytest.raises(SystemExit, match="lacks the setting columns"):
        dp_utility.summarize(runs, tmp_path / "summary.csv")

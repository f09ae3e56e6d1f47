"""A federated run over sites with a built-in group bias reports that disparity."""

from __future__ import annotations

import csv
import random
from pathlib import Path

import pytest

from fedeye.compose.simulation import simulate
from fedeye.config import RunConfig
from fedeye.fairness.report import write_report
from fedeye.server.report_data import build_report_data
from fedeye.server.store import RunStore
from fedeye.sites.split import split_patients
from fedeye.sites.synth import synthesize_sites

pytestmark = pytest.mark.slow


def _scramble_test_labels_of_women(site: Path, rng: random.Random) -> None:
    """The bias: women's test labels carry no signal, so their AUC must come out near chance."""
    path = site / "manifest.csv"
    rows = list(csv.DictReader(path.open()))
    split = split_patients([r["patient_id"] for r in rows])
    for row in rows:
        if row["sex"] == "F" and split[row["patient_id"]] == "test":
            row["label"] = str(rng.randint(0, 1))
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (site / "fedeye-site.toml").write_text("[privacy]\nmin_group_size = 5\n")


def test_group_bias_shows_up_in_stored_metrics_and_report(tmp_path: Path) -> None:
    sites = synthesize_sites(tmp_path / "sites", sites=3, images_per_site=160, size=64, seed=11)
    rng = random.Random(0)
    for site in sites:
        _scramble_test_labels_of_women(site, rng)
    cfg = RunConfig.model_validate(
        {
            "name": "bias",
            "data": {"root": str(tmp_path / "sites")},
            "training": {"rounds": 3, "local_epochs": 3},
            "output": {"dir": str(tmp_path / "out"), "db": str(tmp_path / "out" / "fedeye.db")},
        }
    )

    result = simulate(cfg)

    detail = RunStore(result.store_url).get_run(result.run_id)
    tested = [m for m in detail.site_metrics if m.phase == "test"]
    assert len(tested) == 3
    men = [m.metrics["group.sex.m.auc"] for m in tested]
    women = [m.metrics["group.sex.f.auc"] for m in tested]
    assert sum(men) / 3 > 0.8, men
    assert sum(men) / 3 - sum(women) / 3 > 0.2, (men, women)
    for m in tested:
        assert m.metrics["fair.sex.es-auc"] < m.metrics["auc"]
        assert m.metrics["fair.sex.gap"] == pytest.approx(
            abs(m.metrics["group.sex.m.auc"] - m.metrics["group.sex.f.auc"])
        )

    paths = write_report(build_report_data(detail), tmp_path / "report")
    html = paths.html.read_text()
    assert "sex" in html and "ES-AUC" in html

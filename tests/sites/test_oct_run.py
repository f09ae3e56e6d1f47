"""An OCT federation runs like a fundus one (synthetic OCT B-scan sites)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedeye.compose.simulation import simulate
from fedeye.config import RunConfig
from fedeye.server.store import RunStore
from fedeye.sites.synth import synthesize_sites


@pytest.mark.slow
def test_oct_sites_train_and_report_like_fundus(tmp_path: Path) -> None:
    synthesize_sites(tmp_path / "sites", sites=2, images_per_site=60, modality="oct", seed=5, size=32)
    cfg = RunConfig.model_validate(
        {
            "name": "oct",
            "data": {"root": str(tmp_path / "sites")},
            "model": {"img_size": 32},
            "training": {"rounds": 2, "local_epochs": 2, "batch_size": 16},
            "output": {"dir": str(tmp_path / "out"), "db": str(tmp_path / "out" / "fedeye.db")},
        }
    )

    result = simulate(cfg)

    detail = RunStore(result.store_url).get_run(result.run_id)
    assert detail.run.status == "finished" and detail.run.rounds_done == 2
    tested = [m for m in detail.site_metrics if m.phase == "test"]
    assert len(tested) == 2 and all(m.status == "ok" and m.num_examples > 0 for m in tested)
    assert result.model_path.is_file()


@pytest.mark.slow
def test_dicom_oct_sites_federate(tmp_path: Path) -> None:
    """Ophthalmic Tomography DICOM volumes (middle B-scan) as two federated sites."""
    from tests.sites.conftest import write_dicom_site

    for name in ("site-a", "site-b"):
        (tmp_path / "sites" / name).mkdir(parents=True)
        write_dicom_site(tmp_path / "sites" / name, patients=12, oct=True)
    cfg = RunConfig.model_validate(
        {
            "name": "dicom-oct",
            "data": {"root": str(tmp_path / "sites")},
            "model": {"img_size": 32},
            "training": {"rounds": 1, "batch_size": 8},
            "output": {"dir": str(tmp_path / "out"), "db": str(tmp_path / "out" / "fedeye.db")},
        }
    )

    result = simulate(cfg)

    detail = RunStore(result.store_url).get_run(result.run_id)
    assert detail.run.status == "finished"
    assert (
        sorted(m.phase for m in detail.site_metrics if m.status == "ok")
        == ["evaluate"] * 2 + ["test"] * 2 + ["train"] * 2
    )

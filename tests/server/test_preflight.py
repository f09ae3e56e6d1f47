"""The simulation's pre-flight site check agrees with `fedeye site check`."""

from __future__ import annotations

from pathlib import Path

from fedeye.config import parse_run_config
from fedeye.server.preflight import simulation_sites
from fedeye.sites.check import check_site
from tests.sites.conftest import write_dicom_site


def test_warnings_that_site_check_passes_do_not_block_a_simulation(tmp_path: Path) -> None:
    for name in ("site-1", "site-2"):
        write_dicom_site(tmp_path / "sites" / name, identifying=True)
    report = check_site(tmp_path / "sites" / "site-1")
    cfg = parse_run_config({"data": {"root": str(tmp_path / "sites")}})

    dirs = simulation_sites(cfg)

    assert report.ok and {p.severity for p in report.problems} == {"warning"}
    assert [d.name for d in dirs] == ["site-1", "site-2"]

"""check_site summaries and rendering."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from rich.console import Console

from fedeye.cli.site_check import print_check_report
from fedeye.errors import SiteDataError
from fedeye.sites.check import check_site

from .conftest import SiteWriter, valid_rows


def _render(report: object) -> str:
    buffer = io.StringIO()
    print_check_report(report, target=Console(file=buffer, width=200))  # type: ignore[arg-type]
    return buffer.getvalue()


def test_check_summarises_a_valid_site(make_site: SiteWriter) -> None:
    report = check_site(make_site())

    assert report.ok and report.format_name == "manifest"
    assert report.summary is not None
    assert report.summary.num_samples == 12 and report.summary.num_patients == 6
    assert report.summary.per_label == {"normal": 6, "glaucoma": 6}
    assert sum(report.summary.per_split.values()) == 12
    assert report.summary.attribute_coverage["eye"] == 1.0
    assert report.summary.attribute_coverage["race"] == 0.0
    assert report.summary.image_size_common == (16, 16)
    assert "OK" in _render(report)


def test_check_reports_problems_without_raising(make_site: SiteWriter) -> None:
    rows = valid_rows()
    rows[3]["label"] = 5

    report = check_site(make_site(rows))
    text = _render(report)

    assert not report.ok
    assert [p.row for p in report.problems] == [5]
    assert "1 problem" in text and "label 5" in text


def test_check_raises_when_no_format_opens(tmp_path: Path) -> None:
    with pytest.raises(SiteDataError):
        check_site(tmp_path)


def test_check_summarises_synthetic_site(synth_fundus: list[Path]) -> None:
    report = check_site(synth_fundus[0])

    assert report.ok, report.problems
    assert report.summary is not None and report.summary.num_samples == 150
    assert all(v == 1.0 for v in report.summary.attribute_coverage.values())

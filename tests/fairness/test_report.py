"""The fairness report, written from a real (SQLite) run store filled with fake rows."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from fedeye.fairness.operating_point import Calibration
from fedeye.fairness.reliability import RunReliability, reliability_diagram
from fedeye.fairness.report import ReportError, write_report
from fedeye.fairness.report_data import PrivacyEntry, ReportData, RunInfo, SiteResult
from fedeye.server.report_data import load_report_data
from fedeye.server.store import RunStore
from tests.fairness.conftest import SITE_NAMES, fill_store, random_site


def test_html_is_self_contained_and_names_every_site(store: RunStore, tmp_path: Path) -> None:
    data = load_report_data(store, fill_store(store))
    paths = write_report(data, tmp_path / "report")

    page = paths.html.read_text()
    assert not re.search(r"(src|href)\s*=\s*[\"']?\s*(https?:)?//", page)  # nothing fetched from a network
    assert "<link" not in page and "<script" not in page
    assert page.count('src="data:image/png;base64,') == len(paths.images) >= 3
    for site in SITE_NAMES:
        assert site.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;") in page
    assert "<Eye>" not in page  # escaped
    for heading in ("Per-site results", "Across sites", "Groups within each site", "Privacy spent", "Plots"):
        assert heading in page
    assert "under min size" in page  # the small White group is suppressed at every site


def test_markdown_and_pngs_are_written_beside_it(store: RunStore, tmp_path: Path) -> None:
    paths = write_report(load_report_data(store, fill_store(store)), tmp_path / "out")
    text = paths.markdown.read_text()
    assert {p.name for p in paths.images} >= {"auc-over-rounds.png", "es-auc-over-rounds.png", "group-auc-sex.png"}
    for image in paths.images:
        assert image.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({image.name})" in text
    assert (
        "| site | status | images | AUC |" in text and "final model on each site's held-out test split" in text.lower()
    )
    assert not list(tmp_path.glob(".out.tmp-*"))  # staging folder cleaned up


def test_missing_data_gives_notes_not_errors(store: RunStore, tmp_path: Path) -> None:
    run_id = fill_store(store, with_groups=False, with_test=False, with_privacy=False)
    paths = write_report(load_report_data(store, run_id), tmp_path / "report")
    page = paths.html.read_text()
    assert "Per-group metrics not recorded" in page and "Privacy ledger not recorded" in page
    assert "Reliability diagram not recorded" in page and not list(paths.directory.glob("reliability-*.png"))
    assert "evaluation of round 3 (no test phase recorded)" in page


def test_run_without_any_results(store: RunStore, tmp_path: Path) -> None:
    run_id = store.create_run(name="empty", strategy="fedavg", config={}, num_rounds=3, num_sites=2)
    store.finish_run(run_id, status="failed", error="no site could train in round 1")
    paths = write_report(load_report_data(store, run_id), tmp_path / "report")
    page = paths.html.read_text()
    assert "Site results not recorded" in page and "no site could train" in page
    assert paths.images == ()


def test_existing_file_is_refused_and_existing_folder_is_updated(store: RunStore, tmp_path: Path) -> None:
    data = load_report_data(store, fill_store(store))
    target = tmp_path / "taken"
    target.write_text("keep me")
    with pytest.raises(ReportError, match="existing file"):
        write_report(data, target)
    assert target.read_text() == "keep me"

    folder = tmp_path / "again"
    write_report(data, folder)
    (folder / "notes.txt").write_text("mine")
    paths = write_report(data, folder)
    assert paths.html.is_file() and (folder / "notes.txt").read_text() == "mine"


def test_failure_while_rendering_leaves_nothing(
    store: RunStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fedeye.fairness import report

    def broken(*_args: object) -> str:
        raise RuntimeError("bug")

    monkeypatch.setattr(report, "render_markdown", broken)
    with pytest.raises(RuntimeError):
        write_report(load_report_data(store, fill_store(store)), tmp_path / "report")
    assert not (tmp_path / "report").exists() and not list(tmp_path.glob(".report.tmp-*"))


def test_report_from_plain_data_escapes_a_hostile_site_name(tmp_path: Path) -> None:
    # Prepare: no store at all, a site name that is a script
    hostile = "<script>alert('x')</script>"
    run = RunInfo(
        run_id="r-1", name="<b>run</b>", status="finished", strategy="fedavg", num_sites=2, rounds_done=1, num_rounds=1
    )
    results = tuple(
        SiteResult(site, phase, 1, "ok", 40, {"auc": auc, "accuracy": 0.7})
        for site, auc in ((hostile, 0.6), ("plain", 0.8))
        for phase in ("evaluate", "test")
    )
    privacy = (PrivacyEntry(hostile, "site", 1, 1.5, 1e-5, 8.0, "ok"),)

    # Execute
    paths = write_report(ReportData(run=run, site_results=results, privacy=privacy), tmp_path / "report")

    # Assert: escaped everywhere (table cells, plot captions), same sections as before
    page = paths.html.read_text()
    assert "<script" not in page and "<b>run</b>" not in page
    assert "&lt;script&gt;alert(" in page and "&lt;b&gt;run&lt;/b&gt;" in page
    headings = re.findall(r"<h([12])>(.*?)</h\1>", page)
    assert [h for _, h in headings][1:] == [
        "Run",
        "Per-site results",
        "Across sites",
        "Groups within each site",
        "Privacy spent",
        "Plots",
    ]
    assert hostile in paths.markdown.read_text()  # Markdown is plain text, not a page


def test_site_table_at_the_operating_point_shows_intervals_and_calibration(tmp_path: Path) -> None:
    from fedeye.fairness.report import build_sections
    from fedeye.server.report_data import build_report_data

    store = RunStore(f"sqlite:///{tmp_path / 'op.db'}")
    run_id = store.create_run(name="op", strategy="fedavg", config={}, num_rounds=1, num_sites=1)
    metrics = {"auc": 0.9, "threshold": 0.42, "temperature": 1.7, "bias": -0.3, "ece": 0.2, "ece-calibrated": 0.05}
    for rate in ("sensitivity", "specificity", "balanced-accuracy", "ppv", "npv"):
        metrics.update({rate: 0.8, f"{rate}-ci-low": 0.7, f"{rate}-ci-high": 0.9})
    store.record_site_metrics(
        run_id, server_round=1, phase="test", site="Riverside", node_id=3, num_examples=50, metrics=metrics
    )

    sites = next(s for s in build_sections(build_report_data(store.get_run(run_id))) if s.title == "Per-site results")

    table = sites.blocks[-1]
    assert "balanced accuracy" in table.header and "ECE calibrated" in table.header  # type: ignore[union-attr]
    assert table.rows[0][1] == "0.800 [0.700, 0.900]" and "p ≥ 0.420" in table.caption  # type: ignore[union-attr]
    assert "bias -0.300, temperature 1.700" in table.caption  # type: ignore[union-attr]


def test_the_reliability_diagram_is_drawn_pooled_and_per_site(store: RunStore, tmp_path: Path) -> None:
    # Prepare: the filled run, with two sites' final-test bins kept with it (one bin withheld at each)
    run_id = fill_store(store)
    point = Calibration(bias=0.1, temperature=1.4)
    sites = {name: random_site(7 + k) for k, name in enumerate(SITE_NAMES[:2])}
    diagrams = {name: reliability_diagram(lab, pr, point, min_group_size=15) for name, (lab, pr, _) in sites.items()}
    reliability = RunReliability.from_sites(diagrams)
    store.record_reliability(run_id, reliability.to_json())

    # Execute
    paths = write_report(load_report_data(store, run_id), tmp_path / "report")

    # Assert: both figures written and embedded, the caption counts the withheld images
    names = {image.name for image in paths.images}
    assert {"reliability-pooled.png", "reliability-sites.png"} <= names
    page = paths.html.read_text()
    assert "Reliability of the final model" in page and "Reliability diagram not recorded" not in page
    assert page.count('src="data:image/png;base64,') == len(paths.images)
    withheld = reliability.pooled.before.withheld
    assert withheld > 0 and f"{withheld} images were in bins with fewer images" in page
    assert "](reliability-pooled.png)" in paths.markdown.read_text()

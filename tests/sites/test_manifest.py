"""ManifestSite: one test per kind of bad input, each locating the problem."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedeye.errors import ConfigError, Problem, SiteDataError
from fedeye.sites.check import check_site
from fedeye.sites.manifest import ManifestSite

from .conftest import SiteWriter, valid_rows


def _only(problems: list[Problem], field: str) -> list[Problem]:
    return [p for p in problems if p.field == field]


def test_valid_site_has_no_problems(make_site: SiteWriter) -> None:
    site = ManifestSite(make_site())

    samples = site.samples()

    assert site.problems() == []
    assert len(samples) == 12
    assert {s.split for s in samples} == {"train", "val", "test"}
    assert samples[0].row == 2 and samples[0].attrs["eye"] == "OD"


def test_missing_column_is_named(make_site: SiteWriter) -> None:
    rows = [{k: v for k, v in r.items() if k != "patient_id"} for r in valid_rows()]

    problems = ManifestSite(make_site(rows)).problems()

    [problem] = _only(problems, "patient_id")
    assert problem.row == 1 and "patient_id" in problem.message and problem.fix


def test_empty_manifest(make_site: SiteWriter) -> None:
    root = make_site([])
    (root / "manifest.csv").write_text("", encoding="utf-8")

    [problem] = ManifestSite(root).problems()

    assert "empty" in problem.message


def test_missing_image_gives_row(make_site: SiteWriter) -> None:
    root = make_site()
    (root / "images" / "p2_OD.png").unlink()

    [problem] = _only(ManifestSite(root).problems(), "image")

    assert problem.row == 6 and "not found" in problem.message


def test_unreadable_image_gives_row(make_site: SiteWriter) -> None:
    root = make_site()
    (root / "images" / "p0_OS.png").write_bytes(b"this is not a png")

    [problem] = _only(ManifestSite(root).problems(), "image")

    assert problem.row == 3 and "cannot read" in problem.message


def test_truncated_image_is_unreadable(make_site: SiteWriter) -> None:
    root = make_site()
    path = root / "images" / "p1_OD.png"
    path.write_bytes(path.read_bytes()[:40])

    [problem] = _only(ManifestSite(root).problems(), "image")

    assert problem.row == 4


@pytest.mark.parametrize("label", ["2", "-1", "x", "1.5"])
def test_bad_label_gives_row(make_site: SiteWriter, label: str) -> None:
    rows = valid_rows()
    rows[4]["label"] = label

    [problem] = _only(ManifestSite(make_site(rows)).problems(), "label")

    assert problem.row == 6 and "label" in problem.message and "0..1" in problem.fix


def test_label_range_follows_site_toml(make_site: SiteWriter) -> None:
    rows = valid_rows()
    rows[0]["label"] = 2
    toml = 'label_names = ["normal", "suspect", "glaucoma"]\n'

    assert ManifestSite(make_site(rows, toml=toml)).problems() == []


def test_patient_in_two_splits_gives_row(make_site: SiteWriter) -> None:
    rows = valid_rows(split=True)
    rows[1]["split"] = "test"  # p0's second eye; first eye is in train

    [problem] = _only(ManifestSite(make_site(rows)).problems(), "split")

    assert problem.row == 3 and "p0" in problem.message and "line 2" in problem.message


def test_invalid_split_value_gives_row(make_site: SiteWriter) -> None:
    rows = valid_rows(split=True)
    rows[0]["split"] = "training"
    rows[1]["split"] = "training"

    problems = _only(ManifestSite(make_site(rows)).problems(), "split")

    assert [p.row for p in problems] == [2, 3]


def test_empty_split_is_named(make_site: SiteWriter) -> None:
    rows = [r for r in valid_rows(split=True) if r["split"] != "val"]

    [problem] = _only(ManifestSite(make_site(rows)).problems(), "split")

    assert "'val'" in problem.message and problem.row is None


def test_too_few_patients_for_automatic_split(make_site: SiteWriter) -> None:
    problems = ManifestSite(make_site(valid_rows(patients=2))).problems()

    assert any("'test'" in p.message for p in problems)


@pytest.mark.parametrize(("field", "value"), [("eye", "left"), ("sex", "X"), ("age", "old"), ("age", "200")])
def test_bad_attributes_give_row(make_site: SiteWriter, field: str, value: str) -> None:
    rows = valid_rows()
    rows[2][field] = value

    [problem] = _only(ManifestSite(make_site(rows)).problems(), field)

    assert problem.row == 4


def test_all_problems_are_collected(make_site: SiteWriter) -> None:
    rows = valid_rows()
    rows[0]["label"] = 7
    rows[3]["age"] = "n/a"
    root = make_site(rows)
    (root / "images" / "p5_OS.png").unlink()

    problems = ManifestSite(root).problems()

    assert sorted(p.row for p in problems if p.row) == [2, 5, 13]


def test_samples_raises_with_every_problem(make_site: SiteWriter) -> None:
    rows = valid_rows()
    rows[0]["label"] = 7
    rows[1]["label"] = 9

    with pytest.raises(SiteDataError) as caught:
        ManifestSite(make_site(rows)).samples()

    assert [p.row for p in caught.value.problems] == [2, 3]


def test_bad_site_toml_value_names_file_and_field(make_site: SiteWriter) -> None:
    root = make_site(toml='modality = "xray"\n')
    site = ManifestSite(root)

    with pytest.raises(ConfigError, match="site.toml.*modality"):
        _ = site.info
    [problem] = site.problems()
    assert problem.field == "modality" and problem.file.endswith("site.toml")


def test_unknown_site_toml_key_is_reported(make_site: SiteWriter) -> None:
    root = make_site(toml='name = "A"\nlabels = ["a", "b"]\n')

    [problem] = check_site(root).problems

    assert problem.field == "labels" and "label_names" in problem.fix


def test_unparsable_site_toml(make_site: SiteWriter) -> None:
    root = make_site(toml="name = \n")

    [problem] = ManifestSite(root).problems()

    assert "TOML" in problem.message


def test_site_toml_defaults(make_site: SiteWriter) -> None:
    root = make_site()

    info = ManifestSite(root).info

    assert (info.name, info.modality, info.task) == (root.name, "fundus", "glaucoma")


def test_read_image_shapes(make_site: SiteWriter) -> None:
    site = ManifestSite(make_site())
    oct_site = ManifestSite(make_site(toml='modality = "oct"\n'))

    rgb = site.read_image(site.samples()[0])
    gray = oct_site.read_image(oct_site.samples()[0])

    assert rgb.shape == (16, 16, 3) and rgb.dtype.name == "uint8"
    assert gray.shape == (16, 16)


def test_header_only_manifest(tmp_path: Path) -> None:
    (tmp_path / "manifest.csv").write_text("image,label,patient_id\n", encoding="utf-8")

    [problem] = ManifestSite(tmp_path).problems()

    assert "no images" in problem.message

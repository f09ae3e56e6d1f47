"""FairVision-style npz sites: labels per task, attribute codes, OCT frames, bad files."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fedeye.sites.base import open_site
from fedeye.sites.npz_fairvision import FairVisionSite, decode_label
from tests.sites.conftest import write_fairvision_site, write_fairvision_subject


def test_folders_give_splits_and_codes_map_to_attributes(tmp_path: Path) -> None:
    site = open_site(write_fairvision_site(tmp_path / "s"))
    samples = site.samples()
    first = next(s for s in samples if s.patient_id == "data_000001")
    assert isinstance(site, FairVisionSite) and site.info.label_names == ["normal", "glaucoma"]
    assert (first.split, first.label) == ("train", 1)
    assert first.attrs == {"race": "Black", "sex": "M", "ethnicity": "Non-Hispanic", "age": "61.5"}
    assert site.read_image(first).shape == (20, 24, 3)
    assert site.image_size(first) == (24, 20)


def test_oct_uses_middle_bscan_scaled_to_uint8(tmp_path: Path) -> None:
    site = open_site(write_fairvision_site(tmp_path / "s", toml='modality = "oct"\n'))
    sample = site.samples()[0]
    image = site.read_image(sample)
    assert sample.image.endswith("#2") and image.shape == (16, 20) and image.dtype == np.uint8
    assert image.min() == 0 and image.max() == 255


def test_amd_task_reads_condition_strings(tmp_path: Path) -> None:
    write_fairvision_site(tmp_path / "s", subjects=5, toml='task = "amd"\n')
    write_fairvision_subject(
        tmp_path / "s" / "test" / "data_999999.npz", dr_subtype="wet.amd.inactive.scar", drop="glaucoma"
    )
    site = open_site(tmp_path / "s")
    # the five glaucoma-only subjects lack an AMD label: each is reported by name
    missing = [p for p in site.problems() if p.field == "amd_condition"]
    assert len(missing) == 5 and all(p.file.endswith(".npz") and "missing" in p.message for p in missing)
    assert [s.label for s in site.scan().samples] == [3]
    assert site.info.label_names == ["normal", "early", "intermediate", "late"]
    assert decode_label("severe.npdr", "dr") == 1 and decode_label(1.0, "glaucoma") == 1


def test_missing_field_and_wrong_shape_name_the_file(tmp_path: Path) -> None:
    root = write_fairvision_site(tmp_path / "s")
    write_fairvision_subject(root / "train" / "data_000100.npz", drop="slo_fundus")
    write_fairvision_subject(root / "train" / "data_000101.npz", slo_fundus=np.zeros((4, 4, 4, 4), np.uint8))
    (root / "train" / "data_000102.npz").write_bytes(b"PK\x03\x04 truncated")
    problems = {Path(p.file).name: p for p in open_site(root).problems()}
    assert problems["data_000100.npz"].field == "slo_fundus" and "missing" in problems["data_000100.npz"].message
    assert problems["data_000101.npz"].field == "slo_fundus" and "(4, 4, 4, 4)" in problems["data_000101.npz"].message
    assert "cannot read npz" in problems["data_000102.npz"].message


# ------------------------------------------------------------- hostile input (issue 14)


def test_label_vector_and_race_string_are_reported_not_raised(tmp_path: Path) -> None:
    root = write_fairvision_site(tmp_path / "s")
    write_fairvision_subject(root / "train" / "data_000100.npz", glaucoma=np.array([0, 1, 0]))
    write_fairvision_subject(root / "train" / "data_000101.npz", race="White")

    problems = {Path(p.file).name: p for p in open_site(root).problems()}

    assert problems["data_000100.npz"].field == "glaucoma" and "shape (3,)" in problems["data_000100.npz"].message
    assert problems["data_000101.npz"].field == "race" and "'White'" in problems["data_000101.npz"].message


def test_decode_label_refuses_non_numbers() -> None:
    assert decode_label(b"1", "glaucoma") is None
    assert decode_label(float("nan"), "glaucoma") is None
    assert decode_label(1.7, "glaucoma") is None
    assert decode_label(True, "glaucoma") == 1

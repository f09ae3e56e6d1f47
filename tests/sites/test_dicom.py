"""DICOM sites: photometric variants, OCT frames, header attributes, warnings, bad files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydicom.pixels import convert_color_space

from fedeye.sites.base import open_site
from fedeye.sites.check import check_site
from fedeye.sites.dicom import DicomSite, parse_dicom_age
from tests.sites.conftest import OPT, write_dicom, write_dicom_site


def _single(tmp_path: Path, pixels: np.ndarray, **kwargs: object) -> DicomSite:
    write_dicom(tmp_path / "a.dcm", pixels, **kwargs)  # type: ignore[arg-type]
    (tmp_path / "labels.csv").write_text("file,label,split\na.dcm,1,train\n")
    return DicomSite(tmp_path)


def test_rgb_photograph_reads_back_exactly(tmp_path: Path) -> None:
    pixels = np.random.default_rng(0).integers(0, 255, (10, 14, 3), dtype=np.uint8)
    site = _single(tmp_path, pixels)
    assert np.array_equal(site.read_image(site.scan().samples[0]), pixels)


def test_ybr_full_is_converted_to_rgb(tmp_path: Path) -> None:
    rgb = np.random.default_rng(1).integers(0, 255, (10, 14, 3), dtype=np.uint8)
    site = _single(tmp_path, convert_color_space(rgb, "RGB", "YBR_FULL"), photometric="YBR_FULL")
    decoded = site.read_image(site.scan().samples[0]).astype(int)
    assert np.abs(decoded - rgb).max() <= 3


def test_monochrome2_16bit_scaled_to_uint8_rgb(tmp_path: Path) -> None:
    gray = np.array([[0, 65535], [32768, 65535]], dtype=np.uint16)
    site = _single(tmp_path, gray)
    image = site.read_image(site.scan().samples[0])
    assert image.shape == (2, 2, 3) and image.dtype == np.uint8
    assert image[0, 0, 0] == 0 and image[0, 1, 0] == 255 and image[1, 0, 0] == 128


def test_oct_volume_gives_middle_bscan_or_all_frames(tmp_path: Path) -> None:
    middle = write_dicom_site(tmp_path / "mid", oct=True)
    every = write_dicom_site(tmp_path / "all", oct=True, toml='modality = "oct"\noct_frames = "all"\n')
    site = open_site(middle)
    sample = site.samples()[0]
    assert sample.image.endswith("#2") and site.read_image(sample).shape == (12, 16)
    assert len(open_site(every).samples()) == 5 * len(site.samples())


def test_oct_file_in_fundus_site_is_an_error(tmp_path: Path) -> None:
    write_dicom(tmp_path / "a.dcm", np.zeros((3, 4, 4), np.uint8), sop_class=OPT)
    (tmp_path / "labels.csv").write_text("file,label\na.dcm,0\n")
    errors = [p for p in DicomSite(tmp_path).problems() if p.severity == "error"]
    assert [p.field for p in errors] == ["SOPClassUID"] and "modality" in errors[0].fix


def test_labels_by_uid_and_attributes_from_header(tmp_path: Path) -> None:
    uid = write_dicom(tmp_path / "x" / "a.dcm", np.zeros((4, 4, 3), np.uint8), patient_id="H-9", sex="M", age="006M")
    (tmp_path / "labels.csv").write_text(f"sop_instance_uid,label,race,split\n{uid},1,Black,test\n")
    [sample] = DicomSite(tmp_path).scan().samples
    assert (sample.patient_id, sample.label, sample.image) == ("H-9", 1, "x/a.dcm")
    assert sample.attrs == {"sex": "M", "age": "0.50", "race": "Black"}
    assert parse_dicom_age("067Y") == "67" and parse_dicom_age("bad") == ""


def test_identifying_fields_warn_but_site_passes(tmp_path: Path) -> None:
    report = check_site(write_dicom_site(tmp_path / "s", identifying=True))
    assert report.ok and report.problems
    assert {p.severity for p in report.problems} == {"warning"}
    assert {p.field for p in report.problems} == {"PatientName", "PatientBirthDate", "InstitutionName"}
    assert all("never enters an outgoing message" in p.message for p in report.problems)
    assert open_site(tmp_path / "s").samples()  # warnings do not block training


@pytest.mark.parametrize("cut", [40, 400])
def test_truncated_file_is_a_problem_naming_it(tmp_path: Path, cut: int) -> None:
    root = write_dicom_site(tmp_path / "s")
    bad = root / "p1_OS.dcm"
    bad.write_bytes(bad.read_bytes()[:-cut] if cut == 40 else bad.read_bytes()[:cut])
    report = check_site(root)
    errors = [p for p in report.problems if p.severity == "error"]
    assert not report.ok and any(p.file == str(bad) for p in errors)
    assert any(word in p.message for p in errors for word in ("truncated", "not a readable DICOM", "missing"))


def test_label_row_without_file_and_bad_label(tmp_path: Path) -> None:
    root = write_dicom_site(tmp_path / "s")
    with (root / "labels.csv").open("a") as handle:
        handle.write("ghost.dcm,0,OD\n")
    text = (root / "labels.csv").read_text().replace("p0_OD.dcm,0", "p0_OD.dcm,7")
    (root / "labels.csv").write_text(text)
    fields = sorted(p.field or "" for p in DicomSite(root).problems() if p.severity == "error")
    assert fields == ["file", "label"]


def test_values_outside_bits_stored_are_refused_not_clipped() -> None:
    import pytest

    from fedeye.errors import ImageDataError
    from fedeye.sites.dicom import to_uint8

    with pytest.raises(ImageDataError, match="outside 0..4095"):
        to_uint8(np.array([[0, 5000]], np.uint16), bits_stored=12, monochrome1=False)
    with pytest.raises(ImageDataError, match="-3"):
        to_uint8(np.array([[-3, 10]], np.int16), bits_stored=12, monochrome1=False)
    assert to_uint8(np.array([[0, 4095]], np.uint16), bits_stored=12, monochrome1=False).tolist() == [[0, 255]]


def test_a_bits_stored_beyond_bits_allocated_is_refused(tmp_path: Path) -> None:
    import pydicom

    site = write_dicom_site(tmp_path / "site")
    ds = pydicom.dcmread(site / "p0_OD.dcm")
    ds.BitsStored = 40
    ds.save_as(site / "p0_OD.dcm")

    problems = [p for p in DicomSite(site).problems() if p.field == "BitsStored"]

    assert len(problems) == 1 and "BitsStored 40 with BitsAllocated 8" in problems[0].message


def test_a_dcm_symlink_leading_outside_the_site_is_refused(tmp_path: Path) -> None:
    elsewhere = write_dicom_site(tmp_path / "elsewhere")
    site = write_dicom_site(tmp_path / "site")
    (site / "extra.dcm").symlink_to(elsewhere / "p0_OD.dcm")

    [problem] = [p for p in DicomSite(site).problems() if p.severity == "error"]

    assert problem.file == str(site / "extra.dcm") and "leads outside the site folder" in problem.message


def test_a_palette_colour_image_is_refused_not_read_as_gray(tmp_path: Path) -> None:
    import pydicom

    site = write_dicom_site(tmp_path / "site")
    ds = pydicom.dcmread(site / "p0_OD.dcm")
    ds.PhotometricInterpretation = "PALETTE COLOR"
    ds.save_as(site / "p0_OD.dcm")

    [problem] = [p for p in DicomSite(site).problems() if p.field == "PhotometricInterpretation"]

    assert "'PALETTE COLOR' is not read by FedEye" in problem.message

"""ManifestSite: one test per kind of bad input, each locating the problem."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

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


def test_site_toml_with_a_byte_order_mark_is_read(make_site: SiteWriter) -> None:
    root = make_site()
    (root / "site.toml").write_bytes(b'\xef\xbb\xbfname = "Notepad Eye Clinic"\n')

    site = ManifestSite(root)

    assert site.problems() == [] and site.info.name == "Notepad Eye Clinic"


@pytest.mark.parametrize(
    ("make_toml", "message"),
    [
        (lambda path: path.write_text("x = " + "[" * 5000 + "]" * 5000 + "\n"), "nested too deeply"),
        (lambda path: path.mkdir(), "is a folder"),
    ],
)
def test_unusable_site_toml_is_a_problem(
    make_site: SiteWriter, make_toml: Callable[[Path], object], message: str
) -> None:
    root = make_site()
    make_toml(root / "site.toml")

    [problem] = ManifestSite(root).problems()

    assert message in problem.message and problem.file == str(root / "site.toml")


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


# ------------------------------------------------------------- hostile input (issue 14)


def _gray16(path: Path, high: int) -> np.ndarray:
    pixels = (np.arange(16 * 16).reshape(16, 16) * high // 255).astype(np.uint16)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return pixels


def test_16bit_gray_png_is_scaled_by_its_bit_depth_not_clipped(make_site: SiteWriter) -> None:
    root = make_site()
    stored = _gray16(root / "images" / "p0_OD.png", 4095)  # 12-bit values in a 16-bit PNG
    site = ManifestSite(root)
    sample = next(s for s in site.samples() if s.image == "images/p0_OD.png")

    pixels = site.read_image(sample)

    assert pixels.shape == (16, 16, 3)
    assert np.array_equal(pixels[..., 0], np.rint(stored.astype(np.float64) * 255 / 4095).astype(np.uint8))


def test_duplicate_column_is_an_error_on_the_header(make_site: SiteWriter) -> None:
    root = make_site(header=["image", "label", "patient_id", "Label"])

    problems = ManifestSite(root).problems()

    assert any(p.row == 1 and p.field == "label" and "appears 2 times" in p.message for p in problems)


def test_same_image_twice_is_an_error(make_site: SiteWriter) -> None:
    rows = valid_rows()
    root = make_site(rows + [{**rows[0], "label": 1}])

    [problem] = _only(ManifestSite(root).problems(), "image")

    assert problem.row == len(rows) + 2 and "already listed on line 2" in problem.message


@pytest.mark.parametrize("image", ["../outside.png", "/etc/hostname", "images/link.png"])
def test_image_paths_outside_the_site_are_refused(make_site: SiteWriter, tmp_path: Path, image: str) -> None:
    rows = valid_rows()
    root = make_site(rows)
    Image.new("RGB", (4, 4)).save(tmp_path / "outside.png")
    (root / "images" / "link.png").symlink_to(tmp_path / "outside.png")
    (root / "manifest.csv").write_text((root / "manifest.csv").read_text().replace(str(rows[0]["image"]), image, 1))

    [problem] = _only(ManifestSite(root).problems(), "image")

    assert problem.row == 2 and "site folder" in problem.message


def test_huge_image_is_refused_from_its_header(make_site: SiteWriter) -> None:
    root = make_site()
    Image.new("L", (30000, 30000)).save(root / "images" / "p0_OD.png")  # ~1 MB on disk, 900 MP decoded

    [problem] = _only(ManifestSite(root).problems(), "image")

    assert problem.row == 2 and "limit" in problem.message


def test_each_image_is_decoded_once_per_check(make_site: SiteWriter, monkeypatch: pytest.MonkeyPatch) -> None:
    from fedeye.sites import manifest

    rows = [{"image": "images/one.png", "label": 0, "patient_id": f"p{i}"} for i in range(30)]
    root = make_site(rows[:1])
    (root / "manifest.csv").write_text(
        "image,label,patient_id\n" + "".join(f"images/one.png,0,p{i}\n" for i in range(30))
    )
    calls: list[Path] = []
    decode = manifest.decode_image_file
    monkeypatch.setattr(manifest, "decode_image_file", lambda path: calls.append(path) or decode(path))

    ManifestSite(root).problems()

    assert len(calls) == 1


@pytest.mark.parametrize("label", ["1_0", " +", "1.0", "١"])
def test_labels_must_be_plain_integers(make_site: SiteWriter, label: str) -> None:
    rows = valid_rows()
    rows[0]["label"] = label

    [problem] = _only(ManifestSite(make_site(rows)).problems(), "label")

    assert problem.row == 2


def _png48(path: Path, pixels: np.ndarray) -> None:
    """Write an RGB PNG with 16 bits per channel (Pillow cannot write one)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    height, width = pixels.shape[:2]
    rows = b"".join(b"\x00" + pixels[y].astype(">u2").tobytes() for y in range(height))
    header = chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + header + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def test_12bit_data_in_a_16bit_colour_png_is_refused_not_darkened(make_site: SiteWriter) -> None:
    root = make_site()
    _png48(root / "images" / "p0_OD.png", np.full((4, 4, 3), 4000, np.uint16))

    [problem] = _only(ManifestSite(root).problems(), "image")

    assert problem.row == 2 and "16-bit colour" in problem.message


def test_full_range_16bit_colour_png_keeps_its_high_byte(make_site: SiteWriter) -> None:
    root = make_site()
    _png48(root / "images" / "p0_OD.png", np.full((4, 4, 3), 65535, np.uint16))
    site = ManifestSite(root)

    pixels = site.read_image(next(s for s in site.samples() if s.image == "images/p0_OD.png"))

    assert (pixels == 255).all()


def test_multi_frame_image_is_refused(make_site: SiteWriter) -> None:
    root = make_site()
    frames = [Image.new("RGB", (8, 8), (v, v, v)) for v in (10, 200)]
    frames[0].save(root / "images" / "p0_OD.png", format="GIF", save_all=True, append_images=frames[1:])

    [problem] = _only(ManifestSite(root).problems(), "image")

    assert problem.row == 2 and "2 frames" in problem.message


@pytest.mark.parametrize("names", ['["a", "a"]', '["a", ""]'])
def test_label_names_must_be_distinct_and_non_empty(make_site: SiteWriter, names: str) -> None:
    root = make_site(toml=f"label_names = {names}\n")

    [problem] = _only(ManifestSite(root).problems(), "label_names")

    assert "distinct and non-empty" in problem.message


# ------------------------------------------------------- hostile manifests (never a traceback)


def _replace_in_manifest(root: Path, old: str, new: str) -> None:
    manifest = root / "manifest.csv"
    text = manifest.read_text(encoding="utf-8")
    assert old in text
    manifest.write_text(text.replace(old, new, 1), encoding="utf-8")


def test_a_label_of_thousands_of_digits_is_out_of_range_not_a_crash(make_site: SiteWriter) -> None:
    root = make_site()
    _replace_in_manifest(root, "images/p0_OD.png,0,", "images/p0_OD.png," + "9" * 5000 + ",")

    [problem] = _only(ManifestSite(root).problems(), "label")

    assert problem.row == 2 and "outside range" in problem.message and len(problem.message) < 200


def test_a_symlink_loop_is_a_row_problem(make_site: SiteWriter) -> None:
    root = make_site()
    image = root / "images" / "p0_OD.png"
    image.unlink()
    image.symlink_to(image.name)

    [problem] = _only(ManifestSite(root).problems(), "image")

    assert problem.row == 2 and "cannot be followed" in problem.message


def test_an_image_name_too_long_for_the_file_system_is_not_found(make_site: SiteWriter) -> None:
    root = make_site()
    _replace_in_manifest(root, "images/p0_OD.png", "images/" + "a" * 300 + ".png")

    [problem] = _only(ManifestSite(root).problems(), "image")

    assert problem.row == 2 and "not found" in problem.message


def test_an_unclosed_quote_is_reported_instead_of_swallowing_the_rows_after_it(make_site: SiteWriter) -> None:
    root = make_site()
    _replace_in_manifest(root, "images/p0_OS.png", '"images/p0_OS.png')

    problems = ManifestSite(root).problems()

    [problem] = problems
    assert problem.row == 3 and problem.field == "image" and "spans several lines" in problem.message


def test_a_quoted_line_break_in_a_value_is_refused(make_site: SiteWriter) -> None:
    root = make_site()
    _replace_in_manifest(root, ",p1,", ',"p\n1",')

    [problem] = ManifestSite(root).problems()

    assert problem.row == 4 and problem.field == "patient_id"


def test_a_nul_byte_in_a_value_is_refused(make_site: SiteWriter) -> None:
    root = make_site()
    _replace_in_manifest(root, ",p1,", ",p\x001,")

    [problem] = ManifestSite(root).problems()

    assert problem.row == 4 and problem.field == "patient_id" and "NUL" in problem.message


def test_values_beyond_the_header_are_refused(make_site: SiteWriter) -> None:
    """An unquoted comma shifts every later value into the wrong column: never read such a row."""
    root = make_site()
    _replace_in_manifest(root, ",p1,OD,", ",p1,OD,Smith, J,")

    [problem] = ManifestSite(root).problems()

    assert problem.row == 4 and "values but the header names" in problem.message


def test_trailing_empty_values_are_accepted(make_site: SiteWriter) -> None:
    root = make_site()
    manifest = root / "manifest.csv"
    manifest.write_text(manifest.read_text(encoding="utf-8").replace("\n", ",,\n"), encoding="utf-8")

    assert ManifestSite(root).problems() == []


def test_a_latin1_manifest_names_the_line_of_the_first_bad_byte(make_site: SiteWriter) -> None:
    root = make_site()
    manifest = root / "manifest.csv"
    lines = manifest.read_text(encoding="utf-8").splitlines(keepends=True)
    lines[3] = lines[3].replace(",p1,", ",Jos\xe9,")
    manifest.write_bytes("".join(lines).encode("latin-1"))

    [problem] = ManifestSite(root).problems()

    assert problem.row == 4 and "0xe9" in problem.message and "UTF-8" in problem.fix


def test_a_utf16_manifest_says_so(make_site: SiteWriter) -> None:
    root = make_site()
    manifest = root / "manifest.csv"
    manifest.write_bytes(manifest.read_text(encoding="utf-8").encode("utf-16"))

    [problem] = ManifestSite(root).problems()

    assert "UTF-16" in problem.message


def test_a_bom_and_crlf_lines_are_accepted(make_site: SiteWriter) -> None:
    root = make_site()
    manifest = root / "manifest.csv"
    manifest.write_bytes(b"\xef\xbb\xbf" + manifest.read_text(encoding="utf-8").replace("\n", "\r\n").encode())

    assert ManifestSite(root).problems() == []


def test_a_semicolon_separated_manifest_says_so(make_site: SiteWriter) -> None:
    root = make_site()
    manifest = root / "manifest.csv"
    manifest.write_text(manifest.read_text(encoding="utf-8").replace(",", ";"), encoding="utf-8")

    problems = _only(ManifestSite(root).problems(), "label")

    assert problems and "separates values with ';'" in problems[0].fix


def test_a_windows_style_image_path_gets_a_hint(make_site: SiteWriter) -> None:
    root = make_site()
    _replace_in_manifest(root, "images/p0_OD.png", "images\\p0_OD.png")

    [problem] = _only(ManifestSite(root).problems(), "image")

    assert "not found" in problem.message and "not '\\'" in problem.fix


def test_a_zero_byte_image_is_called_empty(make_site: SiteWriter) -> None:
    root = make_site()
    (root / "images" / "p0_OD.png").write_bytes(b"")

    [problem] = _only(ManifestSite(root).problems(), "image")

    assert problem.row == 2 and "is empty (0 bytes)" in problem.message

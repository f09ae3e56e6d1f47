"""MedMNIST npz sites: given splits, dataset defaults, bad arrays."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fedeye.sites.base import open_site
from fedeye.sites.npz_medmnist import MedMnistSite
from tests.sites.conftest import write_medmnist_site


def test_retinamnist_defaults_and_image_level_patients(tmp_path: Path) -> None:
    site = open_site(write_medmnist_site(tmp_path / "r"))
    samples = site.samples()
    assert isinstance(site, MedMnistSite) and site.info.modality == "fundus" and len(site.info.label_names) == 5
    assert [sum(s.split == k for s in samples) for k in ("train", "val", "test")] == [10, 4, 4]
    assert len({s.patient_id for s in samples}) == len(samples)
    assert site.read_image(samples[0]).shape == (28, 28, 3)


def test_octmnist_is_gray_oct_with_four_classes(tmp_path: Path) -> None:
    site = open_site(write_medmnist_site(tmp_path / "o", name="octmnist_64", rgb=False, classes=4))
    assert site.info.modality == "oct" and site.info.label_names[3] == "normal"
    assert site.read_image(site.samples()[0]).shape == (28, 28)


def test_missing_split_wrong_shape_and_bad_label_are_reported(tmp_path: Path) -> None:
    root = write_medmnist_site(tmp_path / "b", test_labels=np.zeros((3, 1), np.int64))
    assert [p.field for p in open_site(root).problems()] == ["test_labels"]
    root = write_medmnist_site(tmp_path / "c", train_labels=np.full((10, 1), 9))
    problems = open_site(root).problems()
    assert len(problems) == 10 and all(
        p.field == "train_labels" and p.file.endswith("retinamnist.npz") for p in problems
    )


# ------------------------------------------------------------- hostile input (issue 14)


def test_float_images_in_0_1_are_scaled_to_0_255(tmp_path: Path) -> None:
    floats = {
        f"{k}_images": np.linspace(0, 1, n * 28 * 28).reshape(n, 28, 28)
        for k, n in (("train", 10), ("val", 4), ("test", 4))
    }
    site = open_site(write_medmnist_site(tmp_path / "f", name="octmnist", rgb=False, classes=4, **floats))
    sample = site.samples()[0]

    pixels = site.read_image(sample)

    assert pixels.dtype == np.uint8
    assert np.array_equal(pixels, np.rint(floats["train_images"][0] * 255).astype(np.uint8))


def test_non_integer_float_labels_are_refused(tmp_path: Path) -> None:
    root = write_medmnist_site(tmp_path / "l", train_labels=np.full((10, 1), 1.7))

    problems = open_site(root).problems()

    assert problems and all(p.field == "train_labels" and "1.7" in p.message for p in problems)


def test_whole_float_labels_arrive_as_those_integers(tmp_path: Path) -> None:
    root = write_medmnist_site(tmp_path / "w", train_labels=np.arange(10, dtype=np.float64).reshape(10, 1) % 5)

    labels = [s.label for s in open_site(root).samples() if s.split == "train"]

    assert labels == [i % 5 for i in range(10)]


def test_object_label_array_is_reported_not_raised(tmp_path: Path) -> None:
    root = write_medmnist_site(tmp_path / "o")
    arrays = dict(np.load(root / "retinamnist.npz"))
    arrays["train_labels"] = np.array([[1]] * 10, dtype=object)
    np.savez(root / "retinamnist.npz", **arrays)  # type: ignore[arg-type]

    [problem] = open_site(root).problems()

    assert problem.field == "train_labels" and "object" in problem.message

"""Synthetic generator: determinism, safety, heterogeneity and learnability."""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from fedeye.errors import FedEyeError
from fedeye.sites import open_site
from fedeye.sites.synth import SiteExistsError, synthesize_sites


def _hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _manifest(root: Path) -> list[dict[str, str]]:
    with (root / "manifest.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.parametrize("modality", ["fundus", "oct"])
def test_same_seed_gives_identical_bytes(tmp_path: Path, modality: str) -> None:
    first = synthesize_sites(tmp_path / "a", sites=2, images_per_site=6, size=32, seed=3, modality=modality)  # type: ignore[arg-type]
    second = synthesize_sites(tmp_path / "b", sites=2, images_per_site=6, size=32, seed=3, modality=modality)  # type: ignore[arg-type]

    assert [_hashes(p) for p in first] == [_hashes(p) for p in second]
    assert len(_hashes(first[0])) == 6 + 3  # images + manifest, site.toml, profile.json


def test_different_seed_differs(tmp_path: Path) -> None:
    first = synthesize_sites(tmp_path / "a", sites=1, images_per_site=6, size=32, seed=1)
    second = synthesize_sites(tmp_path / "b", sites=1, images_per_site=6, size=32, seed=2)

    assert _hashes(first[0])["manifest.csv"] != _hashes(second[0])["manifest.csv"]


def test_refuses_to_overwrite_unless_asked(tmp_path: Path) -> None:
    synthesize_sites(tmp_path, sites=1, images_per_site=4, size=32, seed=1)
    before = _hashes(tmp_path / "site-1")

    with pytest.raises(SiteExistsError, match="overwrite") as caught:
        synthesize_sites(tmp_path, sites=1, images_per_site=4, size=32, seed=2)
    synthesize_sites(tmp_path, sites=1, images_per_site=4, size=32, seed=2, overwrite=True)

    assert isinstance(caught.value, FedEyeError)
    assert _hashes(tmp_path / "site-1") != before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["site-1"]  # no staging left behind


def test_nothing_half_written_on_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from fedeye.sites import synth

    def explode(*args: object, **kwargs: object) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr(synth, "_write_manifest", explode)
    with pytest.raises(RuntimeError):
        synthesize_sites(tmp_path, sites=2, images_per_site=4, size=32)

    assert list(tmp_path.iterdir()) == []


def test_manifest_content_is_patient_level_and_valid(synth_fundus: list[Path]) -> None:
    rows = _manifest(synth_fundus[0])
    eyes_per_patient: dict[str, set[str]] = {}
    for row in rows:
        eyes_per_patient.setdefault(row["patient_id"], set()).add(row["eye"])

    assert len(rows) == 150 and "split" not in rows[0]
    assert max(len(e) for e in eyes_per_patient.values()) == 2
    assert {r["race"] for r in rows} <= {"Asian", "Black", "White"}
    assert open_site(synth_fundus[0]).info.name != "site-1"  # hospital-like name from site.toml


def test_label_follows_vcdr_with_noisy_threshold(synth_fundus: list[Path]) -> None:
    rows = [r for root in synth_fundus for r in _manifest(root)]
    vcdr = np.array([float(r["vcdr"]) for r in rows])
    label = np.array([int(r["label"]) for r in rows])

    assert roc_auc_score(label, vcdr) > 0.97
    assert label[vcdr > 0.65].mean() > 0.95 and label[vcdr < 0.4].mean() < 0.05


def test_sites_differ_in_prevalence_and_look(synth_fundus: list[Path]) -> None:
    prevalence = [np.mean([int(r["label"]) for r in _manifest(root)]) for root in synth_fundus]
    looks = [_mean_image(root) for root in synth_fundus]

    assert max(prevalence) - min(prevalence) > 0.1
    gaps = [np.abs(a - b).mean() for i, a in enumerate(looks) for b in looks[i + 1 :]]
    assert min(gaps) > 4  # colour, field of view, lighting: > 4 grey levels apart on average
    assert np.ptp([m.reshape(-1, 3).mean(0) for m in looks], axis=0).max() > 10  # colour casts differ


def _mean_image(root: Path) -> np.ndarray:
    images = [np.asarray(Image.open(p), np.float32) for p in sorted((root / "images").glob("*.png"))[:40]]
    return np.mean(images, axis=0)


def _pixels_and_labels(roots: list[Path]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    features, labels, sites, test = [], [], [], []
    for index, root in enumerate(roots):
        site = open_site(root)
        for sample in site.samples():
            gray = Image.fromarray(site.read_image(sample)).convert("L").resize((32, 32), Image.Resampling.BILINEAR)
            features.append(np.asarray(gray, np.float32).ravel() / 255)
            labels.append(sample.label)
            sites.append(index)
            test.append(sample.split == "test")
    return np.array(features), np.array(labels), np.array(sites), np.array(test)


def test_label_is_learnable_from_pixels_not_from_site(synth_fundus: list[Path]) -> None:
    x, y, site, test = _pixels_and_labels(synth_fundus)
    x = (x - x[~test].mean(0)) / (x[~test].std(0) + 1e-6)

    model = LogisticRegression(C=0.01, max_iter=2000).fit(x[~test], y[~test])
    pixel_auc = roc_auc_score(y[test], model.predict_proba(x[test])[:, 1])
    site_prevalence = np.array([y[~test & (site == k)].mean() for k in range(len(synth_fundus))])
    site_auc = roc_auc_score(y[test], site_prevalence[site[test]])

    assert pixel_auc > 0.75
    assert site_auc < 0.7 < pixel_auc - 0.05


def test_oct_label_is_learnable(synth_oct: list[Path]) -> None:
    x, y, _, _ = _pixels_and_labels(synth_oct)

    model = LogisticRegression(C=0.01, max_iter=2000).fit(x[::2], y[::2])

    assert roc_auc_score(y[1::2], model.predict_proba(x[1::2])[:, 1]) > 0.75


def test_oct_images_are_gray(synth_oct: list[Path]) -> None:
    site = open_site(synth_oct[0])

    pixels = site.read_image(site.samples()[0])

    assert site.info.modality == "oct" and pixels.shape == (48, 48)


def test_rejects_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        synthesize_sites(tmp_path, sites=0, images_per_site=4)


def test_an_output_path_that_cannot_be_a_folder_is_a_clean_error(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("x")
    for out in (tmp_path / "notes.txt", tmp_path / "notes.txt" / "sites"):
        with pytest.raises(FedEyeError, match="cannot write sites into"):
            synthesize_sites(out, sites=1, images_per_site=4, size=32)
    assert (tmp_path / "notes.txt").read_text() == "x"

"""The site data cache: same pixels, built once, rebuilt when the site changes, never half-written."""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fedeye.sites import open_site
from fedeye.sites.base import Sample, SiteFormat
from fedeye.sites.cache import (
    STATE_MARKER,
    build_site_cache,
    cache_status,
    cached_split,
    clear_cache,
    list_entries,
    site_fingerprint,
)
from fedeye.sites.dataset import SiteDataset
from fedeye.sites.manifest import ManifestSite
from fedeye.sites.synth import synthesize_sites

from .conftest import SiteWriter

ReadImage = Callable[[SiteFormat, Sample], np.ndarray]


@pytest.fixture()
def count_decodes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record every image a manifest site decodes through ``read_image``."""
    decoded: list[str] = []
    original: ReadImage = ManifestSite.read_image

    def counting(self: SiteFormat, sample: Sample) -> np.ndarray:
        decoded.append(sample.image)
        return original(self, sample)

    monkeypatch.setattr(ManifestSite, "read_image", counting)
    return decoded


@pytest.fixture()
def cache(tmp_path: Path) -> Path:
    """A cache folder of its own (``make_site`` writes sites into ``tmp_path``)."""
    return tmp_path / "cache"


def _varied_site(make_site: SiteWriter) -> Path:
    """A manifest site whose images all differ (random pixels, different shapes)."""
    root = make_site()
    rng = np.random.default_rng(0)
    for n, path in enumerate(sorted((root / "images").glob("*.png"))):
        Image.fromarray(rng.integers(0, 256, (20 + n, 30, 3), dtype=np.uint8)).save(path)
    return root


def _items(data: SiteDataset) -> list[tuple[torch.Tensor, int]]:
    return [data[i] for i in range(len(data))]


# ------------------------------------------------------------------ same pixels


@pytest.mark.parametrize("preprocess", ["none", "fov-crop", "fov-crop+clahe"])
def test_cached_items_equal_uncached(synth_fundus: list[Path], tmp_path: Path, preprocess: str) -> None:
    site = synth_fundus[0]

    plain = SiteDataset(open_site(site), "val", image_size=40, preprocess=preprocess)  # type: ignore[arg-type]
    SiteDataset(open_site(site), "val", image_size=40, preprocess=preprocess, cache_dir=tmp_path)  # type: ignore[arg-type]
    cached = SiteDataset(open_site(site), "val", image_size=40, preprocess=preprocess, cache_dir=tmp_path)  # type: ignore[arg-type]

    assert isinstance(cached._images, np.memmap)  # read lazily from the cache file
    assert cached.samples == plain.samples and cached.patient_ids == plain.patient_ids
    assert np.array_equal(cached.labels, plain.labels) and cached.attrs == plain.attrs
    assert all(torch.equal(a[0], b[0]) and a[1] == b[1] for a, b in zip(_items(plain), _items(cached), strict=True))


def test_cached_gray_oct_equals_uncached(synth_oct: list[Path], tmp_path: Path) -> None:
    plain = SiteDataset(open_site(synth_oct[0]), "test", image_size=24)
    cached = SiteDataset(open_site(synth_oct[0]), "test", image_size=24, cache_dir=tmp_path)

    assert all(torch.equal(a[0], b[0]) for a, b in zip(_items(plain), _items(cached), strict=True))


def test_augmented_cached_items_equal_uncached(synth_fundus: list[Path], tmp_path: Path) -> None:
    plain = SiteDataset(open_site(synth_fundus[1]), "train", image_size=32, augment=True)
    cached = SiteDataset(open_site(synth_fundus[1]), "train", image_size=32, augment=True, cache_dir=tmp_path)

    torch.manual_seed(5)
    first = _items(plain)
    torch.manual_seed(5)
    second = _items(cached)

    assert all(torch.equal(a[0], b[0]) for a, b in zip(first, second, strict=True))


# ------------------------------------------------------------------ reuse


def test_a_miss_builds_every_split_so_later_messages_do_not_scan(
    make_site: SiteWriter, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = _varied_site(make_site)
    SiteDataset(open_site(root), "train", image_size=16, cache_dir=cache)

    def refuse(*_: object) -> None:
        raise AssertionError("the evaluation message must not scan or decode the site")

    monkeypatch.setattr(ManifestSite, "read_image", refuse)
    monkeypatch.setattr(ManifestSite, "scan", refuse)

    assert {e.split for e in list_entries(cache)} == {"train", "val", "test"}
    assert len(SiteDataset(open_site(root), "val", image_size=16, cache_dir=cache)) > 0


def test_second_dataset_reads_the_cache_without_decoding(
    make_site: SiteWriter, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = _varied_site(make_site)
    first = SiteDataset(open_site(root), "train", image_size=16, cache_dir=cache)

    def refuse(*_: object) -> None:
        raise AssertionError("the warm path must not decode or scan the site")

    monkeypatch.setattr(ManifestSite, "read_image", refuse)
    monkeypatch.setattr(ManifestSite, "scan", refuse)
    second = SiteDataset(open_site(root), "train", image_size=16, cache_dir=cache)

    assert second.samples == first.samples
    assert all(torch.equal(a[0], b[0]) for a, b in zip(_items(first), _items(second), strict=True))


def test_other_size_or_mode_is_another_entry(make_site: SiteWriter, cache: Path, count_decodes: list[str]) -> None:
    root = _varied_site(make_site)

    SiteDataset(open_site(root), "train", image_size=16, cache_dir=cache)
    SiteDataset(open_site(root), "train", image_size=24, cache_dir=cache)
    SiteDataset(open_site(root), "train", image_size=16, preprocess="fov-crop", cache_dir=cache)

    entries = list_entries(cache)
    assert [(e.image_size, e.preprocess) for e in entries if e.split == "train"] == [
        (16, "fov-crop"),
        (16, "none"),
        (24, "none"),
    ]
    assert len(entries) == 9  # each miss builds all three splits


def test_concurrent_builders_decode_once(make_site: SiteWriter, cache: Path, count_decodes: list[str]) -> None:
    root = _varied_site(make_site)
    errors: list[BaseException] = []

    def build() -> None:
        try:
            cached_split(open_site(root), "train", image_size=16, preprocess="none", cache_dir=cache)
        except BaseException as err:  # collected for the assertion below
            errors.append(err)

    threads = [threading.Thread(target=build) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert not errors
    assert sorted(count_decodes) == sorted(
        s.image for s in open_site(root).samples()
    )  # each image once: the others waited
    assert len(list_entries(cache)) == 3


# ------------------------------------------------------------------ invalidation


def _rebuilds(root: Path, cache: Path, decoded: list[str]) -> bool:
    decoded.clear()
    SiteDataset(open_site(root), "train", image_size=16, cache_dir=cache)
    return bool(decoded)


def test_changed_image_bytes_invalidate(make_site: SiteWriter, cache: Path, count_decodes: list[str]) -> None:
    root = _varied_site(make_site)
    _rebuilds(root, cache, count_decodes)
    image = root / "images" / "p0_OD.png"
    before = image.stat()

    Image.fromarray(np.zeros((21, 30, 3), np.uint8)).save(image)  # same shape, other pixels
    os.utime(image, ns=(before.st_atime_ns, before.st_mtime_ns + 1_000))  # even within the same mtime tick
    data = SiteDataset(open_site(root), "train", image_size=16, cache_dir=cache)

    assert count_decodes  # rebuilt
    index = [s.image for s in data.samples].index("images/p0_OD.png")
    assert float(np.asarray(data._images[index]).max()) == 0.0  # the new pixels
    assert len(list_entries(cache)) == 3  # the stale entries are gone


def test_added_and_removed_images_invalidate(make_site: SiteWriter, cache: Path, count_decodes: list[str]) -> None:
    root = _varied_site(make_site)
    _rebuilds(root, cache, count_decodes)
    manifest = root / "manifest.csv"
    lines = manifest.read_text().splitlines()

    Image.fromarray(np.full((16, 16, 3), 9, np.uint8)).save(root / "images" / "extra.png")
    manifest.write_text("\n".join([*lines, "images/extra.png,1,p0,OD,50,M"]) + "\n")
    added = _rebuilds(root, cache, count_decodes)
    (root / "images" / "extra.png").unlink()
    manifest.write_text("\n".join(lines) + "\n")
    removed = _rebuilds(root, cache, count_decodes)

    assert added and removed


def test_changed_manifest_row_invalidates(make_site: SiteWriter, cache: Path, count_decodes: list[str]) -> None:
    root = _varied_site(make_site)
    _rebuilds(root, cache, count_decodes)
    manifest = root / "manifest.csv"
    lines = manifest.read_text().splitlines()
    first = lines[1].split(",")
    first[1] = "1" if first[1] == "0" else "0"  # relabel the first image

    manifest.write_text("\n".join([lines[0], ",".join(first), *lines[2:]]) + "\n")
    data = SiteDataset(open_site(root), "train", image_size=16, cache_dir=cache)

    assert count_decodes
    relabelled = [s for s in data.samples if s.image == first[0]]
    assert relabelled and relabelled[0].label == int(first[1])


def test_unchanged_site_keeps_its_fingerprint_and_ignores_hidden_and_state_folders(make_site: SiteWriter) -> None:
    root = _varied_site(make_site)
    before = site_fingerprint(open_site(root))

    (root / ".DS_Store").write_text("x")
    (root / "state").mkdir()
    (root / "state" / STATE_MARKER).touch()
    (root / "state" / "ledger.sqlite").write_text("changes all the time")

    assert site_fingerprint(open_site(root)) == before


# ------------------------------------------------------------------ atomic writes


def test_interrupted_build_leaves_no_cache_file(
    make_site: SiteWriter, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = _varied_site(make_site)
    original: ReadImage = ManifestSite.read_image
    calls = iter(range(1_000))

    def dies_midway(self: SiteFormat, sample: Sample) -> np.ndarray:
        if next(calls) == 3:
            raise KeyboardInterrupt  # the operator pressed Ctrl-C, or the process was stopped
        return original(self, sample)

    monkeypatch.setattr(ManifestSite, "read_image", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        SiteDataset(open_site(root), "train", image_size=16, cache_dir=cache)

    assert not [p.name for p in cache.iterdir() if not p.name.endswith(".lock")]
    assert list_entries(cache) == []
    monkeypatch.setattr(ManifestSite, "read_image", original)
    assert len(SiteDataset(open_site(root), "train", image_size=16, cache_dir=cache)) > 0


def test_entry_without_its_sidecar_is_rebuilt(make_site: SiteWriter, cache: Path, count_decodes: list[str]) -> None:
    root = _varied_site(make_site)
    _rebuilds(root, cache, count_decodes)

    next(cache.glob("train-*.json")).unlink()  # as if the process died between the two renames

    assert _rebuilds(root, cache, count_decodes)


@pytest.mark.parametrize("sidecar", ["[1, 2]", '{"count": "x"}', '"text"'])
def test_a_sidecar_that_is_not_ours_is_rebuilt_not_a_crash(
    make_site: SiteWriter, cache: Path, count_decodes: list[str], sidecar: str
) -> None:
    root = _varied_site(make_site)
    _rebuilds(root, cache, count_decodes)
    for path in cache.glob("*.json"):
        path.write_text(sidecar, encoding="utf-8")

    assert all(e.count >= 0 for e in list_entries(cache))
    assert _rebuilds(root, cache, count_decodes)


def test_cache_files_are_private(make_site: SiteWriter, cache: Path) -> None:
    root = _varied_site(make_site)

    SiteDataset(open_site(root), "train", image_size=16, cache_dir=cache)

    modes = {p.suffix: stat.S_IMODE(p.stat().st_mode) for p in cache.iterdir() if p.suffix in (".npy", ".json")}
    assert modes == {".npy": 0o600, ".json": 0o600}


# ------------------------------------------------------------------ whole site, status, clear


def test_build_status_and_clear(tmp_path: Path) -> None:
    root = synthesize_sites(tmp_path / "sites", sites=1, images_per_site=30, size=32, seed=4)[0]
    cache = tmp_path / "cache"
    seen: list[tuple[str, int, int]] = []

    built = build_site_cache(open_site(root), cache_dir=cache, image_sizes=[16, 24], progress=lambda *a: seen.append(a))
    fresh = cache_status(open_site(root), cache)
    (root / "images" / sorted(p.name for p in (root / "images").iterdir())[0]).unlink()  # site changed
    stale = cache_status(open_site(root), cache)
    freed = clear_cache(cache)

    assert sum(len(b.samples) for b in built) == 2 * 30
    assert {label for label, _, _ in seen} == {f"{s} {n}px" for s in ("train", "val", "test") for n in (16, 24)}
    assert all(
        done == total
        for label, done, total in seen
        if (label, done) == max((x[0], x[1]) for x in seen if x[0] == label)
    )
    assert len(fresh) == 6 and all(s.current for s in fresh)
    assert len(stale) == 6 and not any(s.current for s in stale)
    assert freed > 16 * 16 * 3 * 30 and list(cache.iterdir()) == []


def test_fingerprint_survives_a_symlink_loop(make_site: SiteWriter) -> None:
    root = _varied_site(make_site)
    (root / "images" / "loop").symlink_to(root, target_is_directory=True)

    assert len(site_fingerprint(open_site(root))) == 64

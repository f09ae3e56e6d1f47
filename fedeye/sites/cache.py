"""On-disk cache of a site's decoded, preprocessed images: prepared once, memory-mapped by every message.

Flower 1.41 runs every message of a deployment in a fresh process, so an
in-memory cache dies with each message. This cache keeps one split of a site
at one image size and preprocessing mode as two files in the site's cache
folder (``SiteState.cache_dir``)::

    train-224px-none-<fingerprint[:16]>.npy   uint8 [N, S, S, 3], read with np.load(mmap_mode="r")
    train-224px-none-<fingerprint[:16]>.json  sidecar: samples (row, image, label, patient id, attrs)

Opening an entry reads only the sidecar and the ``.npy`` header; pixels are
paged in lazily as items are read, so a warm message costs the same for 1,000
or 10,000 images (plus one ``stat`` per file for the fingerprint).

Fingerprint
    :func:`site_fingerprint` is a SHA-256 over every file under the site
    folder (hidden names and FedEye state folders skipped): its relative
    path, size and ``mtime_ns``, plus the cache format version, the site
    format and the Pillow and scikit-image versions (they decide the resized
    pixels). Changing, adding or removing an image, or editing
    ``manifest.csv``, ``labels.csv`` or ``site.toml``, gives a new fingerprint
    and so a new entry. Like ``make`` and ``rsync``'s default check, a rewrite
    that keeps a file's size *and* its modification time to the nanosecond is
    not detected: contents are not hashed on every message because that cost
    grows with the site (``benchmarks/data_cache.py`` measures it). After such
    a rewrite run ``fedeye site cache clear``.

Writing
    An entry is built in a temporary file in the cache folder through
    :func:`numpy.lib.format.open_memmap` (one image at a time: the site never
    has to fit in RAM), flushed and fsync'ed, then moved into place with
    ``os.replace``; the sidecar is moved last and marks the entry complete. An
    interrupted build leaves no file under an entry's name. A lock file
    serialises builders of the same entry, so concurrent messages or runs
    build it once. A miss builds every split of the site at that size and
    mode (one scan of the site, which for a manifest site decodes every image
    to check it, serves all three).

>>> split = cached_split(open_site("site-1"), "train", image_size=224, preprocess="none",  # doctest: +SKIP
...                      cache_dir=Path("~/.fedeye/sites/site-1-0123456789ab/cache"))
>>> split.images.shape  # doctest: +SKIP
(600, 224, 224, 3)
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np

from fedeye.errors import Problem, SiteDataError
from fedeye.sites.base import SPLITS, Sample, SiteFormat, SplitName
from fedeye.sites.preprocess import PreprocessMode, preprocess_fundus, to_rgb

CACHE_VERSION = 1  # bump when the stored pixels or the sidecar change meaning
STATE_MARKER = ".fedeye-state"  # a folder holding this file is FedEye state, never site data
FLUSH_EVERY = 256  # images written between flushes and progress reports
ENTRY = re.compile(r"^(?P<split>train|val|test)-(?P<size>\d+)px-(?P<mode>[a-z+-]+?)-(?P<fp>[0-9a-f]{16})\.json$")

Progress = Callable[[int, int], None]  # (images done, images in the split)


@dataclass(frozen=True)
class CacheKey:
    """What one cache entry holds: a split of one site version at one size and mode."""

    split: SplitName
    image_size: int
    preprocess: PreprocessMode
    fingerprint: str  # site_fingerprint of the site folder

    @property
    def stem(self) -> str:
        """File name of the entry, without extension."""
        return f"{self.split}-{self.image_size}px-{self.preprocess}-{self.fingerprint[:16]}"


@dataclass(frozen=True)
class CachedSplit:
    """An opened entry: the split's samples and its memory-mapped uint8 ``[N, S, S, 3]`` pixels."""

    key: CacheKey
    samples: list[Sample]
    images: np.ndarray
    path: Path


# ------------------------------------------------------------------ fingerprint


def code_version(site: SiteFormat) -> str:
    """The part of the key that depends on code: cache version, site format, Pillow and scikit-image versions."""
    return (
        f"fedeye-cache-v{CACHE_VERSION} {site.format_name} pillow-{version('pillow')} skimage-{version('scikit-image')}"
    )


def site_files(root: Path) -> Iterator[tuple[str, os.stat_result]]:
    """Every file under ``root`` as ``(relative path, stat)``, in a stable order.

    Hidden names (``.``) and folders holding :data:`STATE_MARKER` are skipped;
    symbolic links are followed, each folder visited once.
    """
    stack, seen = [(root, "")], {_inode(root)}
    while stack:
        folder, prefix = stack.pop()
        with os.scandir(folder) as entries:
            listed = sorted(entries, key=lambda e: e.name)
        dirs = []
        for entry in listed:
            if entry.name.startswith("."):
                continue
            if entry.is_dir():
                if not os.path.exists(os.path.join(entry.path, STATE_MARKER)) and _inode(entry.path) not in seen:
                    seen.add(_inode(entry.path))
                    dirs.append((Path(entry.path), prefix + entry.name + "/"))
            elif entry.is_file():
                yield prefix + entry.name, entry.stat()
        stack.extend(reversed(dirs))


def _inode(path: Path | str) -> tuple[int, int]:
    stat = os.stat(path)
    return stat.st_dev, stat.st_ino


def site_fingerprint(site: SiteFormat) -> str:
    """SHA-256 over the code version and every site file's (relative path, size, mtime_ns)."""
    digest = hashlib.sha256(code_version(site).encode())
    for rel, stat in site_files(site.root):
        digest.update(f"{rel}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def content_digest(root: Path, *, block: int = 1 << 20) -> str:
    """SHA-256 over every site file's relative path and bytes (streamed); what a content-hashed key would cost."""
    digest = hashlib.sha256()
    for rel, _ in site_files(root):
        digest.update(rel.encode() + b"\0")
        with open(root / rel, "rb") as handle:
            while chunk := handle.read(block):
                digest.update(chunk)
    return digest.hexdigest()


# ------------------------------------------------------------------ reading


def prepare_image(site: SiteFormat, sample: Sample, *, preprocess: PreprocessMode, image_size: int) -> np.ndarray:
    """Decode and preprocess one sample: uint8 ``S x S x 3``, the pixels a :class:`SiteDataset` trains on."""
    return preprocess_fundus(to_rgb(site.read_image(sample)), mode=preprocess, size=image_size)


def open_entry(cache_dir: Path, key: CacheKey) -> CachedSplit | None:
    """The complete entry for ``key``, memory-mapped; None if it is missing or unreadable."""
    meta_path, npy_path = cache_dir / f"{key.stem}.json", cache_dir / f"{key.stem}.npy"
    meta = _read_meta(meta_path)
    if meta is None:  # missing, half-copied by hand, or not ours
        return None
    try:
        images = np.load(npy_path, mmap_mode="r")
    except (OSError, ValueError):
        return None
    expected = (_count(meta), key.image_size, key.image_size, 3)
    if meta.get("version") != CACHE_VERSION or meta.get("fingerprint") != key.fingerprint:
        return None
    if images.dtype != np.uint8 or images.shape != expected:
        return None
    return CachedSplit(key, [_sample(s) for s in meta["samples"]], images, npy_path)


def _read_meta(meta_path: Path) -> dict[str, Any] | None:
    """An entry's metadata; None if it is missing, unreadable or not a JSON object (edited by hand, not ours)."""
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def _count(meta: dict[str, Any]) -> int:
    count = meta.get("count")
    return count if isinstance(count, int) else -1


def _sample(raw: dict[str, Any]) -> Sample:
    return Sample(
        row=int(raw["row"]),
        image=str(raw["image"]),
        label=int(raw["label"]),
        patient_id=str(raw["patient_id"]),
        split=raw["split"],
        attrs=dict(raw["attrs"]),
    )


# ------------------------------------------------------------------ building


def cached_split(
    site: SiteFormat,
    split: SplitName,
    *,
    image_size: int,
    preprocess: PreprocessMode,
    cache_dir: Path,
    progress: Progress | None = None,
    build_others: bool = True,
) -> CachedSplit:
    """The cached split, built first if this site version has none yet.

    On a miss the site's other splits are built too (``build_others``): one
    scan of the site serves all three, where a fresh process per message
    would otherwise scan (and, for a manifest site, decode) every image again
    for the evaluation and test messages. ``progress`` follows ``split`` only.

    Raises
    ------
    SiteDataError
        The site's data is invalid, or the split holds no images.
    """
    key = CacheKey(split, image_size, preprocess, site_fingerprint(site))
    if (found := open_entry(cache_dir, key)) is not None:
        return found
    cache_dir.mkdir(parents=True, exist_ok=True)
    found = _ensure_entry(site, key, cache_dir, progress)
    others = (
        [s for s in SPLITS if s != split and any(sample.split == s for sample in site.samples())]
        if build_others
        else []
    )
    for other in others:
        _ensure_entry(site, CacheKey(other, image_size, preprocess, key.fingerprint), cache_dir, None)
    return found


def _ensure_entry(site: SiteFormat, key: CacheKey, cache_dir: Path, progress: Progress | None) -> CachedSplit:
    """Open ``key``'s entry, building it under its lock if no other process has."""
    with _locked(cache_dir / f".{key.stem}.lock"):
        if (found := open_entry(cache_dir, key)) is None:  # another process may have built it meanwhile
            _build(site, key, cache_dir, progress)
            remove_stale(cache_dir, key)
            found = open_entry(cache_dir, key)
    if found is None:
        raise RuntimeError(f"cache entry {cache_dir / key.stem} was written but cannot be read back")
    return found


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def split_samples(site: SiteFormat, split: SplitName) -> list[Sample]:
    """The split's samples; raises :class:`SiteDataError` for invalid data or an empty split."""
    samples = [s for s in site.samples() if s.split == split]
    if not samples:
        raise SiteDataError(site.site_name, [empty_split_problem(site, split)])
    return samples


def _build(site: SiteFormat, key: CacheKey, cache_dir: Path, progress: Progress | None) -> None:
    samples = split_samples(site, key.split)
    token = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp_npy, tmp_meta = cache_dir / f".{key.stem}.{token}.npy.tmp", cache_dir / f".{key.stem}.{token}.json.tmp"
    try:
        _write_pixels(site, samples, key, tmp_npy, progress)
        _write_file(tmp_meta, json.dumps(_sidecar(site, key, samples)).encode())
        os.replace(tmp_npy, cache_dir / f"{key.stem}.npy")
        os.replace(tmp_meta, cache_dir / f"{key.stem}.json")  # last: its presence marks the entry complete
        _fsync_dir(cache_dir)
    finally:
        tmp_npy.unlink(missing_ok=True)
        tmp_meta.unlink(missing_ok=True)


def _write_pixels(
    site: SiteFormat, samples: list[Sample], key: CacheKey, path: Path, progress: Progress | None
) -> None:
    """Decode into a memory-mapped ``.npy``, flushing every :data:`FLUSH_EVERY` images; fsync at the end."""
    shape = (len(samples), key.image_size, key.image_size, 3)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=shape)
    os.chmod(path, 0o600)  # patient images
    for index, sample in enumerate(samples):
        out[index] = prepare_image(site, sample, preprocess=key.preprocess, image_size=key.image_size)
        if (index + 1) % FLUSH_EVERY == 0 or index + 1 == len(samples):
            out.flush()
            if progress is not None:
                progress(index + 1, len(samples))
    del out
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())


def _write_file(path: Path, data: bytes) -> None:
    with open(path, "wb") as handle:
        os.fchmod(handle.fileno(), 0o600)
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sidecar(site: SiteFormat, key: CacheKey, samples: list[Sample]) -> dict[str, Any]:
    rows = [
        {
            "row": s.row,
            "image": s.image,
            "label": s.label,
            "patient_id": s.patient_id,
            "split": s.split,
            "attrs": s.attrs,
        }
        for s in samples
    ]
    return {
        "version": CACHE_VERSION,
        "fingerprint": key.fingerprint,
        "code": code_version(site),
        "site": site.site_name,
        "root": str(site.root.resolve()),
        "split": key.split,
        "image_size": key.image_size,
        "preprocess": key.preprocess,
        "count": len(samples),
        "samples": rows,
    }


def empty_split_problem(site: SiteFormat, split: str) -> Problem:
    """The problem of a split that holds no images."""
    return Problem(
        file=str(site.root),
        field="split",
        message=f"split {split!r} has no images",
        fix="add patients to this split, or let the loader split by patient (needs >= 3 patients)",
    )


# ------------------------------------------------------------------ listing and clearing


@dataclass(frozen=True)
class CacheEntry:
    """One complete entry found in a cache folder."""

    split: str
    image_size: int
    preprocess: str
    fingerprint: str
    count: int
    bytes: int
    path: Path  # the .npy file


def list_entries(cache_dir: Path) -> list[CacheEntry]:
    """Every complete entry in ``cache_dir`` (sidecar and pixels present), by split then size."""
    found = []
    for meta_path in sorted(cache_dir.glob("*.json")) if cache_dir.is_dir() else []:
        match, npy = ENTRY.match(meta_path.name), meta_path.with_suffix(".npy")
        if match is None or not npy.is_file():
            continue
        meta = _read_meta(meta_path)
        if meta is None:
            continue
        size = npy.stat().st_size + meta_path.stat().st_size
        found.append(
            CacheEntry(
                match["split"],
                int(match["size"]),
                match["mode"],
                str(meta.get("fingerprint", "")),
                max(_count(meta), 0),
                size,
                npy,
            )
        )
    order: dict[str, int] = {name: i for i, name in enumerate(SPLITS)}
    return sorted(found, key=lambda e: (order.get(e.split, len(order)), e.image_size, e.preprocess))


@dataclass(frozen=True)
class EntryStatus:
    """An entry and whether it was built from the site as it is now."""

    entry: CacheEntry
    current: bool


def cache_status(site: SiteFormat, cache_dir: Path) -> list[EntryStatus]:
    """Every entry in ``cache_dir``, each marked current or stale against the site's fingerprint."""
    fingerprint = site_fingerprint(site)
    return [EntryStatus(e, e.fingerprint == fingerprint) for e in list_entries(cache_dir)]


def build_site_cache(
    site: SiteFormat,
    *,
    cache_dir: Path,
    image_sizes: list[int],
    progress: Callable[[str, int, int], None] | None = None,
) -> list[CachedSplit]:
    """Build (or find) every split of ``site`` at each of ``image_sizes``, in the site's preprocessing mode.

    ``progress(label, done, total)`` is called while building, ``label`` such
    as ``"train 224px"``; an entry that already exists reports ``total`` at once.
    """
    built = []
    for size in image_sizes:
        for split in SPLITS:
            label = f"{split} {size}px"
            report = (lambda done, total, label=label: progress(label, done, total)) if progress else None
            entry = cached_split(
                site,
                split,
                image_size=size,
                preprocess=site.info.preprocess,
                cache_dir=cache_dir,
                progress=report,
                build_others=False,
            )
            if report is not None:
                report(len(entry.samples), len(entry.samples))
            built.append(entry)
    return built


def remove_stale(cache_dir: Path, key: CacheKey) -> None:
    """Remove entries of ``key``'s split, size and mode built from another version of the site.

    A process still reading one keeps its memory map (POSIX unlinks lazily).
    """
    prefix = f"{key.split}-{key.image_size}px-{key.preprocess}-"
    for entry in list_entries(cache_dir):
        if entry.path.name.startswith(prefix) and entry.fingerprint != key.fingerprint:
            entry.path.with_suffix(".json").unlink(missing_ok=True)
            entry.path.unlink(missing_ok=True)


def clear_cache(cache_dir: Path) -> int:
    """Remove every entry, lock and leftover temporary file in ``cache_dir``; return the bytes freed."""
    freed = 0
    for path in cache_dir.iterdir() if cache_dir.is_dir() else []:
        if path.is_file() and (path.suffix in (".npy", ".json", ".tmp", ".lock")):
            freed += path.stat().st_size
            path.unlink(missing_ok=True)
    return freed

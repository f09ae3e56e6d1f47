"""Synthetic ophthalmology sites: procedurally drawn fundus photos or OCT B-scans.

The label is caused by anatomy (the vertical cup-to-disc ratio for fundus, the
nerve-fibre-layer thickness for OCT) through a noisy threshold. Every site has
its own acquisition profile (colour cast, blur, noise, a fixed camera artifact,
...), prevalence and demographic mix, so federated methods and fairness
analyses have real heterogeneity to deal with. See ``fedeye/sites/README.md``
for the data sheet. Drawing is pure numpy; only :func:`synthesize_sites`
touches the disk.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import tomli_w
from PIL import Image
from scipy.ndimage import gaussian_filter

from fedeye.errors import ConfigError, SiteExistsError

Modality = Literal["fundus", "oct"]
RACES = ("Asian", "Black", "White")
HOSPITALS = (
    "St. Aurelia Eye Hospital",
    "Northgate University Eye Clinic",
    "Riverside Ophthalmology Centre",
    "Lakeview Regional Hospital",
    "Hillcrest Vision Institute",
    "Harbour City Medical Centre",
    "Mount Calder Eye Infirmary",
    "Westfield Community Hospital",
)
# Fundus background RGB by pigmentation (darker, browner with more pigment).
PIGMENT_RGB = {"White": (0.80, 0.36, 0.16), "Asian": (0.66, 0.29, 0.13), "Black": (0.47, 0.22, 0.11)}
# Peak opacity of the optic disc over the background: lower contrast with more pigment.
DISC_CONTRAST = {"White": 0.95, "Asian": 0.90, "Black": 0.80}
VCDR_THRESHOLD = 0.53
RNFL_THRESHOLD = 0.78


# ------------------------------------------------------------------ profiles


@dataclass(frozen=True)
class SiteProfile:
    """Acquisition profile, prevalence and demographics of one synthetic site."""

    name: str
    modality: Modality
    prevalence: float  # share of eyes with (latent) glaucoma
    race_mix: tuple[float, float, float]  # probabilities of RACES
    hispanic_frac: float
    male_frac: float
    age_mean: float
    gain: tuple[float, float, float]  # per-channel colour cast (OCT: first is intensity)
    gamma: float  # contrast curve, pixel ** gamma
    gradient: float  # amplitude of a linear illumination gradient
    gradient_angle: float  # direction of that gradient, radians
    vignette: float  # brightness lost at the edge of the field of view
    blur: float  # Gaussian blur sigma in pixels at 128 px
    noise: float  # additive Gaussian noise std (OCT: speckle strength)
    resolution: float  # downsample factor before upsampling back, 1 = none
    jpeg_quality: int  # 0 = no JPEG round trip
    fov: float  # field-of-view radius as a fraction of half the image (OCT: tilt)
    artifact: Literal["dust", "mark"]  # fixed camera artifact
    artifact_xy: tuple[float, float]  # its position, fraction of image size


def make_profile(rng: np.random.Generator, *, name: str, modality: Modality) -> SiteProfile:
    """Draw one site's profile; all ranges are documented in the README."""
    race = rng.dirichlet((1.2, 1.2, 1.2))
    artifact: Literal["dust", "mark"] = "dust" if rng.random() < 0.5 else "mark"
    corner = (float(rng.choice((0.06, 0.82))), float(rng.choice((0.05, 0.93))))
    dust = (float(rng.uniform(0.3, 0.7)), float(rng.uniform(0.25, 0.75)))
    return SiteProfile(
        name=name,
        modality=modality,
        prevalence=_r(rng.uniform(0.3, 0.6)),
        race_mix=(_r(race[0]), _r(race[1]), _r(1 - _r(race[0]) - _r(race[1]))),
        hispanic_frac=_r(rng.uniform(0.05, 0.4)),
        male_frac=_r(rng.uniform(0.4, 0.6)),
        age_mean=_r(rng.uniform(52, 70)),
        gain=(_r(rng.uniform(0.8, 1.2)), _r(rng.uniform(0.8, 1.2)), _r(rng.uniform(0.75, 1.25))),
        gamma=_r(rng.uniform(0.75, 1.35)),
        gradient=_r(rng.uniform(0.0, 0.3)),
        gradient_angle=_r(rng.uniform(0, 2 * np.pi)),
        vignette=_r(rng.uniform(0.0, 0.4)),
        blur=_r(rng.uniform(0.0, 1.2)),
        noise=_r(rng.uniform(0.005, 0.04)),
        resolution=_r(rng.uniform(0.45, 1.0)),
        jpeg_quality=int(rng.choice((0, 40, 60, 85))),
        fov=_r(rng.uniform(0.86, 0.98)) if modality == "fundus" else _r(rng.uniform(-0.12, 0.12)),
        artifact=artifact,
        artifact_xy=corner if artifact == "mark" else dust,
    )


def _r(x: float) -> float:
    """Round a drawn parameter so profiles print and serialise compactly."""
    return round(float(x), 4)


# -------------------------------------------------------------- demographics


@dataclass(frozen=True)
class Subject:
    """One eye of one synthetic patient, with the anatomy that decides its label."""

    patient_id: str
    eye: Literal["OD", "OS"]
    age: int
    sex: Literal["M", "F"]
    race: str
    ethnicity: str
    diseased: bool  # latent disease state, drives the anatomy (never the label directly)


def draw_subjects(rng: np.random.Generator, profile: SiteProfile, *, count: int, prefix: str) -> list[Subject]:
    """Draw ``count`` eyes; most patients contribute both eyes."""
    subjects: list[Subject] = []
    patient = 0
    while len(subjects) < count:
        patient += 1
        subjects += _patient_eyes(rng, profile, f"{prefix}-p{patient:04d}")
    return subjects[:count]


def _patient_eyes(rng: np.random.Generator, profile: SiteProfile, patient_id: str) -> list[Subject]:
    race = str(rng.choice(RACES, p=np.asarray(profile.race_mix) / sum(profile.race_mix)))
    ethnicity = "Hispanic" if rng.random() < profile.hispanic_frac else "Non-Hispanic"
    age = int(np.clip(rng.normal(profile.age_mean, 10), 25, 95))
    sex: Literal["M", "F"] = "M" if rng.random() < profile.male_frac else "F"
    eyes: list[Literal["OD", "OS"]] = ["OD", "OS"] if rng.random() < 0.7 else [str(rng.choice(("OD", "OS")))]  # type: ignore[list-item]
    patient_disease = rng.random() < profile.prevalence
    return [
        Subject(
            patient_id,
            eye,
            age,
            sex,
            race,
            ethnicity,
            bool(patient_disease if rng.random() < 0.8 else rng.random() < profile.prevalence),
        )
        for eye in eyes
    ]


# ------------------------------------------------------------------ fundus


def draw_vcdr(rng: np.random.Generator, subject: Subject) -> tuple[float, int]:
    """Draw the vertical cup-to-disc ratio and the label it causes."""
    mean = 0.70 if subject.diseased else 0.35
    vcdr = float(np.clip(rng.normal(mean + 0.002 * (subject.age - 60), 0.08), 0.12, 0.9))
    label = int(vcdr + rng.normal(0, 0.04) > VCDR_THRESHOLD)
    return vcdr, label


def draw_fundus(rng: np.random.Generator, subject: Subject, *, vcdr: float, size: int) -> np.ndarray:
    """Render a healthy-looking fundus with the given cup; float RGB in [0, 1]."""
    yy, xx = _grid(size)
    nasal = 1.0 if subject.eye == "OD" else -1.0  # OD: disc right of centre, macula left
    disc_d = rng.uniform(0.18, 0.21)
    disc = (0.5 + nasal * rng.uniform(0.18, 0.21), 0.5 + rng.normal(0, 0.015))
    macula = (disc[0] - nasal * 2.5 * disc_d, disc[1] + 0.03)
    img = _background(rng, subject.race, xx, yy, size)
    img *= 1 - 0.45 * _blob(xx, yy, macula, 0.45 * disc_d)[..., None] * _rgb(0.8, 1.0, 1.0)
    cup_alpha = _draw_disc(img, xx, yy, disc, disc_d, vcdr, rng, subject)
    vessels = _vessel_map(rng, disc, disc_d, -nasal, size) * (1 - 0.9 * cup_alpha)
    img *= 1 - vessels[..., None] * _rgb(0.45, 0.7, 0.65)
    return np.asarray(np.clip(img, 0, 1), np.float32)


def _background(rng: np.random.Generator, race: str, xx: np.ndarray, yy: np.ndarray, size: int) -> np.ndarray:
    base = _rgb(*PIGMENT_RGB[race]) * np.float32(rng.normal(1.0, 0.05))
    texture = 0.08 * _smooth_noise(rng, size, 0.04) + 0.04 * _smooth_noise(rng, size, 0.01)
    falloff = 1 - 0.3 * ((xx - 0.5) ** 2 + (yy - 0.5) ** 2) / 0.25
    return base * ((1 + texture) * falloff)[..., None]


def _smooth_noise(rng: np.random.Generator, size: int, sigma: float) -> np.ndarray:
    """Unit-variance Gaussian random field; smooth fields are drawn coarse and upsampled."""
    factor = max(1, min(8, int(sigma * size / 2)))
    coarse = -(-size // factor)
    field = gaussian_filter(rng.standard_normal((coarse, coarse)).astype(np.float32), sigma * size / factor)
    if factor > 1:
        field = np.asarray(Image.fromarray(field, mode="F").resize((size, size), Image.Resampling.BICUBIC))
    return np.asarray(field / (field.std() + 1e-6), np.float32)


@functools.lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Row and column coordinates as fractions of the image size (read-only)."""
    yy, xx = (g.astype(np.float32) / size for g in np.mgrid[0:size, 0:size])
    yy.flags.writeable = xx.flags.writeable = False
    return yy, xx


def _rgb(*values: float) -> np.ndarray:
    return np.array(values, dtype=np.float32)


def _blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Blur the two spatial axes; skipped when the blur is imperceptible."""
    if sigma < 0.3:
        return img
    return np.asarray(gaussian_filter(img, (sigma, sigma, 0)[: img.ndim]), np.float32)


def _blob(xx: np.ndarray, yy: np.ndarray, centre: tuple[float, float], sigma: float) -> np.ndarray:
    return np.exp(-((xx - centre[0]) ** 2 + (yy - centre[1]) ** 2) / (2 * sigma**2))


def _ellipse_alpha(
    xx: np.ndarray, yy: np.ndarray, centre: tuple[float, float], rx: float, ry: float, edge: float
) -> np.ndarray:
    r = np.sqrt(((xx - centre[0]) / rx) ** 2 + ((yy - centre[1]) / ry) ** 2)
    return np.clip((1 - r) / edge + 0.5, 0, 1)


def _draw_disc(
    img: np.ndarray,
    xx: np.ndarray,
    yy: np.ndarray,
    disc: tuple[float, float],
    disc_d: float,
    vcdr: float,
    rng: np.random.Generator,
    subject: Subject,
) -> np.ndarray:
    """Paint disc and cup onto ``img`` in place; return the cup's opacity map."""
    rv, rh = disc_d / 2, 0.9 * disc_d / 2
    disc_alpha = DISC_CONTRAST[subject.race] * _ellipse_alpha(xx, yy, disc, rh, rv, 0.3)
    img[:] = img * (1 - disc_alpha[..., None]) + _rgb(0.95, 0.62, 0.36) * disc_alpha[..., None]
    temporal = -1.0 if subject.eye == "OD" else 1.0
    cup = (disc[0] + temporal * 0.08 * rh, disc[1])
    hcdr = vcdr * rng.uniform(0.8, 0.95)
    cup_alpha = 0.95 * _ellipse_alpha(xx, yy, cup, hcdr * rh, vcdr * rv, 0.25)
    img[:] = img * (1 - cup_alpha[..., None]) + _rgb(1.0, 0.96, 0.86) * cup_alpha[..., None]
    return cup_alpha


def _vessel_map(
    rng: np.random.Generator, disc: tuple[float, float], disc_d: float, temporal: float, size: int
) -> np.ndarray:
    """Opacity of vessels: four arcades leaving the disc rim, two branches on each."""
    theta0 = np.array([-1.0, 1.0, -2.3, 2.3]) + rng.normal(0, 0.12, 4)
    bend = np.array([0.018, -0.018, 0.0, 0.0])[:, None]
    heading = np.pi - theta0 if temporal < 0 else theta0
    rim = np.asarray(disc) + 0.35 * disc_d * np.stack([np.cos(heading), np.sin(heading)], axis=1)
    arcades, angles = _walks(rng, rim, theta0, bend, 65, mirror=temporal < 0)
    parent, step = np.repeat(np.arange(4), 2), rng.integers(10, 55, size=8)
    offsets = rng.choice((-0.7, 0.7), size=8)
    branches, _ = _walks(rng, arcades[parent, step], angles[parent, step] + offsets, 0.0, 35, mirror=False)
    thick = _line_blur(_stamp(arcades, size), 0.007 * size)
    return np.clip(thick + 0.8 * _line_blur(_stamp(branches, size), 0.0045 * size), 0, 1)


def _walks(
    rng: np.random.Generator,
    starts: np.ndarray,
    theta0: np.ndarray,
    bend: np.ndarray | float,
    steps: int,
    *,
    mirror: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """Random walks with a steady bend, ``(P, steps, 2)`` points and their headings.

    Headings are drawn for a tree whose temporal side is +x; ``mirror`` flips
    them left-right.
    """
    angles = theta0[:, None] + np.cumsum(bend + rng.normal(0, 0.06, (len(theta0), steps)), axis=1)
    angles = np.pi - angles if mirror else angles
    moves = 0.006 * np.stack([np.cos(angles), np.sin(angles)], axis=-1)
    return starts[:, None, :] + np.cumsum(moves, axis=1), angles


def _stamp(paths: np.ndarray, size: int) -> np.ndarray:
    """Canvas with every pixel that a ``(P, N, 2)`` set of paths crosses set to one."""
    canvas = np.zeros((size, size), np.float32)
    pts = paths * size
    seg = np.linspace(0, 1, max(2, int(np.ceil(0.006 * size / 0.5))), endpoint=False)
    steps = (pts[:, 1:] - pts[:, :-1])[:, :, None, :]
    dense = (pts[:, :-1, None, :] + seg[None, None, :, None] * steps).reshape(-1, 2)
    cols, rows = np.round(dense).astype(int).T
    keep = (rows >= 0) & (rows < size) & (cols >= 0) & (cols < size)
    canvas[rows[keep], cols[keep]] = 1.0
    return canvas


def _line_blur(canvas: np.ndarray, sigma: float) -> np.ndarray:
    return np.asarray(gaussian_filter(canvas, sigma) * np.sqrt(2 * np.pi) * sigma * 1.2, np.float32)


def apply_fundus_profile(rng: np.random.Generator, img: np.ndarray, profile: SiteProfile) -> np.ndarray:
    """Acquire a rendered fundus with a site's camera; returns uint8 RGB."""
    size = img.shape[0]
    light, dust, mark = _camera_fields(profile, size)
    img = _blur(img * light, profile.blur * size / 128) * dust
    return _degrade(rng, np.where(mark, np.float32(0.9), img), profile)


@functools.lru_cache(maxsize=32)
def _camera_fields(profile: SiteProfile, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-site fixed fields: illumination x colour x field of view, dust, and mark mask.

    Shapes are HxWx1/HxWx3 for fundus and HxW for OCT.
    """
    yy, xx = (g - 0.5 for g in _grid(size))
    colour = profile.modality == "fundus"
    light = np.ones((size, size), np.float32)
    if colour:
        r = np.sqrt(xx**2 + yy**2) / (0.5 * profile.fov)
        cos, sin = np.cos(profile.gradient_angle), np.sin(profile.gradient_angle)
        light = (1 + profile.gradient * 2 * (xx * cos + yy * sin)) * (1 - profile.vignette * r**2)
        light = light * np.clip((1 - r) * size * 0.5 * profile.fov / 1.5 + 0.5, 0, 1)
    ax, ay = profile.artifact_xy
    dust = 1 - 0.45 * _blob(xx + 0.5, yy + 0.5, (ax, ay), 0.018) * (profile.artifact == "dust")
    mark = (
        (xx + 0.5 >= ax)
        & (xx + 0.5 < ax + 0.12)
        & (np.abs(yy + 0.5 - ay) < 0.02)
        & (np.floor((xx + 0.5 - ax) * 50) % 2 == 0)
        & (profile.artifact == "mark")
    )
    if colour:
        return (light[..., None] * _rgb(*profile.gain)).astype(np.float32), dust[..., None], mark[..., None]
    return (light * np.float32(profile.gain[0])).astype(np.float32), dust, mark


def _degrade(rng: np.random.Generator, img: np.ndarray, profile: SiteProfile) -> np.ndarray:
    """Resolution loss, sensor noise and JPEG compression."""
    size = img.shape[0]
    pixels = Image.fromarray(_gamma_lut(profile.gamma)[_to_uint8(img)])
    low = max(8, round(size * profile.resolution))
    if low < size:
        pixels = pixels.resize((low, low), Image.Resampling.BILINEAR).resize((size, size), Image.Resampling.BILINEAR)
    noise = rng.standard_normal(img.shape, dtype=np.float32) * np.float32(profile.noise)
    noisy = np.asarray(pixels, np.float32) / 255 + noise
    out = _to_uint8(noisy)
    if profile.jpeg_quality:
        buffer = io.BytesIO()
        Image.fromarray(out).save(buffer, format="JPEG", quality=profile.jpeg_quality)
        out = np.asarray(Image.open(buffer))
    return out


@functools.lru_cache(maxsize=32)
def _gamma_lut(gamma: float) -> np.ndarray:
    """Lookup table applying ``x ** gamma`` to uint8 pixels."""
    return _to_uint8((np.arange(256) / 255.0) ** gamma)


def _to_uint8(img: np.ndarray) -> np.ndarray:
    return np.asarray(np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)


# --------------------------------------------------------------------- OCT

# Retinal layers from the inner surface down: (name, thickness as image fraction, brightness)
OCT_LAYERS = (
    ("RNFL", 0.060, 0.85),
    ("GCL", 0.040, 0.45),
    ("IPL", 0.035, 0.62),
    ("INL", 0.035, 0.22),
    ("OPL", 0.022, 0.55),
    ("ONL", 0.070, 0.12),
    ("IS/OS", 0.014, 0.80),
    ("OS", 0.016, 0.30),
    ("RPE", 0.022, 0.98),
)


def draw_rnfl(rng: np.random.Generator, subject: Subject) -> tuple[float, int]:
    """Draw the relative RNFL thickness (1 = typical healthy) and the label it causes."""
    mean = 0.55 if subject.diseased else 1.0
    rnfl = float(np.clip(rng.normal(mean - 0.004 * (subject.age - 60), 0.1), 0.2, 1.5))
    return rnfl, int(rnfl + rng.normal(0, 0.05) < RNFL_THRESHOLD)


def draw_oct(rng: np.random.Generator, subject: Subject, *, rnfl: float, tilt: float, size: int) -> np.ndarray:
    """Render a foveal B-scan, float gray in [0, 1]."""
    u = np.arange(size, dtype=np.float32) / size
    nasal = 1.0 if subject.eye == "OD" else -1.0
    fovea = 0.5 + rng.normal(0, 0.03)
    pit = np.exp(-(((u - fovea) / 0.09) ** 2))
    rpe_bottom = 0.68 + rng.uniform(0.2, 0.6) * (u - 0.5) ** 2 + (tilt + rng.normal(0, 0.02)) * (u - 0.5)
    thickness = np.stack([_layer_profile(name, t, u, pit, nasal, fovea, rnfl) for name, t, _ in OCT_LAYERS])
    bounds = rpe_bottom - np.concatenate([np.cumsum(thickness[::-1], 0)[::-1], np.zeros((1, size))], 0)
    rows = (np.arange(size, dtype=np.float32) / size)[:, None]
    index = (rows[None] >= bounds[:, None, :]).sum(0)
    levels = np.array([0.04] + [b for _, _, b in OCT_LAYERS] + [0.45], np.float32)
    img = levels[index]
    choroid = index == len(OCT_LAYERS) + 1
    depth = rows - rpe_bottom[None, :]
    img = np.where(
        choroid, img * (1 + 0.4 * _smooth_noise(rng, size, 0.01)) * np.exp(-np.maximum(depth, 0) / 0.12), img
    )
    return np.asarray(np.clip(gaussian_filter(img, (0.6 * size / 128, 0.3 * size / 128)), 0, 1), np.float32)


def _layer_profile(
    name: str, base: float, u: np.ndarray, pit: np.ndarray, nasal: float, fovea: float, rnfl: float
) -> np.ndarray:
    if name == "RNFL":
        toward_disc = 1 / (1 + np.exp(-nasal * (u - fovea) * 10))
        return base * rnfl * (0.35 + 1.0 * toward_disc) * (1 - 0.9 * pit)
    if name in ("GCL", "IPL", "INL", "OPL"):
        return base * (1 - 0.85 * pit)
    if name == "ONL":
        return base * (1 + 0.4 * pit)
    return np.full_like(u, base)


def apply_oct_profile(rng: np.random.Generator, img: np.ndarray, profile: SiteProfile) -> np.ndarray:
    """Acquire a B-scan with a site's scanner: speckle, contrast, blur; uint8 gray."""
    size = img.shape[0]
    light, dust, mark = _camera_fields(profile, size)
    look = 4 * profile.noise + 0.05
    speckle = rng.gamma(1 / look, look, img.shape).astype(np.float32)
    img = (img.astype(np.float32) * speckle + np.float32(0.04 * profile.gain[2])) * light
    img = _blur(img, profile.blur * size / 128) * dust
    return _degrade(rng, np.where(mark, np.float32(0.9), img), profile)


# ---------------------------------------------------------------- the sites


@dataclass(frozen=True)
class SynthImage:
    """One synthetic image with its manifest record."""

    file: str
    label: int
    subject: Subject
    measure: float  # vCDR (fundus) or relative RNFL thickness (OCT)
    pixels: np.ndarray


def synthesize_site_images(
    seed: int, index: int, *, count: int, modality: Modality, size: int
) -> tuple[SiteProfile, list[SynthImage]]:
    """Draw one site's profile and all its images (pure, deterministic)."""
    rng = np.random.default_rng([seed, index])
    name = _hospital_name(seed, index)
    profile = make_profile(rng, name=name, modality=modality)
    subjects = draw_subjects(rng, profile, count=count, prefix=f"s{index}")
    images = [_synth_image(np.random.default_rng([seed, index, k]), s, profile, size) for k, s in enumerate(subjects)]
    return profile, images


def _hospital_name(seed: int, index: int) -> str:
    order = np.random.default_rng(seed).permutation(len(HOSPITALS))
    name = HOSPITALS[order[(index - 1) % len(HOSPITALS)]]
    return name if index <= len(HOSPITALS) else f"{name} {1 + (index - 1) // len(HOSPITALS)}"


def _synth_image(rng: np.random.Generator, subject: Subject, profile: SiteProfile, size: int) -> SynthImage:
    if profile.modality == "fundus":
        measure, label = draw_vcdr(rng, subject)
        pixels = apply_fundus_profile(rng, draw_fundus(rng, subject, vcdr=measure, size=size), profile)
    else:
        measure, label = draw_rnfl(rng, subject)
        raw = draw_oct(rng, subject, rnfl=measure, tilt=profile.fov, size=size)
        pixels = apply_oct_profile(rng, raw, profile)
    return SynthImage(f"images/{subject.patient_id}_{subject.eye}.png", label, subject, round(measure, 4), pixels)


def synthesize_sites(
    out: Path,
    *,
    sites: int,
    images_per_site: int,
    modality: Modality = "fundus",
    seed: int = 0,
    size: int = 128,
    overwrite: bool = False,
) -> list[Path]:
    """Write ``sites`` synthetic site folders ``out/site-1`` ... ``out/site-N``.

    Each folder holds ``manifest.csv`` (no split column: the loader splits by
    patient), ``site.toml``, ``profile.json`` (the drawn acquisition profile)
    and ``images/*.png``. Output is byte-identical for the same arguments.
    All sites are written to a temporary folder first and moved into place
    only when complete.

    Raises
    ------
    SiteExistsError
        If a target folder exists and is not empty, unless ``overwrite``.

    >>> synthesize_sites(Path("demo"), sites=4, images_per_site=200)  # doctest: +SKIP
    [PosixPath('demo/site-1'), ..., PosixPath('demo/site-4')]
    """
    if sites < 1 or images_per_site < 1 or size < 32:
        raise ValueError("need sites >= 1, images_per_site >= 1 and size >= 32")
    out = Path(out)
    targets = [out / f"site-{i}" for i in range(1, sites + 1)]
    _refuse_existing(targets, overwrite=overwrite)
    try:
        _write_sites(out, targets, images_per_site=images_per_site, modality=modality, seed=seed, size=size)
    except OSError as err:
        raise ConfigError(
            f"cannot write sites into {out}: {err.strerror or err} ({err.filename}); choose another output folder"
        ) from err
    return targets


def _write_sites(
    out: Path, targets: list[Path], *, images_per_site: int, modality: Modality, seed: int, size: int
) -> None:
    """Write every site into a staging folder under ``out``, then move each into place."""
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".synth-", dir=out))
    try:
        for index, target in enumerate(targets, start=1):
            profile, images = synthesize_site_images(seed, index, count=images_per_site, modality=modality, size=size)
            _write_site(staging / target.name, profile, images)
        for target in targets:
            if target.exists():
                shutil.rmtree(target)
            (staging / target.name).rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _refuse_existing(targets: list[Path], *, overwrite: bool) -> None:
    busy = [t for t in targets if t.exists() and (not t.is_dir() or any(t.iterdir()))]
    if busy and not overwrite:
        raise SiteExistsError(
            f"refusing to overwrite non-empty folder(s): {', '.join(map(str, busy))}; "
            "choose another output folder or pass overwrite=True"
        )
    for target in busy:
        if not target.is_dir():
            target.unlink()


def _write_site(folder: Path, profile: SiteProfile, images: list[SynthImage]) -> None:
    (folder / "images").mkdir(parents=True)
    for image in images:
        Image.fromarray(image.pixels).save(folder / image.file, format="PNG", compress_level=1)
    _write_manifest(folder / "manifest.csv", images, profile.modality)
    info = {
        "name": profile.name,
        "modality": profile.modality,
        "task": "glaucoma",
        "label_names": ["normal", "glaucoma"],
    }
    (folder / "site.toml").write_text(tomli_w.dumps(info), encoding="utf-8")
    (folder / "profile.json").write_text(json.dumps(asdict(profile), indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _write_manifest(path: Path, images: list[SynthImage], modality: Modality) -> None:
    measure = "vcdr" if modality == "fundus" else "rnfl"
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["image", "label", "patient_id", "eye", "age", "sex", "race", "ethnicity", measure])
        for im in images:
            s = im.subject
            writer.writerow([im.file, im.label, s.patient_id, s.eye, s.age, s.sex, s.race, s.ethnicity, im.measure])

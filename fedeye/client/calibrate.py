"""``fedeye calibrate`` and ``fedeye adapt``: re-fit a model's operating point at one site, write a new model file.

- :func:`calibrate_file`: from a small **labelled** local set, the threshold
  (for the model's target, or a new one) and the calibration (bias and temperature), exactly as the
  federation fits them on its pooled summaries
  (:func:`fedeye.fairness.operating_point.fit_local_operating_point`).
- :func:`adapt_file`: from **unlabelled** images only
  (:mod:`fedeye.client.adapt`).

Both keep the weights' config, replace the stored operating point and append
what they did to the metadata's ``history``; the input file is not changed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Subset

from fedeye.client.adapt import AdaptSettings, adapt_model, report_metadata
from fedeye.client.evaluate import check_labels_fit, open_external_site, site_images, stored_operating_point
from fedeye.client.training import ImageDataset, predict
from fedeye.errors import ConfigError, ModelError
from fedeye.fairness.operating_point import (
    METADATA_KEY,
    ModelOperatingPoint,
    Target,
    fit_local_operating_point,
    positive_log_odds,
)
from fedeye.models import load_model, save_model

#: Fewest images of each class ``fedeye calibrate`` accepts (the benchmark measures how many it needs).
MIN_LABELS_PER_CLASS = 5


def calibrate_file(
    model_path: Path,
    site_dir: Path,
    out: Path,
    *,
    split: str = "all",
    target: Target | None = None,
    max_labels: int | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Fit threshold and calibration on the labelled images of ``site_dir``; write the model to ``out``."""
    model, cfg, meta = load_model(model_path)
    stored = stored_operating_point(model_path, meta)
    site = open_external_site(site_dir)
    check_labels_fit(site, cfg, model_path)
    dataset, used, _ = site_images(site, split, cfg)
    dataset = _at_most(dataset, max_labels, seed)
    probs, labels = predict(model, dataset)
    goal: Target = target if target is not None else _stored_target(stored)
    point = fit_labelled(probs, labels, target=goal)
    record = {
        "command": "calibrate",
        "site_dir": str(site_dir),
        "split": used,
        "images": int(len(labels)),
        "positives": int((labels == 1).sum()),
        "previous": None if stored is None else stored.to_metadata(),
    }
    _write(out, model, cfg, meta, point, record)
    return {"out": str(out), "operating_point": point.to_metadata(), **record}


def fit_labelled(probs: np.ndarray, labels: np.ndarray, *, target: Target) -> ModelOperatingPoint:
    """The operating point of a labelled local set; refuses one too small to fit."""
    if probs.ndim != 2 or probs.shape[1] != 2:
        raise ConfigError(
            f"fedeye calibrate fits a threshold for binary tasks; this model has {probs.shape[1]} classes"
        )
    positives, negatives = int((labels == 1).sum()), int((labels != 1).sum())
    if min(positives, negatives) < MIN_LABELS_PER_CLASS:
        raise ConfigError(
            f"the labelled set has {positives} positive and {negatives} negative images; calibration needs at least "
            f"{MIN_LABELS_PER_CLASS} of each (the benchmark's guide: 20 or more of each for a stable threshold); "
            "label more images, or use `fedeye adapt`, which needs no labels"
        )
    return fit_local_operating_point(labels, positive_log_odds(probs), target=target, source="calibrate")


def adapt_file(
    model_path: Path, site_dir: Path, out: Path, *, split: str = "all", settings: AdaptSettings | None = None
) -> dict[str, Any]:
    """Adapt to the unlabelled images of ``site_dir`` (labels, if any, are not read); write to ``out``."""
    model, cfg, meta = load_model(model_path)
    stored = stored_operating_point(model_path, meta)
    dataset, used, _ = site_images(open_external_site(site_dir), split, cfg)
    settings = settings or AdaptSettings()
    point, report = adapt_model(model, dataset, point=stored, settings=settings)
    record = {"command": "adapt", "site_dir": str(site_dir), "split": used, **report_metadata(report)}
    _write(out, model, cfg, meta, point, record)
    return {"out": str(out), "operating_point": point.to_metadata(), **record}


def _stored_target(stored: ModelOperatingPoint | None) -> Target:
    if stored is None or stored.target in ("youden", "p >= 0.5", ""):
        return "youden"
    return float(stored.target)


def _at_most(dataset: ImageDataset, count: int | None, seed: int) -> ImageDataset:
    if count is None or count >= len(dataset):  # type: ignore[arg-type]
        return dataset
    chosen = np.sort(np.random.default_rng(seed).choice(len(dataset), size=count, replace=False))  # type: ignore[arg-type]
    return Subset(dataset, chosen.tolist())


def _write(
    out: Path, model: Any, cfg: Any, meta: dict[str, Any], point: ModelOperatingPoint, record: dict[str, Any]
) -> None:
    metadata = dict(meta)
    metadata[METADATA_KEY] = point.to_metadata()
    history = meta.get("history")
    metadata["history"] = [*(history if isinstance(history, list) else []), record]
    try:
        save_model(out, model, cfg, metadata=metadata)
    except OSError as err:
        raise ModelError(f"cannot write model file {out}: {err.strerror or err}; choose another --out") from err

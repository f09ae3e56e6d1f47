"""Evaluate a saved FedEye model on any site folder (``fedeye evaluate``): external validation.

The site may be one the federation never saw, with every image marked
``test``, no split column (the loader then splits by patient) or any mix:
``--split all`` takes every image, and a requested split the site does not
have falls back to every image with a note. Metrics are reported at the
operating point the model file carries (chosen by the federation, or by
``fedeye calibrate``/``fedeye adapt``), with per-image bootstrap 95%
confidence intervals computed here, at the site; a model without one is used
at p >= 0.5.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
from torch.utils.data import ConcatDataset

from fedeye.client.operating_point import metrics_at_point
from fedeye.client.training import ImageDataset, mean_expert_weights, predict
from fedeye.errors import ConfigError, ModelError, Problem, SiteDataError, errors_only
from fedeye.fairness.operating_point import DEFAULT_POINT, METADATA_KEY, ModelOperatingPoint
from fedeye.fairness.reliability import reliability_diagram
from fedeye.metrics import classification_metrics
from fedeye.models import load_model
from fedeye.models.config import ModelConfig
from fedeye.sites.base import Sample, SiteFormat, open_site
from fedeye.sites.dataset import SiteDataset

Split = Literal["train", "val", "test", "all"]
SPLITS = ("train", "val", "test")


class ExternalSite:
    """A site opened for evaluation only: a split with no image is not an error.

    Training needs train, val and test; an external validation set often
    has only ``test`` images (or only one split). Every other problem of the
    site still raises, as :meth:`SiteFormat.samples` does.
    """

    def __init__(self, site: SiteFormat) -> None:
        self._site = site

    def __getattr__(self, name: str) -> Any:
        return getattr(self._site, name)

    def samples(self) -> list[Sample]:
        """Every sample, or :class:`SiteDataError` listing every error other than an empty split."""
        result = self._site.scan()
        errors = [p for p in errors_only(result.problems) if not _empty_split(p)]
        if errors:
            raise SiteDataError(self._site.site_name, errors)
        return result.samples


def _empty_split(problem: Problem) -> bool:
    return problem.field == "split" and problem.row is None and problem.message.endswith("has no images")


def open_external_site(site_dir: Path) -> SiteFormat:
    """Open any site folder for evaluation (see :class:`ExternalSite`)."""
    return cast(SiteFormat, ExternalSite(open_site(site_dir)))


def site_images(site: SiteFormat, split: str, model: ModelConfig) -> tuple[ImageDataset, str, str | None]:
    """The images of ``split`` (``all``: every split the site has) as ``model`` reads them: (dataset, split used, note).

    Image size and preprocessing are the model's (its ``preprocess``, else the
    site's own). A split the site does not have falls back to every image,
    with a note saying so (an external validation set often marks every image
    ``test``).
    """
    if split not in (*SPLITS, "all"):
        raise ConfigError(f"--split: got {split!r}; use train, val, test or all (every image: an unseen site)")
    present = [s for s in SPLITS if any(sample.split == s for sample in site.samples())]
    note = None
    if split != "all" and split not in present:
        note = f"this site has no {split!r} images; evaluated every image (splits: {', '.join(present)}) instead"
        split = "all"
    size, mode = int(model.img_size or 0), model.preprocess
    if split == "all":
        return ConcatDataset([SiteDataset(site, s, image_size=size, preprocess=mode) for s in present]), "all", note
    return SiteDataset(site, split, image_size=size, preprocess=mode), split, note


def evaluate_model_on_site(
    model_path: Path, site_dir: Path, *, split: str = "test", resamples: int = 1000
) -> dict[str, Any]:
    """Aggregate metrics of a saved model on one split (or ``all`` images) of one site.

    The result holds ``metrics`` (AUC, and at the model's operating point
    sensitivity, specificity, balanced accuracy, PPV, NPV and accuracy, each
    rate with ``-ci-low``/``-ci-high``, plus ECE before and after the stored
    calibration), ``operating_point`` (what the model file carries, or the
    0.5 default) and ``note`` (a split fallback). For a model with domain
    experts it also holds ``experts``: the router's mean mixing weight per
    expert over these images, keyed by the expert's site when the model file
    names them. A binary task's ``reliability`` holds its reliability-diagram
    bins before and, with a stored calibration, after it
    (:meth:`~fedeye.fairness.reliability.ReliabilityDiagram.to_json`; every
    bin, as nothing leaves the site); None for a multiclass task.
    """
    model, cfg, meta = load_model(model_path)
    stored = stored_operating_point(model_path, meta)
    site = open_external_site(site_dir)
    check_labels_fit(site, cfg, model_path)
    dataset, used, note = site_images(site, split, cfg)
    probs, labels = predict(model, dataset)
    point = stored or DEFAULT_POINT
    metrics = classification_metrics(labels, probs)
    reliability = None
    if probs.shape[1] == 2:
        metrics.update(metrics_at_point(probs, labels, point, resamples=resamples))
        reliability = reliability_diagram(labels, probs, None if stored is None else stored.calibration)
    return {
        "model": str(model_path),
        "site": site.info.name,
        "site_dir": str(site_dir),
        "split": used,
        "note": note,
        "num_examples": int(len(labels)),
        "num_positive": int((labels > 0).sum()),
        "loss": float(-np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-12, None)).mean()),
        "metrics": metrics,
        "operating_point": point.to_metadata() | {"stored": stored is not None},
        "experts": _experts(model, dataset, meta),
        "reliability": None if reliability is None else reliability.to_json(),
    }


def check_labels_fit(site: SiteFormat, model: ModelConfig, model_path: Path) -> None:
    """Refuse a site whose labels the model has no output for (a model trained for another task)."""
    beyond = sorted({s.label for s in site.samples() if s.label >= model.num_classes})
    if beyond:
        raise ConfigError(
            f"site {site.site_name!r} has labels {beyond[:5]}, but {model_path} has {model.num_classes} classes "
            f"(labels 0..{model.num_classes - 1}): it was trained for another task. Use a site with the model's "
            "label_names, or a model trained for this site's task"
        )


def stored_operating_point(model_path: Path, meta: dict[str, Any]) -> ModelOperatingPoint | None:
    """The operating point a model file's metadata carries (None: none); a malformed one raises :class:`ModelError`."""
    raw = meta.get(METADATA_KEY)
    fix = "restore a backup of the model file, or re-save it without this entry (then `fedeye calibrate` fits one)"
    if raw is not None and not isinstance(raw, dict):
        raise ModelError(f"{model_path}: metadata {METADATA_KEY!r} is a {type(raw).__name__}, not a table; {fix}")
    try:
        point = ModelOperatingPoint.from_metadata(meta)
    except (KeyError, TypeError, ValueError) as err:
        raise ModelError(
            f"{model_path}: metadata {METADATA_KEY!r} is malformed ({type(err).__name__}: {err}); {fix}"
        ) from None
    if point is not None:
        numbers = (point.log_odds, point.bias, point.temperature)
        if not all(math.isfinite(x) for x in numbers) or point.temperature <= 0:
            raise ModelError(
                f"{model_path}: metadata {METADATA_KEY!r} has log_odds {point.log_odds}, bias {point.bias}, "
                f"temperature {point.temperature}; expected finite numbers and a temperature above 0; {fix}"
            )
    return point


def _experts(model: Any, dataset: ImageDataset, meta: dict[str, Any]) -> dict[str, float] | None:
    mix = mean_expert_weights(model, dataset)
    listed = meta.get("experts")
    names = [str(n) if n else "" for n in listed] if isinstance(listed, list) else []
    return (
        None
        if mix is None
        else {(names[k] if k < len(names) and names[k] else f"expert {k}"): float(w) for k, w in enumerate(mix)}
    )

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

from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
from torch.utils.data import ConcatDataset

from fedeye.client.operating_point import metrics_at_point
from fedeye.client.training import ImageDataset, mean_expert_weights, predict
from fedeye.errors import ConfigError, Problem, SiteDataError, errors_only
from fedeye.fairness.operating_point import DEFAULT_POINT, ModelOperatingPoint
from fedeye.fairness.reliability import reliability_diagram
from fedeye.metrics import classification_metrics
from fedeye.models import load_model
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


def site_images(site: SiteFormat, split: str, *, image_size: int) -> tuple[ImageDataset, str, str | None]:
    """The images of ``split`` (``all``: every split the site has): (dataset, split used, note or None).

    A split the site does not have falls back to every image, with a note
    saying so (an external validation set often marks every image ``test``).
    """
    if split not in (*SPLITS, "all"):
        raise ConfigError(f"--split: got {split!r}; use train, val, test or all (every image: an unseen site)")
    present = [s for s in SPLITS if any(sample.split == s for sample in site.samples())]
    note = None
    if split != "all" and split not in present:
        note = f"this site has no {split!r} images; evaluated every image (splits: {', '.join(present)}) instead"
        split = "all"
    if split == "all":
        return ConcatDataset([SiteDataset(site, s, image_size=image_size) for s in present]), "all", note
    return SiteDataset(site, split, image_size=image_size), split, note


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
    site = open_external_site(site_dir)
    dataset, used, note = site_images(site, split, image_size=int(cfg.img_size or 0))
    probs, labels = predict(model, dataset)
    stored = ModelOperatingPoint.from_metadata(meta)
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


def _experts(model: Any, dataset: ImageDataset, meta: dict[str, Any]) -> dict[str, float] | None:
    mix = mean_expert_weights(model, dataset)
    names = list(meta.get("experts") or [])
    return (
        None
        if mix is None
        else {(names[k] if k < len(names) and names[k] else f"expert {k}"): float(w) for k, w in enumerate(mix)}
    )

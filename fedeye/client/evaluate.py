"""Evaluate a saved FedEye model on any site folder (``fedeye evaluate``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from torch.utils.data import ConcatDataset

from fedeye.client.training import ImageDataset, evaluate_local, mean_expert_weights
from fedeye.errors import ConfigError
from fedeye.models import load_model
from fedeye.sites.base import open_site
from fedeye.sites.dataset import SiteDataset

Split = Literal["train", "val", "test", "all"]
SPLITS = ("train", "val", "test")


def evaluate_model_on_site(model_path: Path, site_dir: Path, *, split: str = "test") -> dict[str, Any]:
    """Aggregate metrics of a saved model on one split (or ``all`` images) of one site.

    For a model with domain experts the result also holds ``experts``: the
    router's mean mixing weight per expert over these images, keyed by the
    expert's site when the model file names them. On a site the federation
    never saw, this says which hospitals' experts it relies on.
    """
    if split not in (*SPLITS, "all"):
        raise ConfigError(f"--split: got {split!r}; use train, val, test or all (every image: an unseen site)")
    model, cfg, meta = load_model(model_path)
    site = open_site(site_dir)
    size = int(cfg.img_size or 0)
    dataset: ImageDataset = (
        ConcatDataset([SiteDataset(site, s, image_size=size) for s in SPLITS]) if split == "all"
        else SiteDataset(site, split, image_size=size)
    )
    result = evaluate_local(model, dataset)
    mix = mean_expert_weights(model, dataset)
    names = list(meta.get("experts") or [])
    experts = None if mix is None else {
        (names[k] if k < len(names) and names[k] else f"expert {k}"): float(w) for k, w in enumerate(mix)
    }
    return {
        "model": str(model_path),
        "site": site.info.name,
        "site_dir": str(site_dir),
        "split": split,
        "num_examples": result.num_examples,
        "num_positive": result.num_positive,
        "loss": result.loss,
        "metrics": result.metrics,
        "experts": experts,
    }

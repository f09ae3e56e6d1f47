"""Evaluate a saved FedEye model on any site folder (``fedeye evaluate``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from fedeye.client.training import evaluate_local
from fedeye.errors import ConfigError
from fedeye.models import load_model
from fedeye.sites.base import open_site
from fedeye.sites.dataset import SiteDataset

Split = Literal["train", "val", "test"]


def evaluate_model_on_site(model_path: Path, site_dir: Path, *, split: str = "test") -> dict[str, Any]:
    """Aggregate metrics of a saved model on one split of one site."""
    if split not in ("train", "val", "test"):
        raise ConfigError(f"--split: got {split!r}; use train, val or test")
    model, cfg, _meta = load_model(model_path)
    site = open_site(site_dir)
    dataset = SiteDataset(site, split, image_size=int(cfg.img_size or 0))
    result = evaluate_local(model, dataset)
    return {
        "model": str(model_path),
        "site": site.info.name,
        "site_dir": str(site_dir),
        "split": split,
        "num_examples": result.num_examples,
        "num_positive": result.num_positive,
        "loss": result.loss,
        "metrics": result.metrics,
    }

"""Which site a ClientApp serves, and its cached data and model.

A simulated site's ClientApp runs in a long-lived Ray actor that serves
many rounds, so decoded images are cached per process.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord

from fedeye.client.site_config import SiteConfig, site_config_for
from fedeye.config import RunConfig
from fedeye.errors import ConfigError
from fedeye.models import ModelConfig, PromptViT, build_model
from fedeye.models.io import load_state
from fedeye.privacy.policy import DPSettings, effective_dp
from fedeye.sites.base import SiteFormat, open_site
from fedeye.sites.dataset import SiteDataset

SITE_DIR_KEY = "site-dir"


def simulated_site_dirs(root: Path) -> list[Path]:
    """The site folders under a simulation data root, in a stable order."""
    if not root.is_dir():
        raise ConfigError(f"data.root: {root} is not a folder; create sites with `fedeye sites synth {root}`")
    dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not dirs:
        raise ConfigError(f"data.root: {root} holds no site folders; create them with `fedeye sites synth {root}`")
    return dirs


def site_dir_for(cfg: RunConfig, node_config: dict[str, Any]) -> Path:
    """Deployment: the node's ``site-dir``. Simulation: the ``partition-id``-th site."""
    if SITE_DIR_KEY in node_config:
        return Path(str(node_config[SITE_DIR_KEY])).expanduser()
    if "partition-id" not in node_config:
        raise ConfigError(f"this SuperNode has no '{SITE_DIR_KEY}' in its node config; start it with --node-config \"{SITE_DIR_KEY}='/path/to/site'\"")
    if cfg.data.root is None:
        raise ConfigError("data.root is not set: a simulation needs the folder that holds the site folders")
    dirs = simulated_site_dirs(cfg.data.root)
    index = int(node_config["partition-id"])
    if index >= len(dirs):
        raise ConfigError(f"simulated site #{index} does not exist: {cfg.data.root} has {len(dirs)} site folders")
    return dirs[index]


@lru_cache(maxsize=8)
def _open(path: str) -> SiteFormat:
    return open_site(Path(path))


@lru_cache(maxsize=2)
def _model(model_json: str) -> PromptViT:
    return build_model(ModelConfig.model_validate_json(model_json), load_backbone=False)


@lru_cache(maxsize=32)
def _dataset(path: str, split: str, image_size: int, augment: bool) -> SiteDataset:
    return SiteDataset(_open(path), split, image_size=image_size, augment=augment)


@dataclass(frozen=True)
class SiteJob:
    """One message's work at one site: the run config and the site folder."""

    cfg: RunConfig
    site_dir: Path
    node_config: dict[str, Any]

    @classmethod
    def resolve(cls, cfg: RunConfig, node_config: dict[str, Any]) -> SiteJob:
        torch.set_num_threads(max(1, int(cfg.simulation.client_cpus)))
        return cls(cfg=cfg, site_dir=site_dir_for(cfg, node_config), node_config=node_config)

    @property
    def site_name(self) -> str:
        return _open(str(self.site_dir)).info.name

    def dataset(self, split: str) -> SiteDataset:
        augment = self.cfg.training.augment and split == "train"
        return _dataset(str(self.site_dir), split, self.image_size, augment)

    @property
    def image_size(self) -> int:
        return int(self.cfg.model.img_size or 0)

    @property
    def site_config(self) -> SiteConfig:
        return site_config_for(self.site_dir, self.node_config)

    def dp_settings(self, *, num_patients: int) -> DPSettings | None:
        """The DP-SGD settings that apply here: the run's request under the site's ceiling."""
        return effective_dp(self.cfg.privacy, self.site_config.privacy, num_patients=num_patients)

    def model(self, arrays: ArrayRecord) -> PromptViT:
        """This process's model instance for the run's architecture, holding ``arrays``.

        Built once per process and overwritten with the global weights on
        every message (every parameter and buffer is in ``arrays``).
        """
        model = _model(self.cfg.model.model_dump_json())
        load_state(model, arrays.to_torch_state_dict())
        return model


"""Which site a ClientApp serves, and its cached data and model.

A simulated site's ClientApp runs in a long-lived Ray actor that serves
many rounds, so opened datasets are also kept per process. Deployment runs
every message in a fresh process: there the site's data cache on disk
(:mod:`fedeye.sites.cache`, in the site's state folder,
:mod:`fedeye.client.state`) saves decoding every image again.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord

from fedeye.client.audit import audit_path
from fedeye.client.site_config import SiteConfig, site_config_for
from fedeye.client.state import SiteState, fedeye_home, site_state_for
from fedeye.config import RunConfig
from fedeye.errors import ConfigError, ModelError
from fedeye.models import ModelConfig, PromptViT, build_model
from fedeye.models.config import FROZEN_BACKBONE_MODES
from fedeye.models.io import load_state
from fedeye.models.prompt_arrays import backbone_fingerprint
from fedeye.privacy.policy import DPSettings, effective_dp
from fedeye.protocol import NODE_PARTITION_ID, NODE_SITE_DIR
from fedeye.sites.base import SiteFormat, open_site
from fedeye.sites.dataset import SiteDataset
from fedeye.sites.layout import simulated_site_dirs
from fedeye.sites.preprocess import PreprocessMode

SITE_DIR_KEY = NODE_SITE_DIR


def site_dir_for(cfg: RunConfig, node_config: dict[str, Any]) -> Path:
    """Deployment: the node's ``site-dir``. Simulation: the ``partition-id``-th site."""
    if SITE_DIR_KEY in node_config:
        return Path(str(node_config[SITE_DIR_KEY])).expanduser()
    if NODE_PARTITION_ID not in node_config:
        raise ConfigError(
            f"this SuperNode has no '{SITE_DIR_KEY}' in its node config; start it with --node-config \"{SITE_DIR_KEY}='/path/to/site'\""
        )
    if cfg.data.root is None:
        raise ConfigError("data.root is not set: a simulation needs the folder that holds the site folders")
    dirs = simulated_site_dirs(cfg.data.root)
    index = int(node_config[NODE_PARTITION_ID])
    if index >= len(dirs):
        raise ConfigError(f"simulated site #{index} does not exist: {cfg.data.root} has {len(dirs)} site folders")
    return dirs[index]


@lru_cache(maxsize=8)
def _open(path: str) -> SiteFormat:
    return open_site(Path(path))


@lru_cache(maxsize=2)
def _model(model_json: str, seed: int) -> PromptViT:
    """The process's model for one architecture.

    In prompt mode only prompts, router and head arrive each round, so the
    frozen backbone must be the coordinator's: loaded from the site's copy of
    ``model.backbone_weights`` (the same path at every site) or, without one,
    initialised from the run's seed exactly as the coordinator does.
    """
    cfg = ModelConfig.model_validate_json(model_json)
    torch.manual_seed(seed)
    # a missing file is not an error here: full arrays overwrite everything, and with
    # partial arrays the backbone fingerprint check names the file
    weights = cfg.backbone_weights
    return build_model(
        cfg, load_backbone=cfg.mode in FROZEN_BACKBONE_MODES and weights is not None and weights.is_file()
    )


_FINGERPRINTS: dict[int, str] = {}


def _fingerprint(model: PromptViT) -> str:
    """The backbone fingerprint of a cached model (its frozen part never changes)."""
    if id(model) not in _FINGERPRINTS:
        _FINGERPRINTS[id(model)] = backbone_fingerprint(model.state_dict())
    return _FINGERPRINTS[id(model)]


@lru_cache(maxsize=32)
def _dataset(
    path: str, split: str, image_size: int, augment: str, cache_dir: str, preprocess: PreprocessMode | None
) -> SiteDataset:
    site = _open(path)
    return SiteDataset(
        site, split, image_size=image_size, augment=augment, cache_dir=Path(cache_dir), preprocess=preprocess
    )


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
        augment = self.cfg.training.augment if split == "train" else "none"
        preprocess = self.cfg.model.preprocess  # the run's, else the site's own (SiteDataset)
        return _dataset(str(self.site_dir), split, self.image_size, augment, str(self.state.cache_dir), preprocess)

    @property
    def state(self) -> SiteState:
        """The site's state folder (node config ``state-dir``, else under ``FEDEYE_HOME``), created if missing."""
        return site_state_for(self.site_dir, self.node_config)

    @property
    def image_size(self) -> int:
        return int(self.cfg.model.img_size or 0)

    @property
    def state_dir(self) -> Path:
        """The site's state folder (approvals, ledger, cache): node config ``state-dir``, else under FEDEYE_HOME."""
        return site_state_for(self.site_dir, self.node_config).root

    def audit_log(self, node_id: int) -> Path:
        """This node's audit file (see :func:`fedeye.client.audit.audit_path`)."""
        return audit_path(self.node_config, home=fedeye_home(), node_id=node_id, site_dir=self.site_dir)

    @property
    def site_config(self) -> SiteConfig:
        return site_config_for(self.site_dir, self.node_config)

    def dp_settings(self, *, num_patients: int) -> DPSettings | None:
        """The DP-SGD settings that apply here: the run's request under the site's ceiling."""
        return effective_dp(self.cfg.privacy, self.site_config.privacy, num_patients=num_patients)

    def model(self, arrays: ArrayRecord, *, backbone_sha256: str | None = None) -> PromptViT:
        """This process's model instance for the run's architecture, holding ``arrays``.

        Built once per process and overwritten with the global weights on
        every message. ``arrays`` holds every weight, or (prompt mode with
        prompt-experts) only the prompt parts, with ``backbone_sha256`` the
        coordinator's backbone fingerprint, which this site's must equal.

        Raises
        ------
        ModelError
            The arrays do not fit, or this site's frozen backbone differs from the coordinator's.
        """
        model = _model(self.cfg.model.model_dump_json(), self.cfg.training.seed)
        state = arrays.to_torch_state_dict()
        if backbone_sha256 is None:
            load_state(model, state)
            return model
        own = _fingerprint(model)
        if own != backbone_sha256:
            raise ModelError(
                f"this site's frozen backbone (sha256 {own[:12]}) differs from the coordinator's "
                f"({backbone_sha256[:12]}); give the site the same model.backbone_weights file "
                f"({self.cfg.model.backbone_weights or 'none: built from training.seed'}) and the same FedEye version"
            )
        load_state(model, state, strict=False)
        return model

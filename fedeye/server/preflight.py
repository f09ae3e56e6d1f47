"""Checks the coordinator runs before a simulation's first round: site folders and node minimums."""

from __future__ import annotations

from pathlib import Path

from fedeye.config import RunConfig
from fedeye.errors import ConfigError, SiteDataError, errors_only
from fedeye.sites.base import open_site
from fedeye.sites.layout import simulated_site_dirs


def simulation_sites(cfg: RunConfig) -> list[Path]:
    """Validate every site folder before any process starts; return them in order."""
    if cfg.data.root is None:
        raise ConfigError("data.root: not set; a simulation needs the folder that holds the site folders")
    dirs = simulated_site_dirs(cfg.data.root)
    if cfg.simulation.num_sites is not None and cfg.simulation.num_sites != len(dirs):
        raise ConfigError(
            f"simulation.num_sites={cfg.simulation.num_sites} but {cfg.data.root} holds {len(dirs)} site folders"
        )
    problems = errors_only(
        [p for d in dirs for p in open_site(d).problems()]
    )  # warnings never block a run, as in `site check`
    if problems:
        raise SiteDataError(str(cfg.data.root), problems)
    _check_node_minimums(cfg, len(dirs))
    return dirs


def _check_node_minimums(cfg: RunConfig, num_sites: int) -> None:
    s = cfg.strategy
    if s.name == "prompt-experts" and cfg.model.num_domains < num_sites:
        raise ConfigError(
            f"model.num_domains={cfg.model.num_domains} but prompt-experts needs one domain expert per site: "
            f"set model.num_domains = {num_sites} (the number of site folders in {cfg.data.root})"
        )
    for field in ("min_train_nodes", "min_evaluate_nodes", "min_available_nodes"):
        if getattr(s, field) > num_sites:
            raise ConfigError(
                f"strategy.{field}={getattr(s, field)} but the simulation has only {num_sites} site(s); lower it"
            )

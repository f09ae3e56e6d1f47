"""Run a configured experiment in Flower's Simulation Engine (Ray), in-process.

Each site folder under ``data.root`` becomes one simulated SuperNode; the
ServerApp runs in a thread of this process, so it can drive a progress
display directly.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from fedeye.config import RunConfig
from fedeye.errors import ConfigError, SiteDataError, errors_only
from fedeye.server.federation import create_run, open_store, run_dir
from fedeye.server.recorder import ProgressSink
from fedeye.sites.base import open_site

# Keep Ray on loopback and Flower from installing app dependencies at run time.
_SIM_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1", "RAY_DEDUP_LOGS": "0", "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0"}


@dataclass(frozen=True)
class SimulationResult:
    """Where a finished simulation left its outputs."""

    run_id: str
    store_url: str
    model_path: Path


def simulation_sites(cfg: RunConfig) -> list[Path]:
    """Validate every site folder before any process starts; return them in order."""
    from fedeye.client.site import simulated_site_dirs

    if cfg.data.root is None:
        raise ConfigError("data.root: not set; a simulation needs the folder that holds the site folders")
    dirs = simulated_site_dirs(cfg.data.root)
    if cfg.simulation.num_sites is not None and cfg.simulation.num_sites != len(dirs):
        raise ConfigError(f"simulation.num_sites={cfg.simulation.num_sites} but {cfg.data.root} holds {len(dirs)} site folders")
    problems = errors_only([p for d in dirs for p in open_site(d).problems()])  # warnings never block a run, as in `site check`
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
            raise ConfigError(f"strategy.{field}={getattr(s, field)} but the simulation has only {num_sites} site(s); lower it")


def simulate(
    cfg: RunConfig, *, progress: ProgressSink | None = None, quiet: bool = True, sites: list[Path] | None = None
) -> SimulationResult:
    """Run ``cfg`` in the Simulation Engine and return the run id and outputs.

    ``sites``: the result of :func:`simulation_sites` when the caller already
    checked them (checking decodes every image); otherwise they are checked here.
    """
    from flwr.simulation import run_simulation

    from fedeye.client.app import app as client_app
    from fedeye.server.app import make_server_app

    sites = sites if sites is not None else simulation_sites(cfg)
    os.environ.update(_SIM_ENV)
    with open_store(cfg) as store:
        run_id = create_run(store, cfg, num_sites=len(sites))
        store_url = store.display_url
    server_app = make_server_app(cfg, run_id=run_id, progress=progress)
    with _flower_logging(quiet):
        run_simulation(
            server_app=server_app, client_app=client_app, num_supernodes=len(sites),
            backend_config=_backend_config(cfg, quiet=quiet),
        )
    return SimulationResult(run_id=run_id, store_url=store_url, model_path=run_dir(cfg, run_id) / "global-model.pt")


def _backend_config(cfg: RunConfig, *, quiet: bool) -> dict[str, dict[str, int | float | str | bool]]:
    return {
        "client_resources": {"num_cpus": cfg.simulation.client_cpus, "num_gpus": cfg.simulation.client_gpus},
        "init_args": {
            "num_cpus": os.cpu_count() or 1,
            "include_dashboard": False,
            "log_to_driver": not quiet,
            "logging_level": "error" if quiet else "info",
        },
    }


class _flower_logging:
    """Lower Flower's console logging to errors while a display is shown.

    (``run_simulation`` logs a deprecation warning: it is Flower's in-process
    entry point, the one that lets the ServerApp thread drive our display.)
    """

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.logger = logging.getLogger("flwr")
        self.level = self.logger.level

    def __enter__(self) -> None:
        if self.quiet:
            self.logger.setLevel(logging.ERROR)

    def __exit__(self, *_exc: object) -> None:
        self.logger.setLevel(self.level)

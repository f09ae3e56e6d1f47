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
from fedeye.server.federation import create_run, open_store, run_dir
from fedeye.server.recorder import ProgressSink
from fedeye.server.preflight import simulation_sites

# Keep Ray on loopback and Flower from installing app dependencies at run time.
_SIM_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1", "RAY_DEDUP_LOGS": "0", "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0"}


@dataclass(frozen=True)
class SimulationResult:
    """Where a finished simulation left its outputs."""

    run_id: str
    store_url: str
    model_path: Path


def simulate(
    cfg: RunConfig, *, progress: ProgressSink | None = None, quiet: bool = True, sites: list[Path] | None = None
) -> SimulationResult:
    """Run ``cfg`` in the Simulation Engine and return the run id and outputs.

    ``sites``: the result of :func:`~fedeye.server.preflight.simulation_sites` when the caller already
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

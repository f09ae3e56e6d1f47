"""Run a configured experiment in Flower's Simulation Engine (Ray), in-process.

Each site folder under ``data.root`` becomes one simulated SuperNode; the
ServerApp runs in a thread of this process, so it can drive a progress
display directly. Ctrl-C or SIGTERM ends the run ``interrupted``
(:func:`stop_on_signals`); a run whose sites cannot train raises the
ServerApp's :class:`~fedeye.errors.FederationError`.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from fedeye.config import RunConfig
from fedeye.errors import RunInterrupted
from fedeye.server.federation import create_run, open_store, run_dir
from fedeye.server.polling import Interruption
from fedeye.server.preflight import simulation_sites
from fedeye.server.recorder import ProgressSink

if TYPE_CHECKING:
    from flwr.server.superlink.fleet.vce.backend.backend import BackendConfig

# Keep Ray on loopback and Flower from installing app dependencies at run time.
_SIM_ENV = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "RAY_DEDUP_LOGS": "0",
    "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",
}


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
    stop = Interruption()
    server_app = make_server_app(cfg, run_id=run_id, progress=progress, stop=stop)
    try:
        with _flower_logging(quiet), stop_on_signals(stop):
            run_simulation(
                server_app=server_app,
                client_app=client_app,
                num_supernodes=len(sites),
                backend_config=_backend_config(cfg, quiet=quiet),
            )
    except RunInterrupted:
        pass  # a second signal: the run is recorded below
    finally:
        _shutdown_ray()
    if stop.requested:
        _mark_interrupted(cfg, run_id, stop.signal)
        raise RunInterrupted(stop.signal, run_id)
    return SimulationResult(run_id=run_id, store_url=store_url, model_path=run_dir(cfg, run_id) / "global-model.pt")


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextmanager
def stop_on_signals(stop: Interruption) -> Iterator[None]:
    """While inside, the first Ctrl-C or SIGTERM asks the run to stop; a second one stops at once.

    The first signal only sets ``stop``: the ServerApp notices it at its next
    wait for replies (within a fraction of a second), records the run
    ``interrupted`` and returns, and Flower shuts the simulation and Ray down
    as after any run. A second signal raises
    :class:`~fedeye.errors.RunInterrupted` right where the main thread is.
    The previous handlers are restored on the way out. Outside the main
    thread (where Python allows no signal handlers) nothing is installed.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handle(signum: int, _frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if stop.requested:
            raise RunInterrupted(name)
        stop.request(name)

    previous = {sig: signal.signal(sig, handle) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _mark_interrupted(cfg: RunConfig, run_id: str, signal_name: str) -> None:
    """Record the run ``interrupted`` if the ServerApp did not get to it (it stopped before its first wait)."""
    with open_store(cfg) as store:
        if store.get_run(run_id).run.status in ("running", "stale"):
            store.finish_run(run_id, status="interrupted", error=f"interrupted by {signal_name}")


def _shutdown_ray() -> None:
    """Flower shuts Ray down after a run; make sure of it however the run ended (no workers left behind)."""
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()


def _backend_config(cfg: RunConfig, *, quiet: bool) -> BackendConfig:
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

"""FedEye ServerApp (Flower Message API).

``app`` is what ``flwr run .`` loads (``[tool.flwr.app.components]``): it
reads the run config from Flower's context. ``fedeye simulate`` builds its
own with :func:`make_server_app`, passing the validated config, the store
run id and a progress display.

Every FedEye run records the Flower run(s) that carried it
(``flower_runs``), so ``fedeye run status`` can ask Flower about it. The
run-config key ``resume-run`` (set by ``fedeye run resume``) names a FedEye
run to continue from its last checkpoint instead of starting a new one.
"""

from __future__ import annotations

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedeye.config import RunConfig, from_flower_config
from fedeye.errors import ConfigError, RunInterrupted
from fedeye.server.federation import ResumePoint, create_run, open_store, resume_point, run_federation
from fedeye.server.polling import Interruption, PollingGrid
from fedeye.server.preflight import simulation_sites
from fedeye.server.recorder import ProgressSink
from fedeye.server.store import RunStore


def make_server_app(
    run_config: RunConfig | None = None,
    *,
    run_id: str | None = None,
    progress: ProgressSink | None = None,
    stop: Interruption | None = None,
) -> ServerApp:
    """A ServerApp running ``run_config`` (default: Flower's run config).

    With ``stop`` (a simulation's signal handlers), the run ends
    ``interrupted`` as soon as ``stop`` is requested, and the ServerApp returns.
    """
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        polled: Grid = PollingGrid(grid, stop=stop)  # type: ignore[assignment]  # replies every 0.25 s, not Flower's 3 s
        try:
            _main(polled, context)
        except RunInterrupted:
            pass  # recorded by run_federation; the simulation's caller raises it again

    def _main(grid: Grid, context: Context) -> None:
        num_sites = len(list(grid.get_node_ids()))
        cfg = run_config or flower_run_config(context, num_nodes=num_sites)
        resume_id = str(context.run_config.get(RESUME_KEY, "")) if run_config is None else ""
        with open_store(cfg) as store:
            if resume_id:
                rid, start = resume_id, _reopen(store, resume_id, flower_run_id=context.run_id)
            else:
                rid, start = run_id or create_run(store, cfg, num_sites=num_sites), None
                store.link_flower_run(rid, flower_run_id=context.run_id, first_round=1)
            run_federation(grid, cfg, store=store, run_id=rid, progress=progress, resume=start)

    return server_app


RESUME_KEY = "resume-run"  # run config: the FedEye run to continue ("" = start a new run)


def _reopen(store: RunStore, run_id: str, *, flower_run_id: int) -> ResumePoint:
    """Set ``run_id`` running again from its last checkpoint, noting what the resume found."""
    start = resume_point(store, run_id)
    status, error = store.reopen_run(run_id)
    note = f"resumed after round {start.completed_round}; was {status}" + (f": {error}" if error else "")
    store.link_flower_run(run_id, flower_run_id=flower_run_id, first_round=start.completed_round + 1, note=note)
    return start


def flower_run_config(context: Context, *, num_nodes: int) -> RunConfig:
    """The run config ``flwr run`` sent, checked before any round starts.

    With ``data.root`` set (a simulation), its site folders must be valid and
    one per simulated SuperNode: each SuperNode serves the ``partition-id``-th
    folder, so extra folders would be left out silently and missing ones fail
    only after the ClientApps start.

    Raises
    ------
    ConfigError
        A relative path, an invalid field, or a site count that differs
        from the federation's ``num-supernodes``.
    SiteDataError
        A site folder with bad data.
    """
    cfg = from_flower_config({k: v for k, v in context.run_config.items() if k != RESUME_KEY})
    if cfg.data.root is None:
        return cfg
    num_folders = len(simulation_sites(cfg))
    if num_folders != num_nodes:
        raise ConfigError(
            f"data.root: {cfg.data.root} holds {num_folders} site folders but the federation has "
            f"{num_nodes} SuperNodes. Run one SuperNode per site: "
            f'flwr run . <connection> --federation-config "num-supernodes={num_folders}"'
        )
    return cfg


app = make_server_app()

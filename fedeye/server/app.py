"""FedEye ServerApp (Flower Message API).

``app`` is what ``flwr run .`` loads (``[tool.flwr.app.components]``): it
reads the run config from Flower's context. ``fedeye simulate`` builds its
own with :func:`make_server_app`, passing the validated config, the store
run id and a progress display.
"""

from __future__ import annotations

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedeye.config import RunConfig, from_flower_config
from fedeye.errors import ConfigError
from fedeye.server.federation import create_run, open_store, run_federation
from fedeye.server.recorder import ProgressSink
from fedeye.server.simulation import simulation_sites


def make_server_app(
    run_config: RunConfig | None = None, *, run_id: str | None = None, progress: ProgressSink | None = None
) -> ServerApp:
    """A ServerApp running ``run_config`` (default: Flower's run config)."""
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        num_sites = len(list(grid.get_node_ids()))
        cfg = run_config or flower_run_config(context, num_nodes=num_sites)
        with open_store(cfg) as store:
            rid = run_id or create_run(store, cfg, num_sites=num_sites)
            run_federation(grid, cfg, store=store, run_id=rid, progress=progress)

    return server_app


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
    cfg = from_flower_config(dict(context.run_config))
    if cfg.data.root is None:
        return cfg
    num_folders = len(simulation_sites(cfg))
    if num_folders != num_nodes:
        raise ConfigError(
            f"data.root: {cfg.data.root} holds {num_folders} site folders but the federation has "
            f"{num_nodes} SuperNodes. Run one SuperNode per site: "
            f"flwr run . <connection> --federation-config \"num-supernodes={num_folders}\""
        )
    return cfg


app = make_server_app()

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
from fedeye.server.federation import create_run, open_store, run_federation
from fedeye.server.recorder import ProgressSink


def make_server_app(
    run_config: RunConfig | None = None, *, run_id: str | None = None, progress: ProgressSink | None = None
) -> ServerApp:
    """A ServerApp running ``run_config`` (default: Flower's run config)."""
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        cfg = run_config or from_flower_config(dict(context.run_config))
        with open_store(cfg) as store:
            num_sites = len(list(grid.get_node_ids()))
            rid = run_id or create_run(store, cfg, num_sites=num_sites)
            run_federation(grid, cfg, store=store, run_id=rid, progress=progress)

    return server_app


app = make_server_app()

"""Running a real deployment: ``fedeye coordinator start``, ``fedeye site start`` and ``fedeye run ...``.

The coordinator runs Flower's SuperLink with TLS, SuperNode authentication
and its state in a database file, and registers every site listed in
``authorized-sites.csv`` once it listens. Each site runs Flower's SuperNode
with its node key and node config, after its data check passes. Runs start
through Flower's own ``flwr run``; FedEye records which Flower run carries
which FedEye run, so ``fedeye run status|logs|stop|resume`` take FedEye run
ids.
"""

from __future__ import annotations

import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.text import Text

from fedeye.cli._common import (
    Cell,
    JsonOption,
    console,
    err_console,
    exits_cleanly,
    finite,
    print_json,
    print_table,
)
from fedeye.cli.provision import AUTHORIZED_SITES, read_authorized_sites
from fedeye.cli.runs import DbOption, default_store_dir
from fedeye.cli.site_state import SiteStateRow, site_states
from fedeye.client.state import SiteState, deployment_state
from fedeye.client.supernode import (
    REFUSED,
    REJOIN_WAIT_S,
    node_config_arg,
    run_supernode,
    site_credentials,
    site_node_config,
    supernode_command,
)
from fedeye.errors import DeploymentError
from fedeye.flower_programs import (
    flower_program,
    free_port,
    parse_address,
    register_node,
    run_foreground,
    save_connection,
    wait_for_port,
)
from fedeye.privacy import keys
from fedeye.server.deployment import (
    await_flower_end,
    await_resume,
    connection_for,
    coordinator_tls,
    deployment_config,
    flower_status,
    latest_flower_run,
    launch,
    local_address,
    nodes_online,
    resumable_config,
    stop_run,
    superlink_command,
)
from fedeye.server.store import RunDetail, RunStore, resolve_db_url

if TYPE_CHECKING:  # fedeye.config loads torch (model configs): only inside the run commands
    from fedeye.config import RunConfig

run_app = typer.Typer(
    help="Start and follow runs on a running SuperLink (through Flower's `flwr`).", no_args_is_help=True
)

DEFAULT_ADDRESS = "127.0.0.1:9092"

SuperlinkOption = Annotated[str, typer.Option("--superlink", help="The SuperLink's address, HOST:PORT.")]
CaOption = Annotated[
    Path | None, typer.Option("--ca", help="The coordinator's ca.crt (from `fedeye coordinator init`).")
]
InsecureOption = Annotated[
    bool, typer.Option("--insecure", help="No TLS (only for a SuperLink started with --insecure, local tests).")
]
RunIdArg = Annotated[str, typer.Argument(help="FedEye run id, or an unambiguous prefix of one.")]


# --- coordinator start -------------------------------------------------------------------


@exits_cleanly
def coordinator_start(
    coord_dir: Annotated[Path, typer.Option("--dir", help="The coordinator folder (from `fedeye coordinator init`).")],
    address: Annotated[
        str,
        typer.Option("--address", help="Where the SuperLink listens, HOST:PORT (0.0.0.0:PORT for every interface)."),
    ] = DEFAULT_ADDRESS,
    insecure: Annotated[
        bool, typer.Option("--insecure", help="No TLS and no SuperNode authentication: local tests only.")
    ] = False,
    database: Annotated[
        Path | None, typer.Option("--database", help="SuperLink state file (default: DIR/state/superlink.db).")
    ] = None,
) -> None:
    """Run Flower's SuperLink in the foreground (TLS, SuperNode authentication, state on disk); register the sites."""
    coord_dir = coord_dir.resolve()
    bind = parse_address(address, option="--address")
    tls = None if insecure else coordinator_tls(coord_dir)
    db = (database or coord_dir / "state" / "superlink.db").resolve()
    keys.ensure_private_dir(db.parent)
    connect = local_address(bind, coord_dir, tls)
    console.print(
        f"SuperLink on [bold]{bind}[/] ({'TLS + SuperNode authentication' if tls else '[red]INSECURE[/]: no TLS, no authentication'}), state in {db}"
    )

    def register_sites(proc: subprocess.Popen[bytes]) -> None:
        if not wait_for_port(bind, proc=proc):
            return  # the SuperLink exited (its own message says why) or never listened
        connection = save_connection(connect, root_certificates=tls.ca if tls else None)
        console.print(f"flwr connection [bold]{connection}[/] -> {connect} (in $FLWR_HOME/config.toml)")
        if tls is not None:
            register_authorized_sites(coord_dir / AUTHORIZED_SITES, connection=connection)

    finished = run_foreground(superlink_command(bind, tls=tls, database=db), after_start=register_sites)
    raise typer.Exit(finished.code)


def register_authorized_sites(registry: Path, *, connection: str) -> None:
    """Register every site of ``authorized-sites.csv`` with the running SuperLink (known ones are left as they are)."""
    rows = read_authorized_sites(registry)
    if not rows:
        console.print(
            f"[yellow]no sites registered yet[/] ({registry}); add one with `fedeye coordinator register-site`"
        )
    with tempfile.TemporaryDirectory() as tmp:
        for row in rows:
            pub = Path(tmp) / f"{row['name']}.pub"
            pub.write_text(row["public_key"] + "\n")
            node_id = register_node(pub, name=row["name"], connection=connection)
            console.print(
                f"site [bold]{row['name']}[/]: " + (f"registered, node {node_id}" if node_id else "already registered")
            )


# --- site start ------------------------------------------------------------------------------


@exits_cleanly
def site_start(
    site_dir: Annotated[
        Path, typer.Option("--dir", help="The site folder from `fedeye site init` (site.toml, node.key).")
    ],
    superlink: SuperlinkOption,
    insecure: InsecureOption = False,
    ca: Annotated[Path | None, typer.Option("--ca", help="The coordinator's ca.crt (default: DIR/ca.crt).")] = None,
    runtime_port: Annotated[
        int,
        typer.Option(
            "--runtime-port", min=0, max=65535, help="Local port of this SuperNode's ClientApp API (0: any free port)."
        ),
    ] = 0,
    rejoin_wait: Annotated[
        float,
        typer.Option(
            "--rejoin-wait",
            callback=finite(0.0),
            help="Seconds to keep retrying while the SuperLink refuses this node (it still sees this site's previous SuperNode online).",
        ),
    ] = REJOIN_WAIT_S,
    state_dir: Annotated[
        Path | None,
        typer.Option(
            "--state-dir",
            help="The site's state folder, made 0700 (default: state_dir in site.toml, else DIR/state). Site admin commands read site.toml, so set it there.",
        ),
    ] = None,
    no_worker: Annotated[
        bool,
        typer.Option(
            "--no-worker",
            help="Run the ClientApp in Flower's per-message process (no warm site worker): slower, every message imports torch and decodes the data again.",
        ),
    ] = False,
) -> None:
    """Check the site's data, start the site worker, then run Flower's SuperNode for this site in the foreground."""
    from fedeye.client.site_config import load_site_config
    from fedeye.sites.base import open_site

    site_dir = site_dir.resolve()
    address = parse_address(superlink, option="--superlink")
    site_toml = site_dir / "site.toml"
    if not site_toml.is_file():
        raise DeploymentError(
            f"{site_toml}: not found; make the site folder with `fedeye site init {site_dir} --name NAME --data SITE_DATA`"
        )
    cfg = load_site_config(site_toml)
    credentials = site_credentials(site_dir, ca=ca, insecure=insecure)
    if cfg.data is None:
        raise DeploymentError(
            f"{site_toml}: no 'data' folder set; add data = \"/path/to/site\" or run `fedeye site init` again"
        )
    _check_data_or_exit(cfg.data)
    state = SiteState(state_dir.resolve()) if state_dir else deployment_state(site_toml, cfg.state_dir)
    state_dir = _prepare_state(state, site_toml=site_toml, data=cfg.data, image_sizes=cfg.cache_image_sizes)
    node_config = site_node_config(
        data=cfg.data,
        site_toml=site_toml,
        audit_log=cfg.audit_log,
        state_dir=state_dir,
        site_name=open_site(cfg.data).info.name,
        worker=not no_worker,
    )
    port = runtime_port or free_port()
    command = supernode_command(
        address, credentials=credentials, node_config=node_config_arg(node_config), runtime_port=port
    )
    console.print(
        f"SuperNode of [bold]{site_dir.name}[/] -> {address} ({'TLS, node key' if credentials else '[red]INSECURE[/]'}), data {cfg.data}"
    )
    with _site_worker(state_dir, node_config, enabled=not no_worker):
        finished = run_supernode(command, rejoin_wait=rejoin_wait, on_refused=_note_refused)
    if finished.code and REFUSED in finished.tail:
        err_console.print(
            "[bold red]the SuperLink refused this site[/]: its key is not registered. Send node.pub to the operator, who runs "
            f"`fedeye coordinator register-site node.pub --name NAME --superlink {address}`"
        )
    raise typer.Exit(finished.code)


def _note_refused(seconds_left: float) -> None:
    err_console.print(
        "[yellow]refused by the SuperLink[/]: it may still see this site's previous SuperNode online, or the key is "
        f"not registered; retrying for {seconds_left:.0f} s more"
    )


def _check_data_or_exit(data: Path) -> None:
    from fedeye.cli.site_check import print_check_report
    from fedeye.sites.check import check_site

    report = check_site(data)
    if not report.ok:
        print_check_report(report, target=console)
        err_console.print(
            "[bold red]the SuperNode was not started[/]: fix the site data (`fedeye site check`) and start again."
        )
        raise typer.Exit(1)


def _prepare_state(state: SiteState, *, site_toml: Path, data: Path, image_sizes: list[int]) -> Path:
    """Create the site's state folder and build its data cache at ``image_sizes`` (none: the first message builds it)."""
    from fedeye.cli.site_cache import build_with_progress
    from fedeye.client.admin import SiteLocation

    location = SiteLocation(data, state.ensure(), None)
    if not image_sizes:
        console.print(
            "data cache: prepared by the first message, at the run's image size "
            f"(to prepare it now, add cache_image_sizes = [224] to {site_toml})",
            soft_wrap=True,
        )
    else:
        build_with_progress(location, image_sizes=image_sizes, out=console)
    return location.state.root


@contextmanager
def _site_worker(state_dir: Path, node_config: dict[str, str | bool], *, enabled: bool) -> Iterator[None]:
    """Run the site worker (restarted if it dies) while the SuperNode runs."""
    if not enabled:
        yield
        return
    from fedeye.cli.site_worker import WorkerSupervisor

    supervisor = WorkerSupervisor(state_dir=state_dir, node_config=node_config)
    console.print(f"starting the site worker (log: {supervisor.log_path})")
    pid = supervisor.start()
    console.print(f"site worker pid {pid} ready on {supervisor.socket_path}")
    try:
        yield
    finally:
        supervisor.stop()


def _connect(superlink: str, *, ca: Path | None, insecure: bool) -> str:
    """The saved Flower connection to ``superlink``, waiting for a coordinator that is still starting."""
    return connection_for(
        superlink,
        ca=ca,
        insecure=insecure,
        on_wait=lambda: console.print(f"waiting for the SuperLink at {superlink} to answer ..."),
    )


def _store(db: str | None) -> RunStore:
    return RunStore(resolve_db_url(db, default_dir=default_store_dir()))


@run_app.command("launch")
@exits_cleanly
def run_launch(
    config: Annotated[
        Path, typer.Option("--config", "-c", help="Run file (TOML), as for `fedeye simulate`, without data.root.")
    ],
    superlink: SuperlinkOption,
    ca: CaOption = None,
    insecure: InsecureOption = False,
    db: Annotated[
        str | None, typer.Option("--db", help="Run store (default: the run file's output.db / output.dir).")
    ] = None,
    wait: Annotated[
        float, typer.Option(callback=finite(0.0), help="Seconds to wait for the ServerApp to record the run.")
    ] = 180.0,
) -> None:
    """Start a run on the SuperLink through `flwr run`; print its FedEye and Flower run ids."""
    from fedeye.config import load_run_config

    cfg = deployment_config(load_run_config(config), db=db)
    connection = _connect(superlink, ca=ca, insecure=insecure)
    flower_id, run_id = launch(cfg, connection=connection, wait_s=wait)
    _print_launched(flower_id, run_id, cfg=cfg, superlink=superlink, connection=connection)


def _print_launched(flower_id: int, run_id: str | None, *, cfg: RunConfig, superlink: str, connection: str) -> None:
    db = resolve_db_url(cfg.output.db, default_dir=cfg.output.dir)
    if run_id is None:
        err_console.print(
            f"[bold red]Flower run {flower_id} started but recorded no FedEye run[/]; see its log: flwr log {flower_id} {connection} --show"
        )
        raise typer.Exit(1)
    console.print(f"FedEye run [bold]{run_id}[/] (Flower run {flower_id}), store {db}")
    console.print(
        f"follow it with: fedeye run status {run_id} --superlink {superlink} --db {db}  (add --ca or --insecure as above)"
    )


@run_app.command("resume")
@exits_cleanly
def run_resume(
    run_id: RunIdArg,
    superlink: SuperlinkOption,
    ca: CaOption = None,
    insecure: InsecureOption = False,
    db: DbOption = None,
    wait: Annotated[
        float, typer.Option(callback=finite(0.0), help="Seconds to wait for the ServerApp to take the run up.")
    ] = 180.0,
) -> None:
    """Continue a run whose coordinator stopped, from its last completed round's checkpoint."""
    store = _store(db)
    detail = store.get_run(run_id)
    cfg = resumable_config(detail, store=store)  # refuses before any connection is tried
    connection = _connect(superlink, ca=ca, insecure=insecure)
    if detail.flower_runs:
        await_flower_end(
            detail.flower_runs[-1].flower_run_id,
            detail.run.run_id,
            connection=connection,
            on_wait=lambda: console.print(
                "Flower still counts the run's last Flower run as running; waiting for Flower to notice its ServerApp stopped"
            ),
        )
    from fedeye.server.federation import resume_point

    done = resume_point(store, detail.run.run_id).completed_round
    flower_id, _ = launch(cfg, connection=connection, resume=detail.run.run_id, wait_s=0)
    if not await_resume(store, detail.run.run_id, flower_id, wait_s=wait):
        err_console.print(
            f"[bold red]Flower run {flower_id} has not taken up run {detail.run.run_id}[/]; see: flwr log {flower_id} {connection} --show"
        )
        raise typer.Exit(1)
    console.print(f"run [bold]{detail.run.run_id}[/] resumes after round {done} in Flower run {flower_id}")


@run_app.command("status")
@exits_cleanly
def run_status(
    run_id: RunIdArg,
    db: DbOption = None,
    superlink: Annotated[
        str | None, typer.Option("--superlink", help="Also ask the SuperLink (run state, traffic, nodes online).")
    ] = None,
    ca: CaOption = None,
    insecure: InsecureOption = False,
    as_json: JsonOption = False,
) -> None:
    """A run's progress and each site's state (online, training, finished, left-budget, failed, missing, ...)."""
    detail = _store(db).get_run(run_id)
    flower: dict[int, dict[str, Any]] = {}
    online: dict[int, bool] | None = None
    if superlink is not None:
        connection = _connect(superlink, ca=ca, insecure=insecure)
        flower = {fr.flower_run_id: flower_status(fr.flower_run_id, connection) for fr in detail.flower_runs}
        online = nodes_online(connection)
    states = site_states(detail, online=online)
    if as_json:
        run = detail.run
        print_json(
            {
                "run_id": run.run_id,
                "name": run.name,
                "status": run.status,
                "error": run.error,
                "rounds_done": run.rounds_done,
                "num_rounds": run.num_rounds,
                "flower_runs": flower,
                "sites": states,
            }
        )
        return
    print_table(("", ""), _status_rows(detail), show_header=False)
    if detail.flower_runs:
        print_table(FLOWER_COLUMNS, _flower_rows(detail, flower), title="Flower runs carrying it")
    title = "sites" + ("" if online is not None else " (add --superlink to see who is online)")
    print_table(SITE_COLUMNS, [_site_row(row) for row in states], title=title)


FLOWER_COLUMNS = ("Flower run", "from round", "Flower status", "bytes in", "bytes out", "note")
SITE_COLUMNS = ("site", "node", "state", "last round", "phase", "reason")
STATE_STYLE = {
    "training": "yellow",
    "finished": "green",
    "online": "green",
    "missing": "red",
    "failed": "red",
    "left-budget": "magenta",
    "awaiting-approval": "yellow",
    "denied": "magenta",
}


def _status_rows(detail: RunDetail) -> list[list[Cell]]:
    run = detail.run
    return [
        ["run", f"{run.run_id} ({run.name})"],
        ["status", run.status + (f": {run.error}" if run.error else "")],
        ["rounds", f"{run.rounds_done}/{run.num_rounds}"],
    ]


def _flower_rows(detail: RunDetail, flower: dict[int, dict[str, Any]]) -> list[list[Cell]]:
    rows: list[list[Cell]] = []
    for fr in detail.flower_runs:
        info = flower.get(fr.flower_run_id, {})
        traffic = info.get("network-traffic", {})
        rows.append(
            [
                str(fr.flower_run_id),
                str(fr.first_round),
                str(info.get("status", "-")),
                str(traffic.get("inbound-bytes", "-")),
                str(traffic.get("outbound-bytes", "-")),
                fr.note or "",
            ]
        )
    return rows


def _site_row(row: SiteStateRow) -> list[Cell]:
    return [
        row.site,
        str(row.node_id),
        Text(row.state, style=STATE_STYLE.get(row.state, "")),
        "-" if row.last_round is None else str(row.last_round),
        row.last_phase,
        row.reason,
    ]


@run_app.command("logs")
@exits_cleanly
def run_logs(
    run_id: RunIdArg,
    superlink: SuperlinkOption,
    ca: CaOption = None,
    insecure: InsecureOption = False,
    db: DbOption = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Stream the log of the current Flower run.")] = False,
) -> None:
    """Print the ServerApp's log (every Flower run that carried the run) through `flwr log`."""
    detail = _store(db).get_run(run_id)
    connection = _connect(superlink, ca=ca, insecure=insecure)
    flower_ids = [latest_flower_run(detail)] if follow else [fr.flower_run_id for fr in detail.flower_runs]
    for flower_id in flower_ids or [latest_flower_run(detail)]:
        console.rule(f"Flower run {flower_id}")
        command = [flower_program("flwr"), "log", str(flower_id), connection, "--stream" if follow else "--show"]
        subprocess.run(command, check=False)  # prints straight to this terminal


@run_app.command("stop")
@exits_cleanly
def run_stop(
    run_id: RunIdArg,
    superlink: SuperlinkOption,
    ca: CaOption = None,
    insecure: InsecureOption = False,
    db: DbOption = None,
) -> None:
    """Stop a running run (`flwr stop`) and mark it stopped in the store."""
    store = _store(db)
    detail = store.get_run(run_id)
    connection = _connect(superlink, ca=ca, insecure=insecure)
    flower_id = stop_run(store, detail, connection=connection)
    console.print(
        f"run [bold]{detail.run.run_id}[/] stopped (Flower run {flower_id}) after round {detail.run.rounds_done}; "
        f"continue it with `fedeye run resume {detail.run.run_id}`"
    )


@run_app.command("list")
@exits_cleanly
def run_list(db: DbOption = None, as_json: JsonOption = False) -> None:
    """Recorded runs with the Flower runs that carried them."""
    store = _store(db)
    rows: list[list[Cell]] = []
    for run in store.list_runs():
        flower = store.get_run(run.run_id).flower_runs
        rows.append(
            [
                run.run_id,
                run.name,
                run.status,
                f"{run.rounds_done}/{run.num_rounds}",
                ", ".join(str(fr.flower_run_id) for fr in flower) or "-",
            ]
        )
    json_rows = [dict(zip(("run", "name", "status", "rounds", "flower_runs"), r, strict=True)) for r in rows]
    print_table(
        ("run", "name", "status", "rounds", "Flower runs"),
        rows,
        title=f"FedEye runs in {store.display_url}",
        as_json=as_json,
        json_rows=json_rows,
    )

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
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from fedeye.cli._common import console, err_console, exits_cleanly
from fedeye.cli.flower import (
    Address,
    Finished,
    flower_program,
    flwr_json,
    free_port,
    parse_address,
    register_node,
    run_foreground,
    save_connection,
    wait_for_port,
)
from fedeye.cli.provision import AUTHORIZED_SITES, read_authorized_sites
from fedeye.cli.runs import DbOption, default_store_dir
from fedeye.cli.site_state import site_states
from fedeye.errors import DeploymentError
from fedeye.privacy import keys
from fedeye.server.store import RunDetail, RunStore, resolve_db_url

if TYPE_CHECKING:  # fedeye.config loads torch (model configs): only inside the run commands
    from fedeye.config import RunConfig

run_app = typer.Typer(help="Start and follow runs on a running SuperLink (through Flower's `flwr`).", no_args_is_help=True)

DEFAULT_ADDRESS = "127.0.0.1:9092"
REFUSED = "Exit Code: 305"  # flower-supernode: "Failed to activate SuperNode" (unknown key, or still seen online)
REJOIN_WAIT_S = 150.0  # Flower marks a silent node offline after 2 missed 30-s heartbeats
REJOIN_RETRY_S = 5.0
STOP_WAIT_S = 30.0  # for the stopped ServerApp to close its run record
DEAD_RUN_WAIT_S = 120.0  # Flower fails a run whose ServerApp sent no heartbeat for about a minute
RESUME_KEY = "resume-run"  # fedeye.server.app.RESUME_KEY; not imported: it loads the ServerApp

SuperlinkOption = Annotated[str, typer.Option("--superlink", help="The SuperLink's address, HOST:PORT.")]
CaOption = Annotated[Path | None, typer.Option("--ca", help="The coordinator's ca.crt (from `fedeye coordinator init`).")]
InsecureOption = Annotated[bool, typer.Option("--insecure", help="No TLS (only for a SuperLink started with --insecure, local tests).")]
RunIdArg = Annotated[str, typer.Argument(help="FedEye run id, or an unambiguous prefix of one.")]


# --- coordinator start -------------------------------------------------------------------


@dataclass(frozen=True)
class TlsFiles:
    """The SuperLink's TLS files from ``fedeye coordinator init``."""

    ca: Path
    cert: Path
    key: Path


def coordinator_tls(coord_dir: Path) -> TlsFiles:
    """The TLS files in ``coord_dir``; a missing one is named with the command that makes it."""
    tls = TlsFiles(coord_dir / "ca.crt", coord_dir / "superlink.crt", coord_dir / "superlink.key")
    for path in (tls.ca, tls.cert, tls.key):
        if not path.is_file():
            raise DeploymentError(
                f"{path}: not found. The SuperLink needs ca.crt, superlink.crt and superlink.key: make them with "
                f"`fedeye coordinator init {coord_dir} --host HOST`, or pass --insecure for a local test "
                "(no TLS, no SuperNode authentication)"
            )
    return tls


def superlink_command(address: Address, *, tls: TlsFiles | None, database: Path) -> list[str]:
    """``flower-superlink`` with TLS and SuperNode authentication (or ``--insecure``), state in ``database``."""
    command = [flower_program("flower-superlink"), "--host", address.host, "--port", str(address.port)]
    command += ["--database", str(database), "--disable-runtime-dependency-installation"]
    if tls is None:
        return [*command, "--insecure"]
    return [*command, "--ssl-ca-certfile", str(tls.ca), "--ssl-certfile", str(tls.cert),
            "--ssl-keyfile", str(tls.key), "--enable-supernode-auth"]


@exits_cleanly
def coordinator_start(
    coord_dir: Annotated[Path, typer.Option("--dir", help="The coordinator folder (from `fedeye coordinator init`).")],
    address: Annotated[str, typer.Option("--address", help="Where the SuperLink listens, HOST:PORT (0.0.0.0:PORT for every interface).")] = DEFAULT_ADDRESS,
    insecure: Annotated[bool, typer.Option("--insecure", help="No TLS and no SuperNode authentication: local tests only.")] = False,
    database: Annotated[Path | None, typer.Option("--database", help="SuperLink state file (default: DIR/state/superlink.db).")] = None,
) -> None:
    """Run Flower's SuperLink in the foreground (TLS, SuperNode authentication, state on disk); register the sites."""
    coord_dir = coord_dir.resolve()
    bind = parse_address(address, option="--address")
    tls = None if insecure else coordinator_tls(coord_dir)
    db = (database or coord_dir / "state" / "superlink.db").resolve()
    keys.ensure_private_dir(db.parent)
    connect = _local_address(bind, coord_dir, tls)
    console.print(f"SuperLink on [bold]{bind}[/] ({'TLS + SuperNode authentication' if tls else '[red]INSECURE[/]: no TLS, no authentication'}), state in {db}")

    def register_sites(proc: subprocess.Popen[bytes]) -> None:
        if not wait_for_port(bind, proc=proc):
            return  # the SuperLink exited (its own message says why) or never listened
        connection = save_connection(connect, root_certificates=tls.ca if tls else None)
        console.print(f"flwr connection [bold]{connection}[/] -> {connect} (in $FLWR_HOME/config.toml)")
        if tls is not None:
            register_authorized_sites(coord_dir / AUTHORIZED_SITES, connection=connection)

    finished = run_foreground(superlink_command(bind, tls=tls, database=db), after_start=register_sites)
    raise typer.Exit(finished.code)


def _local_address(bind: Address, coord_dir: Path, tls: TlsFiles | None) -> Address:
    """The address to reach our own SuperLink by: a wildcard bind is reached by a name its certificate holds."""
    if not bind.wildcard:
        return bind
    if tls is None:
        return Address("127.0.0.1", bind.port)
    written = coord_dir / "coordinator.toml"  # its hosts are the certificate's names
    hosts = tomllib.loads(written.read_text()).get("hosts", []) if written.is_file() else []
    return Address(str(hosts[0]) if hosts else "127.0.0.1", bind.port)


def register_authorized_sites(registry: Path, *, connection: str) -> None:
    """Register every site of ``authorized-sites.csv`` with the running SuperLink (known ones are left as they are)."""
    rows = read_authorized_sites(registry)
    if not rows:
        console.print(f"[yellow]no sites registered yet[/] ({registry}); add one with `fedeye coordinator register-site`")
    with tempfile.TemporaryDirectory() as tmp:
        for row in rows:
            pub = Path(tmp) / f"{row['name']}.pub"
            pub.write_text(row["public_key"] + "\n")
            node_id = register_node(pub, name=row["name"], connection=connection)
            console.print(f"site [bold]{row['name']}[/]: " + (f"registered, node {node_id}" if node_id else "already registered"))


# --- site start ------------------------------------------------------------------------------


@exits_cleanly
def site_start(
    site_dir: Annotated[Path, typer.Option("--dir", help="The site folder from `fedeye site init` (site.toml, node.key).")],
    superlink: SuperlinkOption,
    insecure: InsecureOption = False,
    ca: Annotated[Path | None, typer.Option("--ca", help="The coordinator's ca.crt (default: DIR/ca.crt).")] = None,
    runtime_port: Annotated[int, typer.Option("--runtime-port", min=0, max=65535, help="Local port of this SuperNode's ClientApp API (0: any free port).")] = 0,
    rejoin_wait: Annotated[float, typer.Option("--rejoin-wait", min=0, help="Seconds to keep retrying while the SuperLink refuses this node (it still sees this site's previous SuperNode online).")] = REJOIN_WAIT_S,
) -> None:
    """Check the site's data, then run Flower's SuperNode for this site in the foreground."""
    from fedeye.client.site_config import load_site_config

    site_dir = site_dir.resolve()
    address = parse_address(superlink, option="--superlink")
    site_toml = site_dir / "site.toml"
    if not site_toml.is_file():
        raise DeploymentError(f"{site_toml}: not found; make the site folder with `fedeye site init {site_dir} --name NAME --data SITE_DATA`")
    cfg = load_site_config(site_toml)
    credentials = _site_credentials(site_dir, ca=ca, insecure=insecure)
    if cfg.data is None:
        raise DeploymentError(f"{site_toml}: no 'data' folder set; add data = \"/path/to/site\" or run `fedeye site init` again")
    _check_data_or_exit(cfg.data)
    state = _prepare_state(site_toml, data=cfg.data, image_sizes=cfg.cache_image_sizes)
    node_config = _node_config(data=cfg.data, site_toml=site_toml, audit_log=cfg.audit_log, state_dir=state)
    port = runtime_port or free_port()
    command = supernode_command(address, credentials=credentials, node_config=node_config, runtime_port=port)
    console.print(f"SuperNode of [bold]{site_dir.name}[/] -> {address} ({'TLS, node key' if credentials else '[red]INSECURE[/]'}), data {cfg.data}")
    finished = _run_supernode(command, rejoin_wait=rejoin_wait)
    if finished.code and REFUSED in finished.tail:
        err_console.print(
            "[bold red]the SuperLink refused this site[/]: its key is not registered. Send node.pub to the operator, who runs "
            f"`fedeye coordinator register-site node.pub --name NAME --superlink {address}`"
        )
    raise typer.Exit(finished.code)


def _run_supernode(command: list[str], *, rejoin_wait: float) -> Finished:
    """Run the SuperNode; while refused within ``rejoin_wait`` s, start it again.

    A site that comes back after a crash is refused until the SuperLink has
    seen its previous SuperNode miss its heartbeats (Flower: up to about a
    minute); an unregistered key is refused for good.
    """
    deadline = time.monotonic() + rejoin_wait
    while REFUSED in (finished := run_foreground(command)).tail and finished.code and time.monotonic() < deadline:
        err_console.print(
            "[yellow]refused by the SuperLink[/]: it may still see this site's previous SuperNode online, or the key is "
            f"not registered; retrying for {deadline - time.monotonic():.0f} s more"
        )
        time.sleep(REJOIN_RETRY_S)
    return finished


def _site_credentials(site_dir: Path, *, ca: Path | None, insecure: bool) -> tuple[Path, Path] | None:
    """(CA certificate, node private key), or None for an insecure SuperNode."""
    if insecure:
        return None
    key, root = site_dir / "node.key", (ca or site_dir / "ca.crt")
    if not key.is_file():
        raise DeploymentError(f"{key}: not found; make the node key with `fedeye site init {site_dir} --name NAME --data SITE_DATA`")
    if not root.is_file():
        raise DeploymentError(
            f"{root}: not found; copy ca.crt from the coordinator (written by `fedeye coordinator init`) "
            f"to {site_dir / 'ca.crt'} or pass --ca PATH, or --insecure for a local test without TLS"
        )
    return root.resolve(), key.resolve()


def _check_data_or_exit(data: Path) -> None:
    from fedeye.sites.check import check_site, render_report

    report = check_site(data)
    if not report.ok:
        render_report(report, console)
        err_console.print("[bold red]the SuperNode was not started[/]: fix the site data (`fedeye site check`) and start again.")
        raise typer.Exit(1)


def _prepare_state(site_toml: Path, *, data: Path, image_sizes: list[int]) -> Path:
    """Create the site's state folder and build its data cache at ``image_sizes`` (none: the first message builds it)."""
    from fedeye.cli.site_cache import build_with_progress
    from fedeye.client.state import SiteLocation, deployment_state

    location = SiteLocation(data, deployment_state(site_toml).ensure(), None)
    if not image_sizes:
        console.print("data cache: prepared by the first message, at the run's image size "
                      f"(to prepare it now, add cache_image_sizes = [224] to {site_toml})", soft_wrap=True)
    else:
        build_with_progress(location, image_sizes=image_sizes, out=console)
    return location.state.root


def _node_config(*, data: Path, site_toml: Path, audit_log: Path | None, state_dir: Path | None = None) -> str:
    """Flower's ``--node-config`` for the ClientApp: ``site-dir``, ``site-config``, ``audit-log`` and ``state-dir``."""
    pairs = {"site-dir": data, "site-config": site_toml, "audit-log": audit_log, "state-dir": state_dir}
    for key, path in pairs.items():
        if path is not None and "'" in str(path):
            raise DeploymentError(f"{key}: {path} contains a quote (') that Flower's --node-config cannot carry; rename the folder")
    return " ".join(f"{key}='{path}'" for key, path in pairs.items() if path is not None)


def supernode_command(address: Address, *, credentials: tuple[Path, Path] | None, node_config: str, runtime_port: int) -> list[str]:
    """``flower-supernode`` for one site: TLS root, node key, node config, its own ClientApp port."""
    command = [flower_program("flower-supernode"), "--superlink", str(address), "--node-config", node_config]
    command += ["--host", "127.0.0.1", "--port", str(runtime_port)]
    if credentials is None:
        return [*command, "--insecure"]
    root, key = credentials
    return [*command, "--root-certificates", str(root), "--auth-supernode-private-key", str(key)]


# --- runs: launch, resume ------------------------------------------------------------------


def connection_for(superlink: str, *, ca: Path | None, insecure: bool) -> str:
    """Save the SuperLink connection in Flower's config and return its name."""
    address = parse_address(superlink, option="--superlink")
    if insecure:
        return save_connection(address, root_certificates=None)
    if ca is None or not ca.is_file():
        raise DeploymentError(
            f"--ca: {'give' if ca is None else str(ca) + ' not found; give'} the coordinator's ca.crt "
            "(written by `fedeye coordinator init`), or --insecure for a SuperLink started with --insecure"
        )
    return save_connection(address, root_certificates=ca)


def flower_app_dir() -> Path:
    """The folder of FedEye's Flower App (``pyproject.toml`` with ``[tool.flwr.app]``) that ``flwr run`` uploads."""
    import fedeye

    root = Path(fedeye.__file__).resolve().parents[1]
    pyproject = root / "pyproject.toml"
    if not pyproject.is_file() or "tool" not in (app := tomllib.loads(pyproject.read_text())) or "flwr" not in app["tool"]:
        raise DeploymentError(f"FedEye's Flower App (pyproject.toml with [tool.flwr.app]) is not at {root}; install FedEye from its source folder (`pip install -e .`)")
    return root


def deployment_config(cfg: RunConfig, *, db: str | None) -> RunConfig:
    """``cfg`` for a deployment: no ``data.root`` (each site names its data), the store URL made explicit."""
    if cfg.data.root is not None:
        raise DeploymentError(
            f"data.root = {str(cfg.data.root)!r} is for simulations; in a deployment each site names its own data "
            "(`fedeye site start`). Remove data.root from the run file."
        )
    url = resolve_db_url(db or cfg.output.db, default_dir=cfg.output.dir)  # the ServerApp writes where this CLI reads
    return cfg.model_copy(update={"output": cfg.output.model_copy(update={"db": url})})


def launch(cfg: RunConfig, *, connection: str, resume: str | None = None, wait_s: float) -> tuple[int, str | None]:
    """``flwr run`` the FedEye app with ``cfg``; return the Flower run id and, once recorded, the FedEye run id."""
    import tomli_w

    from fedeye.config import to_flower_config

    flat: dict[str, Any] = {**to_flower_config(cfg), RESUME_KEY: resume or ""}

    with tempfile.TemporaryDirectory() as tmp:
        run_config = Path(tmp) / "run-config.toml"
        run_config.write_text(tomli_w.dumps(flat))
        answer = flwr_json("run", str(flower_app_dir()), connection, "--run-config", str(run_config))
    flower_id = int(answer["run-id"])
    return flower_id, _await_fedeye_run(cfg, flower_id, connection=connection, wait_s=wait_s)


def _await_fedeye_run(cfg: RunConfig, flower_id: int, *, connection: str, wait_s: float) -> str | None:
    """Wait until the ServerApp records the run (it links its Flower run id); None if it failed or time ran out."""
    store = RunStore(resolve_db_url(cfg.output.db, default_dir=cfg.output.dir))
    deadline, next_ask = time.monotonic() + wait_s, time.monotonic() + 15
    while time.monotonic() < deadline:
        if (found := store.run_for_flower_run(flower_id)) is not None:
            return found
        if time.monotonic() > next_ask:
            if str(flower_status(flower_id, connection).get("status", "")).startswith("finished"):
                return store.run_for_flower_run(flower_id)
            next_ask = time.monotonic() + 15
        time.sleep(1.0)
    return None


def flower_status(flower_id: int, connection: str) -> dict[str, Any]:
    """Flower's view of one run (status, traffic, times) from ``flwr ls --run-id``."""
    runs = flwr_json("ls", connection, "--run-id", str(flower_id)).get("runs", [])
    return dict(runs[0]) if runs else {}


def _store(db: str | None) -> RunStore:
    return RunStore(resolve_db_url(db, default_dir=default_store_dir()))


@run_app.command("launch")
@exits_cleanly
def run_launch(
    config: Annotated[Path, typer.Option("--config", "-c", help="Run file (TOML), as for `fedeye simulate`, without data.root.")],
    superlink: SuperlinkOption,
    ca: CaOption = None,
    insecure: InsecureOption = False,
    db: Annotated[str | None, typer.Option("--db", help="Run store (default: the run file's output.db / output.dir).")] = None,
    wait: Annotated[float, typer.Option(help="Seconds to wait for the ServerApp to record the run.")] = 180.0,
) -> None:
    """Start a run on the SuperLink through `flwr run`; print its FedEye and Flower run ids."""
    from fedeye.config import load_run_config

    cfg = deployment_config(load_run_config(config), db=db)
    connection = connection_for(superlink, ca=ca, insecure=insecure)
    flower_id, run_id = launch(cfg, connection=connection, wait_s=wait)
    _print_launched(flower_id, run_id, cfg=cfg, superlink=superlink, connection=connection)


def _print_launched(flower_id: int, run_id: str | None, *, cfg: RunConfig, superlink: str, connection: str) -> None:
    db = resolve_db_url(cfg.output.db, default_dir=cfg.output.dir)
    if run_id is None:
        err_console.print(f"[bold red]Flower run {flower_id} started but recorded no FedEye run[/]; see its log: flwr log {flower_id} {connection} --show")
        raise typer.Exit(1)
    console.print(f"FedEye run [bold]{run_id}[/] (Flower run {flower_id}), store {db}")
    console.print(f"follow it with: fedeye run status {run_id} --superlink {superlink} --db {db}  (add --ca or --insecure as above)")


@run_app.command("resume")
@exits_cleanly
def run_resume(
    run_id: RunIdArg, superlink: SuperlinkOption, ca: CaOption = None, insecure: InsecureOption = False,
    db: DbOption = None, wait: Annotated[float, typer.Option(help="Seconds to wait for the ServerApp to take the run up.")] = 180.0,
) -> None:
    """Continue a run whose coordinator stopped, from its last completed round's checkpoint."""
    store = _store(db)
    detail = store.get_run(run_id)
    connection = connection_for(superlink, ca=ca, insecure=insecure)
    cfg = resumable_config(detail, store=store, connection=connection)
    from fedeye.server.federation import resume_point

    done = resume_point(store, detail.run.run_id).completed_round
    flower_id, _ = launch(cfg, connection=connection, resume=detail.run.run_id, wait_s=0)
    if not _await_resume(store, detail.run.run_id, flower_id, wait_s=wait):
        err_console.print(f"[bold red]Flower run {flower_id} has not taken up run {detail.run.run_id}[/]; see: flwr log {flower_id} {connection} --show")
        raise typer.Exit(1)
    console.print(f"run [bold]{detail.run.run_id}[/] resumes after round {done} in Flower run {flower_id}")


def resumable_config(detail: RunDetail, *, store: RunStore, connection: str | None) -> RunConfig:
    """The run's own config, pointed at this store, after checking the run can be resumed.

    Raises
    ------
    DeploymentError
        The run finished, still runs in Flower, or trained with DP (a site's
        accountant restarts with a new Flower run, so its budget could be overspent).
    FederationError
        No completed round to resume from, or its checkpoint changed.
    """
    from fedeye.config import parse_run_config
    from fedeye.server.federation import resume_point

    run = detail.run
    if run.status == "finished":
        raise DeploymentError(f"run {run.run_id} finished; there is nothing to resume")
    cfg = parse_run_config(detail.config, source=f"the recorded config of run {run.run_id}")
    if cfg.privacy.enabled or cfg.privacy.client_level != "off":
        raise DeploymentError(
            f"run {run.run_id} uses differential privacy: each site's privacy accountant lives in its Flower run, so a "
            "resumed run could overspend a site's budget. Start a new run with `fedeye run launch` instead."
        )
    resume_point(store, run.run_id)  # raises without a usable checkpoint
    if connection is not None and detail.flower_runs:
        _await_flower_end(detail.flower_runs[-1].flower_run_id, run.run_id, connection=connection)
    return cfg.model_copy(update={"output": cfg.output.model_copy(update={"db": store.url})})


def _await_flower_end(flower_id: int, run_id: str, *, connection: str, wait_s: float = DEAD_RUN_WAIT_S) -> None:
    """Wait until Flower no longer counts ``flower_id`` as running (a dead ServerApp's run is failed after its heartbeats stop)."""
    deadline = time.monotonic() + wait_s
    while not str(flower_status(flower_id, connection).get("status", "finished")).startswith("finished"):
        if time.monotonic() > deadline:
            raise DeploymentError(f"run {run_id} is still running in Flower run {flower_id}; stop it first with `fedeye run stop {run_id}`")
        console.print(f"Flower run {flower_id} still counts as running; waiting for Flower to notice its ServerApp stopped")
        time.sleep(5.0)


def _await_resume(store: RunStore, run_id: str, flower_id: int, *, wait_s: float) -> bool:
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if store.run_for_flower_run(flower_id) == run_id:
            return True
        time.sleep(1.0)
    return False


# --- runs: status, logs, stop, list ----------------------------------------------------------


@run_app.command("status")
@exits_cleanly
def run_status(
    run_id: RunIdArg, db: DbOption = None,
    superlink: Annotated[str | None, typer.Option("--superlink", help="Also ask the SuperLink (run state, traffic, nodes online).")] = None,
    ca: CaOption = None, insecure: InsecureOption = False,
) -> None:
    """A run's progress and each site's state (online, training, finished, left-budget, failed, missing)."""
    detail = _store(db).get_run(run_id)
    flower: dict[int, dict[str, Any]] = {}
    online: dict[int, bool] | None = None
    if superlink is not None:
        connection = connection_for(superlink, ca=ca, insecure=insecure)
        flower = {fr.flower_run_id: flower_status(fr.flower_run_id, connection) for fr in detail.flower_runs}
        online = nodes_online(connection)
    console.print(_status_header(detail))
    if detail.flower_runs:
        console.print(_flower_table(detail, flower))
    console.print(_sites_state_table(detail, online))


def nodes_online(connection: str) -> dict[int, bool]:
    """Flower node id -> online, for every registered SuperNode."""
    nodes = flwr_json("supernode", "ls", connection).get("nodes", [])
    return {int(n["node-id"]): n.get("status") == "online" for n in nodes}


def _status_header(detail: RunDetail) -> Table:
    run = detail.run
    grid = Table.grid(padding=(0, 2))
    grid.add_row("run", f"{run.run_id} ({run.name})")
    grid.add_row("status", run.status + (f": {run.error}" if run.error else ""))
    grid.add_row("rounds", f"{run.rounds_done}/{run.num_rounds}")
    return grid


def _flower_table(detail: RunDetail, flower: dict[int, dict[str, Any]]) -> Table:
    table = Table(title="Flower runs carrying it")
    for header in ("Flower run", "from round", "Flower status", "bytes in", "bytes out", "note"):
        table.add_column(header, overflow="fold")
    for fr in detail.flower_runs:
        info = flower.get(fr.flower_run_id, {})
        traffic = info.get("network-traffic", {})
        table.add_row(str(fr.flower_run_id), str(fr.first_round), str(info.get("status", "-")),
                      str(traffic.get("inbound-bytes", "-")), str(traffic.get("outbound-bytes", "-")), Text(fr.note or ""))
    return table


def _sites_state_table(detail: RunDetail, online: dict[int, bool] | None) -> Table:
    table = Table(title="sites" + ("" if online is not None else " (add --superlink to see who is online)"))
    for header in ("site", "node", "state", "last round", "phase", "reason"):
        table.add_column(header, overflow="fold")
    style = {"training": "yellow", "finished": "green", "online": "green", "missing": "red", "failed": "red", "left-budget": "magenta"}
    for row in site_states(detail, online=online):
        table.add_row(Text(row.site), str(row.node_id), Text(row.state, style=style.get(row.state, "")),
                      "-" if row.last_round is None else str(row.last_round), row.last_phase, Text(row.reason))
    return table


def _latest_flower_run(detail: RunDetail) -> int:
    if not detail.flower_runs:
        raise DeploymentError(f"run {detail.run.run_id} was not started through Flower's deployment (`fedeye run launch`)")
    return detail.flower_runs[-1].flower_run_id


@run_app.command("logs")
@exits_cleanly
def run_logs(
    run_id: RunIdArg, superlink: SuperlinkOption, ca: CaOption = None, insecure: InsecureOption = False, db: DbOption = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Stream the log of the current Flower run.")] = False,
) -> None:
    """Print the ServerApp's log (every Flower run that carried the run) through `flwr log`."""
    detail = _store(db).get_run(run_id)
    connection = connection_for(superlink, ca=ca, insecure=insecure)
    flower_ids = [_latest_flower_run(detail)] if follow else [fr.flower_run_id for fr in detail.flower_runs]
    for flower_id in flower_ids or [_latest_flower_run(detail)]:
        console.rule(f"Flower run {flower_id}")
        command = [flower_program("flwr"), "log", str(flower_id), connection, "--stream" if follow else "--show"]
        subprocess.run(command, check=False)  # prints straight to this terminal


@run_app.command("stop")
@exits_cleanly
def run_stop(run_id: RunIdArg, superlink: SuperlinkOption, ca: CaOption = None, insecure: InsecureOption = False, db: DbOption = None) -> None:
    """Stop a running run (`flwr stop`) and mark it stopped in the store."""
    store = _store(db)
    detail = store.get_run(run_id)
    connection = connection_for(superlink, ca=ca, insecure=insecure)
    flower_id = _latest_flower_run(detail)
    flwr_json("stop", str(flower_id), connection)
    deadline = time.monotonic() + STOP_WAIT_S  # the ServerApp closes the run record as it exits ("failed: SystemExit")
    while time.monotonic() < deadline and store.get_run(detail.run.run_id).run.status == "running":
        time.sleep(1.0)
    store.finish_run(detail.run.run_id, status="stopped", error=f"stopped by the operator (Flower run {flower_id})")
    console.print(f"run [bold]{detail.run.run_id}[/] stopped after round {detail.run.rounds_done}; continue it with `fedeye run resume {detail.run.run_id}`")


@run_app.command("list")
@exits_cleanly
def run_list(db: DbOption = None) -> None:
    """Recorded runs with the Flower runs that carried them."""
    store = _store(db)
    table = Table(title=f"FedEye runs in {store.display_url}")
    for header in ("run", "name", "status", "rounds", "Flower runs"):
        table.add_column(header, overflow="fold")
    for run in store.list_runs():
        flower = store.get_run(run.run_id).flower_runs
        table.add_row(run.run_id, Text(run.name), run.status, f"{run.rounds_done}/{run.num_rounds}",
                      ", ".join(str(fr.flower_run_id) for fr in flower) or "-")
    console.print(table)

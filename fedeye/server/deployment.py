"""The coordinator's side of a deployment: the SuperLink's command, launching runs through ``flwr``, waiting on them.

The CLI (``fedeye coordinator start``, ``fedeye run ...``) parses and prints;
this module does the work: it builds Flower's commands, saves connections,
starts a run with ``flwr run`` and follows it in the run store and in
Flower's own view (``flwr ls``). Every wait goes through
:func:`fedeye.wait.wait_until`.
"""

from __future__ import annotations

import tempfile
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedeye.errors import DeploymentError
from fedeye.flower_programs import (
    Address,
    accepts_connections,
    flower_program,
    flwr_json,
    parse_address,
    save_connection,
)
from fedeye.server.store import RunDetail, RunStore, resolve_db_url
from fedeye.wait import wait_until

if TYPE_CHECKING:  # fedeye.config loads torch (model configs): only inside the run commands
    from fedeye.config import RunConfig

STOP_WAIT_S = 30.0  # for the stopped ServerApp to close its run record
DEAD_RUN_WAIT_S = 120.0  # Flower fails a run whose ServerApp sent no heartbeat for about a minute
SUPERLINK_WAIT_S = 60.0  # for a coordinator started a moment ago to listen
FLOWER_ASK_S = 15.0  # how often a wait also asks Flower whether the run ended
RESUME_KEY = "resume-run"  # fedeye.server.app.RESUME_KEY; not imported: it loads the ServerApp


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
    return [
        *command,
        "--ssl-ca-certfile",
        str(tls.ca),
        "--ssl-certfile",
        str(tls.cert),
        "--ssl-keyfile",
        str(tls.key),
        "--enable-supernode-auth",
    ]


def local_address(bind: Address, coord_dir: Path, tls: TlsFiles | None) -> Address:
    """The address to reach our own SuperLink by: a wildcard bind is reached by a name its certificate holds."""
    if not bind.wildcard:
        return bind
    if tls is None:
        return Address("127.0.0.1", bind.port)
    written = coord_dir / "coordinator.toml"  # its hosts are the certificate's names
    hosts = tomllib.loads(written.read_text()).get("hosts", []) if written.is_file() else []
    return Address(str(hosts[0]) if hosts else "127.0.0.1", bind.port)


def connection_for(
    superlink: str,
    *,
    ca: Path | None,
    insecure: bool,
    wait_s: float = SUPERLINK_WAIT_S,
    on_wait: Callable[[], None] | None = None,
) -> str:
    """Save the SuperLink connection in Flower's config and return its name, once the SuperLink answers.

    A coordinator started a moment ago (``docker compose up -d``, a restart)
    takes a few seconds to listen: wait up to ``wait_s`` seconds for it
    (``on_wait`` runs once, as a progress note) rather than fail on the first try.
    """
    address = parse_address(superlink, option="--superlink")
    if not insecure and (ca is None or not ca.is_file()):
        raise DeploymentError(
            f"--ca: {'give' if ca is None else str(ca) + ' not found; give'} the coordinator's ca.crt "
            "(written by `fedeye coordinator init`), or --insecure for a SuperLink started with --insecure"
        )
    await_superlink(address, wait_s=wait_s, on_wait=on_wait)
    return save_connection(address, root_certificates=None if insecure else ca)


def await_superlink(address: Address, *, wait_s: float, on_wait: Callable[[], None] | None = None) -> None:
    """Return once ``address`` accepts connections; raise DeploymentError after ``wait_s`` seconds."""
    noted = False

    def note() -> None:
        nonlocal noted
        if on_wait is not None and not noted:
            on_wait()
        noted = True

    if wait_until(lambda: True if accepts_connections(address) else None, timeout=wait_s, interval=1.0, on_wait=note):
        return
    raise DeploymentError(
        f"--superlink {address}: nothing answers there after {wait_s:.0f} s. Check that the coordinator runs "
        "(`fedeye coordinator start`) and that this machine reaches that host and port."
    )


def flower_app_dir() -> Path:
    """The folder of FedEye's Flower App (``pyproject.toml`` with ``[tool.flwr.app]``) that ``flwr run`` uploads."""
    import fedeye

    root = Path(fedeye.__file__).resolve().parents[1]
    pyproject = root / "pyproject.toml"
    if (
        not pyproject.is_file()
        or "tool" not in (app := tomllib.loads(pyproject.read_text()))
        or "flwr" not in app["tool"]
    ):
        raise DeploymentError(
            f"FedEye's Flower App (pyproject.toml with [tool.flwr.app]) is not at {root}; install FedEye from its source folder (`pip install -e .`)"
        )
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
    return flower_id, await_fedeye_run(cfg, flower_id, connection=connection, wait_s=wait_s)


def await_fedeye_run(cfg: RunConfig, flower_id: int, *, connection: str, wait_s: float) -> str | None:
    """Wait until the ServerApp records the run (it links its Flower run id); None if it failed or time ran out."""
    store = RunStore(resolve_db_url(cfg.output.db, default_dir=cfg.output.dir))
    asked = {"next": time.monotonic() + FLOWER_ASK_S}

    def recorded() -> str | None:
        found = store.run_for_flower_run(flower_id)
        if found is None and time.monotonic() > asked["next"]:  # now and then: did Flower end it (failed)?
            asked["next"] = time.monotonic() + FLOWER_ASK_S
            if _finished_in_flower(flower_id, connection):
                return store.run_for_flower_run(flower_id) or ""
        return found

    return wait_until(recorded, timeout=wait_s, interval=1.0) or None


def flower_status(flower_id: int, connection: str) -> dict[str, Any]:
    """Flower's view of one run (status, traffic, times) from ``flwr ls --run-id``."""
    runs = flwr_json("ls", connection, "--run-id", str(flower_id)).get("runs", [])
    return dict(runs[0]) if runs else {}


def resumable_config(detail: RunDetail, *, store: RunStore) -> RunConfig:
    """The run's own config, pointed at this store, after checking the run can be resumed.

    Whether Flower still runs it is :func:`await_flower_end`'s to check.

    Raises
    ------
    DeploymentError
        The run finished, or used client-level DP (its
        accountant lives in the coordinator's strategy and would restart).
        Patient-level DP-SGD runs resume: each site goes on with its privacy
        ledger's history of this run id (``fedeye.client.ledger``).
    FederationError
        No completed round to resume from, or its checkpoint changed.
    """
    from fedeye.config import parse_run_config
    from fedeye.server.federation import resume_point

    run = detail.run
    if run.status == "finished":
        raise DeploymentError(f"run {run.run_id} finished; there is nothing to resume")
    cfg = parse_run_config(detail.config, source=f"the recorded config of run {run.run_id}")
    if cfg.privacy.client_level != "off":
        raise DeploymentError(
            f"run {run.run_id} uses client-level differential privacy ({cfg.privacy.client_level}): its accountant lives "
            "in the coordinator's strategy and would start again from zero. Start a new run with `fedeye run launch` "
            "instead (patient-level DP-SGD runs, privacy.enabled, can be resumed)."
        )
    resume_point(store, run.run_id)  # raises without a usable checkpoint
    return cfg.model_copy(update={"output": cfg.output.model_copy(update={"db": store.url})})


def await_flower_end(
    flower_id: int,
    run_id: str,
    *,
    connection: str,
    wait_s: float = DEAD_RUN_WAIT_S,
    on_wait: Callable[[], None] | None = None,
) -> None:
    """Wait until Flower no longer counts ``flower_id`` as running (a dead ServerApp's run is failed after its heartbeats stop)."""
    ended = wait_until(
        lambda: True if _finished_in_flower(flower_id, connection) else None,
        timeout=wait_s,
        interval=5.0,
        on_wait=on_wait,
    )
    if ended is None:
        raise DeploymentError(
            f"run {run_id} is still running in Flower run {flower_id}; stop it first with `fedeye run stop {run_id}`"
        )


def _finished_in_flower(flower_id: int, connection: str) -> bool:
    return str(flower_status(flower_id, connection).get("status", "finished")).startswith("finished")


def await_resume(store: RunStore, run_id: str, flower_id: int, *, wait_s: float) -> bool:
    """Whether the ServerApp of ``flower_id`` took ``run_id`` up within ``wait_s`` seconds."""
    return (
        wait_until(
            lambda: True if store.run_for_flower_run(flower_id) == run_id else None, timeout=wait_s, interval=1.0
        )
        is not None
    )


def stop_run(store: RunStore, detail: RunDetail, *, connection: str) -> int:
    """Stop the run's current Flower run and mark the run stopped; return that Flower run's id."""
    flower_id = latest_flower_run(detail)
    flwr_json("stop", str(flower_id), connection)
    run_id = detail.run.run_id  # the ServerApp closes the run record as it exits ("failed: SystemExit")
    wait_until(
        lambda: None if store.get_run(run_id).run.status == "running" else True, timeout=STOP_WAIT_S, interval=1.0
    )
    store.finish_run(run_id, status="stopped", error=f"stopped by the operator (Flower run {flower_id})")
    return flower_id


# --- runs: status, logs, stop, list ----------------------------------------------------------


def nodes_online(connection: str) -> dict[int, bool]:
    """Flower node id -> online, for every registered SuperNode."""
    nodes = flwr_json("supernode", "ls", connection).get("nodes", [])
    return {int(n["node-id"]): n.get("status") == "online" for n in nodes}


def latest_flower_run(detail: RunDetail) -> int:
    if not detail.flower_runs:
        raise DeploymentError(
            f"run {detail.run.run_id} was not started through Flower's deployment (`fedeye run launch`)"
        )
    return detail.flower_runs[-1].flower_run_id

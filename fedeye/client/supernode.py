"""The site's side of a deployment: its SuperNode's command, node config and credentials.

``fedeye site start`` (the CLI) checks the data, starts the site worker and
runs the SuperNode built here; a SuperNode the SuperLink refuses (it still
sees this site's previous SuperNode online) is started again within the
rejoin wait, through :func:`fedeye.wait.wait_until`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from fedeye.errors import DeploymentError
from fedeye.flower_programs import Address, Finished, flower_program, run_foreground
from fedeye.privacy import keys
from fedeye.protocol import NODE_AUDIT_LOG, NODE_SITE_CONFIG, NODE_SITE_DIR, NODE_SITE_NAME, NODE_STATE_DIR, NODE_WORKER
from fedeye.wait import wait_until

REFUSED = "Exit Code: 305"  # flower-supernode: "Failed to activate SuperNode" (unknown key, or still seen online)
REJOIN_WAIT_S = 150.0  # Flower marks a silent node offline after 2 missed 30-s heartbeats
REJOIN_RETRY_S = 5.0


def run_supernode(command: list[str], *, rejoin_wait: float, on_refused: Callable[[float], None]) -> Finished:
    """Run the SuperNode; while refused within ``rejoin_wait`` s, start it again.

    A site that comes back after a crash is refused until the SuperLink has
    seen its previous SuperNode miss its heartbeats (Flower: up to about a
    minute); an unregistered key is refused for good.
    """
    deadline = time.monotonic() + rejoin_wait
    last: list[Finished] = []

    def accepted() -> Finished | None:
        finished = run_foreground(command)
        last.append(finished)
        return None if finished.code and REFUSED in finished.tail else finished

    def note() -> None:
        on_refused(deadline - time.monotonic())

    return wait_until(accepted, timeout=rejoin_wait, interval=REJOIN_RETRY_S, on_wait=note) or last[-1]


def site_credentials(site_dir: Path, *, ca: Path | None, insecure: bool) -> tuple[Path, Path] | None:
    """(CA certificate, node private key), or None for an insecure SuperNode."""
    if insecure:
        return None
    key, root = site_dir / "node.key", (ca or site_dir / "ca.crt")
    if not key.is_file():
        raise DeploymentError(
            f"{key}: not found; make the node key with `fedeye site init {site_dir} --name NAME --data SITE_DATA`"
        )
    if not root.is_file():
        raise DeploymentError(
            f"{root}: not found; copy ca.crt from the coordinator (written by `fedeye coordinator init`) "
            f"to {site_dir / 'ca.crt'} or pass --ca PATH, or --insecure for a local test without TLS"
        )
    keys.load_private_key(key)  # a damaged key or certificate fails here, not deep inside flower-supernode
    keys.load_certificate(root)
    return root.resolve(), key.resolve()


def site_node_config(
    *, data: Path, site_toml: Path, audit_log: Path | None, state_dir: Path, site_name: str, worker: bool
) -> dict[str, str | bool]:
    """The SuperNode's node config: ``site-dir``, ``site-config``, ``audit-log``, ``state-dir``, ``site-name``, ``worker``."""
    paths = {NODE_SITE_DIR: data, NODE_SITE_CONFIG: site_toml, NODE_AUDIT_LOG: audit_log, NODE_STATE_DIR: state_dir}
    config: dict[str, str | bool] = {key: str(path) for key, path in paths.items() if path is not None}
    return {**config, NODE_SITE_NAME: site_name, NODE_WORKER: worker}


def node_config_arg(node_config: dict[str, str | bool]) -> str:
    """Flower's ``--node-config`` text for ``node_config`` (strings single-quoted, booleans bare)."""
    for key, value in node_config.items():
        if isinstance(value, str) and "'" in value:
            raise DeploymentError(
                f"{key}: {value} contains a quote (') that Flower's --node-config cannot carry; rename it"
            )
    return " ".join(
        f"{key}={str(value).lower()}" if isinstance(value, bool) else f"{key}='{value}'"
        for key, value in node_config.items()
    )


def supernode_command(
    address: Address, *, credentials: tuple[Path, Path] | None, node_config: str, runtime_port: int
) -> list[str]:
    """``flower-supernode`` for one site: TLS root, node key, node config, its own ClientApp port."""
    command = [flower_program("flower-supernode"), "--superlink", str(address), "--node-config", node_config]
    command += ["--host", "127.0.0.1", "--port", str(runtime_port)]
    if credentials is None:
        return [*command, "--insecure"]
    root, key = credentials
    return [*command, "--root-certificates", str(root), "--auth-supernode-private-key", str(key)]


# --- runs: launch, resume ------------------------------------------------------------------

"""``fedeye coordinator ...`` and ``fedeye site init``: provision a real deployment.

Keys never leave the machine that made them. The coordinator keeps ``ca.key``
and ``superlink.key`` and gives sites ``ca.crt``; each site keeps ``node.key``
and gives the coordinator ``node.pub``.
"""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path
from typing import Annotated, Literal

import tomli_w
import typer

from fedeye.cli._common import console, exits_cleanly
from fedeye.client.site_config import SiteConfig
from fedeye.client.state import deployment_state
from fedeye.errors import ProvisioningError
from fedeye.privacy import keys

coordinator_app = typer.Typer(
    help="Provision the coordinator: CA, SuperLink certificate, registered sites.", no_args_is_help=True
)
site_app = typer.Typer(help="Provision one site: site config and node key.", no_args_is_help=True)

AUTHORIZED_SITES = "authorized-sites.csv"
AUTHORIZED_HEADER = ("name", "fingerprint", "public_key")
SITE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")  # always used with fullmatch

ForceOption = Annotated[bool, typer.Option("--force", help="Replace existing keys and config files.")]


# --- coordinator init ---------------------------------------------------------------


@coordinator_app.command("init")
@exits_cleanly
def coordinator_init(
    out_dir: Annotated[
        Path, typer.Argument(help="Folder for the CA, the SuperLink key and coordinator.toml (made 0700).")
    ],
    host: Annotated[
        list[str] | None, typer.Option("--host", help="IP or DNS name sites use to reach the SuperLink (repeat).")
    ] = None,
    force: ForceOption = False,
) -> None:
    """Create the CA and the SuperLink's TLS key and certificate."""
    # the SuperLink's own processes reach it on 127.0.0.1: keep the loopback names beside the given hosts
    hosts = list(dict.fromkeys([*(host or []), *keys.DEFAULT_HOSTS]))
    written = provision_coordinator(out_dir, hosts=hosts, force=force)
    console.print(f"wrote {', '.join(p.name for p in written)} in [bold]{out_dir.resolve()}[/]")
    console.print("[bold red]keep secret[/]: ca.key, superlink.key (never copy them off this machine)")
    console.print(f"[bold green]give to every site[/]: {out_dir.resolve() / 'ca.crt'}")
    console.print("start the SuperLink (TLS, SuperNode authentication) with:")
    console.print(f"  fedeye coordinator start --dir {out_dir.resolve()} --address {hosts[0]}:9092", soft_wrap=True)


def provision_coordinator(out_dir: Path, *, hosts: list[str], force: bool) -> list[Path]:
    """Make and write ca.key/ca.crt, superlink.key/superlink.crt and coordinator.toml."""
    out_dir = out_dir.resolve()
    paths = {
        name: out_dir / name for name in ("ca.key", "ca.crt", "superlink.key", "superlink.crt", "coordinator.toml")
    }
    keys.refuse_existing(list(paths.values()), force=force)
    ca_key, ca_cert = keys.create_ca(common_name="FedEye coordinator CA")
    server_key, server_cert = keys.issue_server_certificate(ca_key, ca_cert, hosts=hosts)
    keys.ensure_private_dir(out_dir)
    keys.save_private_key(ca_key, paths["ca.key"])
    keys.save_certificate(ca_cert, paths["ca.crt"])
    keys.save_private_key(server_key, paths["superlink.key"])
    keys.save_certificate(server_cert, paths["superlink.crt"])
    keys.write_atomic(paths["coordinator.toml"], _coordinator_toml(out_dir, hosts).encode())
    return list(paths.values())


def _coordinator_toml(out_dir: Path, hosts: list[str]) -> str:
    settings = {
        "hosts": hosts,
        "ca_certfile": str(out_dir / "ca.crt"),
        "ca_keyfile": str(out_dir / "ca.key"),
        "ssl_certfile": str(out_dir / "superlink.crt"),
        "ssl_keyfile": str(out_dir / "superlink.key"),
        "authorized_sites": str(out_dir / AUTHORIZED_SITES),
    }
    return "# Written by 'fedeye coordinator init'. ca.key and superlink.key are secret.\n" + tomli_w.dumps(settings)


# --- coordinator register-site -------------------------------------------------------


@coordinator_app.command("register-site")
@exits_cleanly
def coordinator_register_site(
    pubkey_file: Annotated[Path, typer.Argument(help="The site's node.pub (OpenSSH ECDSA P-384 public key).")],
    name: Annotated[str, typer.Option("--name", help="The site's name (letters, digits, '.', '_', '-').")],
    out_dir: Annotated[Path, typer.Option("--dir", help="The coordinator folder (from 'coordinator init').")] = Path(
        "."
    ),
    superlink: Annotated[
        str | None, typer.Option("--superlink", help="Also register it now with this running SuperLink (HOST:PORT).")
    ] = None,
) -> None:
    """Add a site's public key to authorized-sites.csv (refusing duplicate names or keys); with --superlink, register it with Flower too.

    ``fedeye coordinator start`` registers every listed site when the SuperLink starts.
    """
    from fedeye.flower_programs import parse_address, register_node, save_connection

    address = parse_address(superlink, option="--superlink") if superlink else None  # bad input before any write
    fingerprint = register_site(out_dir / AUTHORIZED_SITES, pubkey_file, name=name)
    console.print(f"registered site [bold]{name}[/] ({fingerprint}) in {out_dir / AUTHORIZED_SITES}")
    if address is None:
        console.print(
            "the SuperLink registers it when it starts (`fedeye coordinator start`); if it is running now, add --superlink HOST:PORT"
        )
        return
    connection = save_connection(address, root_certificates=out_dir.resolve() / "ca.crt")
    node_id = register_node(pubkey_file, name=name, connection=connection)
    console.print(
        f"Flower SuperLink {address}: " + (f"node {node_id}" if node_id else "the key was registered already")
    )


def register_site(registry: Path, pubkey_file: Path, *, name: str) -> str:
    """Validate the key and append ``name, fingerprint, key`` to ``registry``; return the fingerprint."""
    if not SITE_NAME.fullmatch(name):
        raise ProvisioningError(
            f"site name {name!r} is not allowed; use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    line = keys.load_public_key_line(pubkey_file)
    fingerprint = keys.public_key_fingerprint(line)
    rows = read_authorized_sites(registry)
    for row in rows:
        if row["name"] == name:
            raise ProvisioningError(f"{registry}: a site named {name!r} is already registered; pick another name")
        if row["fingerprint"] == fingerprint:
            raise ProvisioningError(
                f"{registry}: this key is already registered as site {row['name']!r}; each site needs its own key"
            )
    rows.append({"name": name, "fingerprint": fingerprint, "public_key": line})
    registry.parent.mkdir(parents=True, exist_ok=True)
    keys.write_atomic(registry, _csv_text(rows).encode(), mode=0o644)
    return fingerprint


def read_authorized_sites(registry: Path) -> list[dict[str, str]]:
    """The registered sites, or an empty list when the file does not exist yet."""
    if not registry.exists():
        return []
    with registry.open(newline="") as handle:
        reader = csv.DictReader(handle)
        if tuple(reader.fieldnames or ()) != AUTHORIZED_HEADER:
            raise ProvisioningError(f"{registry}: header is {reader.fieldnames}, expected {list(AUTHORIZED_HEADER)}")
        return [dict(row) for row in reader]


def _csv_text(rows: list[dict[str, str]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=AUTHORIZED_HEADER, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


# --- site init -----------------------------------------------------------------------


@site_app.command("init")
@exits_cleanly
def site_init(
    out_dir: Annotated[Path, typer.Argument(help="Folder for site.toml and the node key (made 0700).")],
    name: Annotated[str, typer.Option("--name", help="This site's name, as the coordinator will register it.")],
    data: Annotated[Path, typer.Option("--data", help="The site's data folder (checked first).")],
    device: Annotated[Literal["auto", "cpu", "cuda"], typer.Option(help="Where this site trains.")] = "auto",
    force: ForceOption = False,
    state_dir: Annotated[
        Path | None,
        typer.Option(
            "--state-dir",
            help="The site's state folder (data cache, ledger, approvals, worker socket); default: state/ beside site.toml. In a container: a writable volume.",
        ),
    ] = None,
) -> None:
    """Check the site's data, then write site.toml and the node key pair (node.key, node.pub)."""
    from fedeye.cli.site_check import print_check_report
    from fedeye.sites.check import check_site

    report = check_site(data)
    if not report.ok:
        print_check_report(report)
        console.print("[red]nothing written[/]: fix the site data and run 'fedeye site init' again.")
        raise typer.Exit(1)
    line = provision_site(out_dir, name=name, data=data, device=device, force=force, state_dir=state_dir)
    console.print(f"wrote site.toml, node.key (secret), node.pub in [bold]{out_dir.resolve()}[/]")
    console.print(f"public key: {line}", soft_wrap=True)
    console.print("send node.pub to the coordinator operator, who runs:")
    console.print(f"  fedeye coordinator register-site node.pub --name {name}", soft_wrap=True)


def provision_site(
    out_dir: Path,
    *,
    name: str,
    data: Path,
    device: Literal["auto", "cpu", "cuda"],
    force: bool,
    state_dir: Path | None = None,
) -> str:
    """Write site.toml, node.key (0600) and node.pub; return the public key line."""
    if not SITE_NAME.fullmatch(name):
        raise ProvisioningError(f"site name {name!r} is not allowed; use 1-64 letters, digits, '.', '_' or '-'")
    out_dir = out_dir.resolve()
    if out_dir == data.resolve():
        raise ProvisioningError(
            f"{out_dir} is the data folder, whose site.toml describes the data; "
            f"write the site's config and keys to another folder, e.g. {out_dir.parent / 'site-config'}"
        )
    paths = [out_dir / "site.toml", out_dir / "node.key", out_dir / "node.pub"]
    keys.refuse_existing(paths, force=force)
    cfg = SiteConfig(
        data=data.resolve(),
        device=device,
        audit_log=out_dir / "audit.jsonl",
        state_dir=None if state_dir is None else state_dir.resolve(),
    )
    node_key, node_pub = keys.create_node_keypair()
    keys.ensure_private_dir(out_dir)
    keys.write_atomic(paths[0], _site_toml(cfg, name).encode(), mode=0o644)
    keys.save_private_key(node_key, paths[1], openssh=True)
    keys.save_public_key(node_pub, paths[2])
    deployment_state(paths[0]).ensure()  # state/: data cache, privacy ledger, logs (0700)
    return keys.public_key_line(node_pub)


def _site_toml(cfg: SiteConfig, name: str) -> str:
    settings = {
        "data": str(cfg.data),
        "device": cfg.device,
        "audit_log": str(cfg.audit_log),
        **({"state_dir": str(cfg.state_dir)} if cfg.state_dir else {}),
        "privacy": {"require_dp": cfg.privacy.require_dp, "min_group_size": cfg.privacy.min_group_size},
    }
    header = (
        f"# Site {name!s}, written by 'fedeye site init'. The coordinator cannot change this file.\n"
        "# cache_image_sizes = [224]  # prepare the data cache at these image sizes when the site starts\n"
    )
    return header + tomli_w.dumps(settings)

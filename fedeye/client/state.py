"""Where a hospital site keeps its durable state: data cache, privacy ledger, audit log, worker socket, logs.

Flower 1.41 runs every message in a fresh ``flwr-clientapp`` process, so
anything a site prepares once (decoded images, the privacy ledger) must live
on disk. Each site has one *state folder*, private to the site's user (0700)::

    <state>/
        .fedeye-state      marker: data fingerprints skip a folder holding it
        cache/             preprocessed images (fedeye.sites.cache)
        ledger.sqlite      privacy ledger
        audit/audit.jsonl  audit log of outgoing messages
        worker.sock        local worker socket
        logs/

Where it is:

- deployment: ``state/`` beside the ``site.toml`` written by
  ``fedeye site init``; ``fedeye site start`` passes it to the ClientApp as
  the node config key ``state-dir``;
- simulation (no ``state-dir``): ``$FEDEYE_HOME/sites/<key>`` with ``key``
  the site folder's name and a short SHA-256 of its resolved absolute path,
  so every run over the same site folder shares one state folder.

Folders are made race-free (many sites, or many processes of one site, may
create them at the same moment): ``os.makedirs(exist_ok=True)`` then
``chmod 0700``.

>>> paths = SiteState(Path("/srv/site-a/state"))
>>> paths.cache_dir, paths.ledger_path.name
(PosixPath('/srv/site-a/state/cache'), 'ledger.sqlite')
"""

from __future__ import annotations

import hashlib
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from fedeye.client.audit import fedeye_home, site_slug
from fedeye.client.site_config import SiteConfig, load_site_config
from fedeye.errors import ConfigError

STATE_DIR_KEY = "state-dir"  # node config key: the site's state folder (deployment)
STATE_DIRNAME = "state"  # the state folder's name beside a deployment site.toml
STATE_MARKER = ".fedeye-state"  # fedeye.sites.cache.STATE_MARKER (not imported: the CLI loads this module)
PRIVATE_MODE = 0o700


def ensure_private_dir(path: Path) -> Path:
    """Create ``path`` and its parents, and make ``path`` 0700; safe when other processes do the same."""
    os.makedirs(path, mode=PRIVATE_MODE, exist_ok=True)
    os.chmod(path, PRIVATE_MODE)  # makedirs' mode is masked by the umask and ignored for an existing folder
    return path


@dataclass(frozen=True)
class SiteState:
    """The layout of one site's state folder (paths only; :meth:`ensure` creates the folders)."""

    root: Path

    @property
    def cache_dir(self) -> Path:
        """Preprocessed images of the site's splits (:mod:`fedeye.sites.cache`)."""
        return self.root / "cache"

    @property
    def ledger_path(self) -> Path:
        """The site's privacy ledger (SQLite)."""
        return self.root / "ledger.sqlite"

    @property
    def audit_dir(self) -> Path:
        """Folder of the site's audit log."""
        return self.root / "audit"

    @property
    def audit_log(self) -> Path:
        """The audit log of outgoing messages (JSON lines)."""
        return self.audit_dir / "audit.jsonl"

    @property
    def worker_socket(self) -> Path:
        """The local worker's Unix socket (the path must stay under ~100 bytes)."""
        return self.root / "worker.sock"

    @property
    def logs_dir(self) -> Path:
        """The site's log files."""
        return self.root / "logs"

    def ensure(self) -> SiteState:
        """Create the state folder and its subfolders, each 0700, and the marker file."""
        for folder in (self.root, self.cache_dir, self.audit_dir, self.logs_dir):
            ensure_private_dir(folder)
        marker = self.root / STATE_MARKER
        if not marker.exists():
            marker.touch(exist_ok=True)
        return self


def deployment_state(site_toml: Path) -> SiteState:
    """The state folder of a deployment site: ``state/`` beside its ``site.toml``."""
    return SiteState(site_toml.resolve().parent / STATE_DIRNAME)


def state_key(site_dir: Path) -> str:
    """A readable, collision-free folder name for a site folder: its name and 12 hex of SHA-256 of its path.

    >>> state_key(Path("/data/St Aurelia"))
    'St-Aurelia-38a959e8f88c'
    """
    resolved = str(site_dir.expanduser().resolve())
    digest = hashlib.sha256(resolved.encode()).hexdigest()[:12]
    return f"{site_slug(Path(resolved).name)}-{digest}"


def simulated_state(site_dir: Path, *, home: Path | None = None) -> SiteState:
    """The state folder of a simulated site: ``<FEDEYE_HOME>/sites/<state_key(site_dir)>``."""
    return SiteState((home or fedeye_home()) / "sites" / state_key(site_dir))


def site_state_for(site_dir: Path, node_config: Mapping[str, object]) -> SiteState:
    """The node's ``state-dir`` if given, else the simulated-site rule; created if missing."""
    if STATE_DIR_KEY in node_config:
        return SiteState(Path(str(node_config[STATE_DIR_KEY])).expanduser()).ensure()
    return simulated_state(site_dir).ensure()


@dataclass(frozen=True)
class SiteLocation:
    """A site as a command names it: its data folder, its state folder and, in deployment, its config."""

    data: Path
    state: SiteState
    config: SiteConfig | None  # the site.toml of `fedeye site init`; None for a bare data folder


def locate_site(folder: Path, *, state_dir: Path | None = None) -> SiteLocation:
    """Resolve ``folder``: a folder from ``fedeye site init`` (its ``site.toml`` names the data) or a site data folder.

    A data folder's own ``site.toml`` (name, modality, ...) has no ``data``
    key, which tells the two apart. ``state_dir`` overrides where the state is.

    Raises
    ------
    ConfigError
        The init folder's ``site.toml`` is invalid or names no data folder.
    """
    site_toml = folder / "site.toml"
    if not _names_data(site_toml):
        state = SiteState(state_dir) if state_dir else simulated_state(folder)
        return SiteLocation(folder.resolve(), state, None)
    cfg = load_site_config(site_toml)
    if cfg.data is None:
        raise ConfigError(f"{site_toml}: no 'data' folder set; add data = \"/path/to/site\" or run `fedeye site init` again")
    return SiteLocation(cfg.data, SiteState(state_dir) if state_dir else deployment_state(site_toml), cfg)


def _names_data(site_toml: Path) -> bool:
    try:
        return "data" in tomllib.loads(site_toml.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError):
        return False  # no or broken file: a data folder, whose check reports it

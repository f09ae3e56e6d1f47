"""How site folders are laid out under a simulation's data root."""

from __future__ import annotations

from pathlib import Path

from fedeye.errors import ConfigError


def simulated_site_dirs(root: Path) -> list[Path]:
    """The site folders under a simulation data root, in a stable order."""
    if not root.is_dir():
        raise ConfigError(f"data.root: {root} is not a folder; create sites with `fedeye sites synth {root}`")
    dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not dirs:
        raise ConfigError(f"data.root: {root} holds no site folders; create them with `fedeye sites synth {root}`")
    return dirs

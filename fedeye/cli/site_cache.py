"""``fedeye site cache build|status|clear``: prepare a site's images once, on disk, for every message and run.

SITE is either a folder made by ``fedeye site init`` (its ``site.toml`` names
the data; the cache goes to its ``state/`` folder) or a site data folder, as
for ``fedeye site check`` (the cache goes to ``$FEDEYE_HOME/sites/<key>``,
where simulations look for it).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from fedeye.cli._common import console, exits_cleanly
from fedeye.client.admin import SiteLocation, locate_site

if TYPE_CHECKING:  # fedeye.sites loads every image library: only inside the commands
    from fedeye.sites.cache import CachedSplit

DEFAULT_IMAGE_SIZE = 224  # the ViT presets' size (vit-small, vit-base, vit-large)
MIB = 2**20

cache_app = typer.Typer(help="Prepare a site's data once: decoded, preprocessed images on disk.", no_args_is_help=True)

SiteArg = Annotated[
    Path, typer.Argument(help="A folder from `fedeye site init` (with its site.toml), or a site data folder.")
]
StateDirOption = Annotated[
    Path | None,
    typer.Option(
        "--state-dir",
        help="The site's state folder (default: DIR/state for a `fedeye site init` folder, else $FEDEYE_HOME/sites/NAME-HASH).",
    ),
]


class BuildProgress:
    """Shows ``build_site_cache`` progress: a rich bar per split and size on a terminal, one line per entry otherwise."""

    def __init__(self, out: Console) -> None:
        self.out, self.live = out, out.is_terminal
        columns = (
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
        )
        self.bar = Progress(*columns, console=out, disable=not self.live)
        self.tasks: dict[str, TaskID] = {}
        self.finished: set[str] = set()

    def __enter__(self) -> BuildProgress:
        self.bar.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.bar.stop()

    def __call__(self, label: str, done: int, total: int) -> None:
        if label not in self.tasks:
            self.tasks[label] = self.bar.add_task(label, total=total)
        self.bar.update(self.tasks[label], completed=done)
        if done == total and label not in self.finished:
            self.finished.add(label)
            if not self.live:
                self.out.print(f"{label}: {total} images ready")


def build_with_progress(location: SiteLocation, *, image_sizes: list[int], out: Console) -> list[CachedSplit]:
    """Build the site's cache at ``image_sizes``, showing progress on ``out``."""
    from fedeye.sites import open_site
    from fedeye.sites.cache import build_site_cache

    site = open_site(location.data)
    location.state.ensure()
    with BuildProgress(out) as progress:
        return build_site_cache(site, cache_dir=location.state.cache_dir, image_sizes=image_sizes, progress=progress)


@cache_app.command("build")
@exits_cleanly
def cache_build(
    site: SiteArg,
    image_size: Annotated[
        list[int] | None,
        typer.Option(
            "--image-size",
            min=8,
            help=f"Image side to prepare (repeat for several; default: cache_image_sizes in site.toml, else {DEFAULT_IMAGE_SIZE}).",
        ),
    ] = None,
    state_dir: StateDirOption = None,
) -> None:
    """Decode and preprocess every image of every split once; runs then read them memory-mapped."""
    location = locate_site(site, state_dir=state_dir)
    sizes = image_size or (location.config.cache_image_sizes if location.config else []) or [DEFAULT_IMAGE_SIZE]
    built = build_with_progress(location, image_sizes=sizes, out=console)
    total = sum(entry.images.nbytes for entry in built)
    console.print(
        f"data cache of {location.data} ready: {len(built)} entries, {total / MIB:.1f} MiB in {location.state.cache_dir}",
        soft_wrap=True,
    )


@cache_app.command("status")
@exits_cleanly
def cache_status_command(
    site: SiteArg,
    state_dir: StateDirOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List the cache's entries: split, image size, preprocessing, images, size, and whether they match the data now."""
    from fedeye.sites import open_site
    from fedeye.sites.cache import cache_status

    location = locate_site(site, state_dir=state_dir)
    rows = cache_status(open_site(location.data), location.state.cache_dir)
    if as_json:
        entries = [
            {
                "split": r.entry.split,
                "image_size": r.entry.image_size,
                "preprocess": r.entry.preprocess,
                "images": r.entry.count,
                "bytes": r.entry.bytes,
                "current": r.current,
                "path": str(r.entry.path),
            }
            for r in rows
        ]
        typer.echo(
            json.dumps(
                {"site": str(location.data), "cache_dir": str(location.state.cache_dir), "entries": entries}, indent=2
            )
        )
        return
    if not rows:
        console.print(
            f"no data cache yet in {location.state.cache_dir}; build it with `fedeye site cache build {site}`",
            soft_wrap=True,
        )
        return
    table = Table(title=f"data cache of {location.data}", header_style="bold")
    for name in ("split", "size", "preprocess", "images", "MiB", "state"):
        table.add_column(name, justify="right" if name in ("size", "images", "MiB") else "left")
    for r in rows:
        state = "current" if r.current else "[yellow]stale[/] (data changed since)"
        table.add_row(
            r.entry.split,
            f"{r.entry.image_size}px",
            r.entry.preprocess,
            str(r.entry.count),
            f"{r.entry.bytes / MIB:.1f}",
            state,
        )
    console.print(table)
    console.print(f"in {location.state.cache_dir}", soft_wrap=True)


@cache_app.command("clear")
@exits_cleanly
def cache_clear(site: SiteArg, state_dir: StateDirOption = None) -> None:
    """Remove the site's data cache (it is built again when needed)."""
    from fedeye.sites.cache import clear_cache

    location = locate_site(site, state_dir=state_dir)
    freed = clear_cache(location.state.cache_dir)
    console.print(f"removed {freed / MIB:.1f} MiB from {location.state.cache_dir}", soft_wrap=True)

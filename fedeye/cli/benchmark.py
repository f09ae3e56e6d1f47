"""``fedeye benchmark dg``: the leave-one-site-out domain-generalisation benchmark."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Annotated

import typer

from fedeye.cli._common import console, exits_cleanly
from fedeye.errors import ConfigError

benchmark_app = typer.Typer(help="Benchmarks that compare FedEye's methods.", no_args_is_help=True)


@benchmark_app.command("dg")
@exits_cleanly
def dg_command(
    out: Annotated[
        Path, typer.Option("--out", help="Results folder (results.md, *.csv, unseen-auc.png, runs.db).")
    ] = Path("dg-results"),
    sites: Annotated[
        Path | None,
        typer.Option("--sites", help="Folder of site folders (>= 3); default: synthesize them in OUT/sites."),
    ] = None,
    num_sites: Annotated[
        int, typer.Option("--num-sites", help="Synthetic hospitals to make when --sites is not given.")
    ] = 5,
    images_per_site: Annotated[int, typer.Option("--images-per-site", help="Images per synthetic hospital.")] = 160,
    seeds: Annotated[
        list[int] | None, typer.Option("--seed", help="Seed of a repetition (repeat; default 0, 1 and 2).")
    ] = None,
    methods: Annotated[
        str, typer.Option("--methods", help="Comma-separated subset of the methods.")
    ] = "fedavg,fedprox,fedbn,fedadam,prompt-experts,local,centralized,oracle",
    adapt: Annotated[
        bool, typer.Option("--adapt/--no-adapt", help="Also score each federated model after `fedeye adapt`.")
    ] = True,
    calibrate: Annotated[
        bool, typer.Option("--calibrate/--no-calibrate", help="Also after `fedeye calibrate` with 10/20/40 labels.")
    ] = True,
    traffic: Annotated[
        bool, typer.Option("--traffic/--no-traffic", help="Measure frozen-backbone traffic (two one-round runs).")
    ] = True,
    augment: Annotated[
        str, typer.Option("--augment", help="Training augmentation of every method: none, light or strong.")
    ] = "light",
    preprocess: Annotated[
        str | None,
        typer.Option(
            "--preprocess",
            help="Fundus preprocessing of every site (model.preprocess): none, fov-crop or fov-crop+clahe "
            "(default: each site's own).",
        ),
    ] = None,
    held_out: Annotated[
        str | None, typer.Option("--held-out", help="Comma-separated site folder names to hold out (default: each).")
    ] = None,
    rounds: Annotated[int, typer.Option("--rounds", help="Federated rounds.")] = 10,
    local_epochs: Annotated[int, typer.Option("--local-epochs", help="Local epochs per round.")] = 1,
    img_size: Annotated[
        int, typer.Option("--img-size", help="Image side in pixels (vit-tiny-cpu, patches of 8).")
    ] = 64,
    device: Annotated[str, typer.Option("--device", help="auto, cpu or cuda.")] = "auto",
) -> None:
    """Hold each site out in turn, federate over the rest, and score every method on the unseen site."""
    from fedeye.compose.dg_benchmark import BenchmarkSettings, dg_run_config, run_benchmark
    from fedeye.sites.synth import synthesize_sites

    if device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"--device: {device!r} is not auto, cpu or cuda")
    out = out.resolve()
    if sites is None:
        sites = out / "sites"
        if not sites.exists():
            console.print(f"synthesizing {num_sites} hospitals x {images_per_site} images in {sites}")
            synthesize_sites(
                sites, sites=num_sites, images_per_site=images_per_site, modality="fundus", seed=7, size=img_size
            )
    os.environ.setdefault("FEDEYE_HOME", str(out / "home"))  # the sites' audit logs stay with the results
    logging.getLogger("flwr").setLevel(logging.WARNING)
    if augment not in ("none", "light", "strong"):
        raise ConfigError(f"--augment: {augment!r} is not none, light or strong")
    if preprocess not in (None, "none", "fov-crop", "fov-crop+clahe"):
        raise ConfigError(f"--preprocess: {preprocess!r} is not none, fov-crop or fov-crop+clahe")
    base = dg_run_config(
        sites.resolve(),
        out,
        rounds=rounds,
        local_epochs=local_epochs,
        img_size=img_size,
        device=device,
        augment=augment,
        preprocess=preprocess,
    )
    settings = BenchmarkSettings(
        sites_root=sites.resolve(),
        out_dir=out,
        base=base,
        methods=tuple(m.strip() for m in methods.split(",") if m.strip()),
        seeds=tuple(seeds or (0, 1, 2)),
        adapt=adapt,
        calibrate=calibrate,
        traffic=traffic,
        held_out=None if held_out is None else tuple(h.strip() for h in held_out.split(",") if h.strip()),
    )
    start = time.perf_counter()
    run_benchmark(settings, log=console.print)
    console.print(f"done in {time.perf_counter() - start:.0f} s; results in [bold]{out / 'results.md'}[/]")
    console.print((out / "results.md").read_text(), markup=False)


@benchmark_app.command("dg-merge")
@exits_cleanly
def dg_merge_command(
    parts: Annotated[
        list[Path], typer.Argument(help="Result folders of `benchmark dg` runs (e.g. one per --held-out or --seed).")
    ],
    out: Annotated[Path, typer.Option("--out", help="Folder for the joined results.md, CSVs and plots.")] = Path(
        "dg-results"
    ),
) -> None:
    """Join benchmark runs split across processes or machines into one set of tables."""
    from fedeye.compose.dg_benchmark import merge_results

    rows = merge_results(parts, out)
    console.print(f"{len(rows)} rows from {len(parts)} runs; results in [bold]{out / 'results.md'}[/]")

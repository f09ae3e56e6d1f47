"""Scale run: many small simulated sites, a sample of them per round; peak memory and round times.

Synthesizes ``--sites`` tiny sites (default 100 x 20 images at 32 px) and
runs FedAvg in Flower's Simulation Engine with ``fraction_train`` and
``fraction_evaluate`` = ``--fraction`` (default 0.1: 10 sites per round;
the final test also samples that share). A background thread sums the
resident memory of the whole process tree every ``--interval`` seconds: this
process (the ServerApp and the Simulation Engine run here), its descendants
(Ray's GCS, raylet, worker and actor processes) and any Ray process started
during the run. RSS double-counts pages shared between processes (libtorch,
the Ray object store); PSS (sampled every 4th tick, it reads smaps) splits
them. The target applies to the RSS sum, the pessimistic figure.

Target: peak RSS of the process tree <= 4 GiB on 2 CPU cores.
Exits 0 whether or not the target is met.
"""

from __future__ import annotations

import argparse
import math
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import (
    GIB,
    NOISY_CORES,
    TimingSink,
    TreeMonitor,
    ensure_ray_stopped,
    machine,
    print_table,
    verdict,
    wait_for_quiet,
    write_json,
)

TARGET_BYTES = 4 * GIB


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sites", type=int, default=100, help="simulated sites")
    parser.add_argument("--images-per-site", type=int, default=20, help="images per site")
    parser.add_argument("--image-size", type=int, default=32, help="image side in px (a multiple of 8)")
    parser.add_argument(
        "--fraction", type=float, default=0.1, help="share of sites sampled to train and to evaluate each round"
    )
    parser.add_argument("--rounds", type=int, default=3, help="federated rounds")
    parser.add_argument("--local-epochs", type=int, default=1, help="local epochs per round")
    parser.add_argument("--client-cpus", type=float, default=1.0, help="simulation.client_cpus")
    parser.add_argument("--interval", type=float, default=0.5, help="memory sampling interval, seconds")
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="folder for sites and store (default: a fresh temp folder, removed after)",
    )
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="first wait up to this long until other programs leave the CPUs idle (default: do not wait)",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    return parser.parse_args(argv)


def scale_config(args: argparse.Namespace, workdir: Path, site_root: Path) -> Any:
    """The run: the demo's model and training, shrunk images, sampled sites."""
    from fedeye.config import parse_run_config

    sampled = max(1, math.ceil(args.sites * args.fraction))
    return parse_run_config(
        {
            "name": "bench-scale",
            "data": {"root": str(site_root)},
            "model": {"arch": "vit-tiny-cpu", "img_size": args.image_size},
            "strategy": {
                "name": "fedavg",
                "fraction_train": args.fraction,
                "fraction_evaluate": args.fraction,
                "min_train_nodes": sampled,
                "min_evaluate_nodes": sampled,
                "min_available_nodes": args.sites,
            },
            "training": {"rounds": args.rounds, "local_epochs": args.local_epochs, "batch_size": 32, "lr": 1e-3},
            "simulation": {"client_cpus": args.client_cpus},
            "output": {"dir": str(workdir), "db": str(workdir / "fedeye.db")},
        },
        source="scale benchmark",
    )


def synthesize(args: argparse.Namespace, root: Path) -> float:
    """Write the sites; return the seconds it took."""
    from fedeye.sites.synth import synthesize_sites

    start = time.perf_counter()
    synthesize_sites(
        root,
        sites=args.sites,
        images_per_site=args.images_per_site,
        modality="fundus",
        seed=0,
        size=args.image_size,
        overwrite=True,
    )
    return time.perf_counter() - start


def run(cfg: Any, args: argparse.Namespace, monitor: TreeMonitor) -> dict[str, Any]:
    """The simulation under the memory monitor; returns the figures."""
    from fedeye.compose.simulation import simulate
    from fedeye.server.federation import open_store

    sink = TimingSink()
    with monitor:
        called = time.perf_counter()
        result = simulate(cfg, progress=sink)
        returned = time.perf_counter()
    with open_store(cfg) as store:
        detail = store.get_run(result.run_id)
    last_test = sink.last_report("test")
    return {
        "status": detail.run.status,
        "startup": sink.round_start(1) - called,
        "rounds": sink.round_walls(args.rounds),
        "final_test": last_test - sink.last_report("evaluate", args.rounds),
        "teardown": returned - last_test,
        "total": returned - called,
        "foreign_cpu_load": monitor.foreign_load(called, returned),
        "peak_rss_bytes": monitor.peak_rss,
        "peak_pss_bytes": monitor.peak_pss,
        "peak_processes": monitor.peak_procs,
        "memory_samples": monitor.samples,
        "peak_breakdown": monitor.peak_breakdown,
        "sites_trained": [r.num_sites_trained for r in detail.rounds],
        "sites_tested": sum(1 for m in detail.site_metrics if m.phase == "test"),
    }


def report(fig: dict[str, Any], synth_seconds: float) -> None:
    rows: list[list[object]] = [
        ["synthesize sites (not in the run)", synth_seconds],
        ["start-up (simulate() -> round 1)", fig["startup"]],
    ]
    rows += [
        [f"round {r} ({n} sites trained)", wall]
        for r, (wall, n) in enumerate(zip(fig["rounds"], fig["sites_trained"], strict=False), start=1)
    ]
    rows += [
        [f"final test ({fig['sites_tested']} sites)", fig["final_test"]],
        ["teardown", fig["teardown"]],
        ["simulate() total", fig["total"]],
    ]
    print_table("wall seconds", ["phase", "seconds"], rows)
    later = fig["rounds"][1:] or fig["rounds"]
    print(f"\nmedian round (rounds 2..N): {statistics.median(later):.2f} s; run status: {fig['status']}")
    print(
        f"peak memory of the process tree: RSS {fig['peak_rss_bytes'] / GIB:.2f} GiB, PSS {fig['peak_pss_bytes'] / GIB:.2f} GiB, "
        f"{fig['peak_processes']} processes at most, {fig['memory_samples']} samples"
    )
    print_table(
        "RSS by process at the peak",
        ["process", "MiB"],
        [[name, f"{rss / 2**20:.0f}"] for name, rss in fig["peak_breakdown"]],
    )
    print(
        f"foreign CPU load during the run: {fig['foreign_cpu_load']:.2f} cores"
        + ("  (WARNING: times inflated by another program)" if fig["foreign_cpu_load"] > NOISY_CORES else "")
    )
    print(
        f"peak RSS {fig['peak_rss_bytes'] / GIB:.2f} GiB   target <= {TARGET_BYTES / GIB:.0f} GiB   {verdict(fig['peak_rss_bytes'], TARGET_BYTES)}"
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="fedeye-bench-scale-"))
    monitor = TreeMonitor(interval=args.interval)
    try:
        synth_seconds = synthesize(args, workdir / "sites")
        cfg = scale_config(args, workdir, workdir / "sites")
        print(
            f"{args.sites} sites x {args.images_per_site} images at {args.image_size} px, {cfg.strategy.min_train_nodes} sampled per round, "
            f"{args.rounds} rounds x {args.local_epochs} epochs",
            flush=True,
        )
        wait_for_quiet(args.wait_quiet)
        fig = run(cfg, args, monitor)
    finally:
        left = ensure_ray_stopped(monitor)
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    report(fig, synth_seconds)
    print(f"Ray processes left after the run: {left or 'none'}")
    write_json(
        args.json,
        {
            "benchmark": "scale",
            "args": {k: str(v) for k, v in vars(args).items()},
            "machine": machine(),
            "synthesize_seconds": synth_seconds,
            **fig,
            "target_bytes": TARGET_BYTES,
            "pass": fig["peak_rss_bytes"] <= TARGET_BYTES,
            "ray_left": left,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Site data cache: time to prepare a site once, and from "message arrival" to the first training batch.

In deployment Flower runs every message in a fresh ``flwr-clientapp``
process. Each *message* here is such a process: a fresh Python interpreter
(``subprocess``) that imports torch and FedEye's site modules, builds the
train split's :class:`~fedeye.sites.dataset.SiteDataset` as the ClientApp
does, and draws the first shuffled training batch. Its wall time is taken by
this script from ``Popen`` to the moment the child reports the batch, so it
includes interpreter start-up and imports. Three kinds of message:

- ``no cache``: the behaviour without a cache (scan and decode every image);
- ``cold``: the first message with the cache (builds the entries of all three
  splits: this is the time to build the cache);
- ``warm``: later messages (open the entry, memory-mapped).

The sites are synthetic fundus photographs (``fedeye.sites.synth``) at
``--image-px`` (256) read at ``--target-px`` (224). Synthesizing 5,000 such
images takes about as long as the rest of the benchmark, so ``--unique``
(500) images are synthesized once and copied under distinct names, with
distinct patient ids per copy, to make sites of ``--images`` (5,000 and
1,000) files: decoding, hashing and caching costs are those of distinct
files. The script also times the per-message fingerprint (one ``stat`` per
file) against hashing every file's bytes with SHA-256.

Target: a warm message reaches its first batch in <= 2 s, for any site size.
Verdicts are given for the data path (building the dataset and drawing the
batch, after imports: best wall time of the warm messages, and worst CPU
time) and for the whole process. ``cpu`` columns are the message process's
own CPU time, much less sensitive than wall time to other programs sharing
the machine. Importing torch alone costs about 3 CPU-seconds on the 2-core
VM this was written on, which no data cache can remove (a long-lived site
worker can). Exits 0 whether or not the target is met.

Run: ``python benchmarks/data_cache.py [--images 5000 1000] [--json FILE]``.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import machine, print_table, verdict, write_json

TARGET_WARM_S = 2.0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, nargs="+", default=[5000, 1000], help="site sizes to measure")
    parser.add_argument("--unique", type=int, default=500, help="distinct synthetic images copied to make each site")
    parser.add_argument("--image-px", type=int, default=256, help="side of the synthetic photographs")
    parser.add_argument("--target-px", type=int, default=224, help="image size the run trains at")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--warm", type=int, default=3, help="warm messages per site")
    parser.add_argument("--no-baseline", action="store_true", help="skip the message without a cache")
    parser.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    parser.add_argument("--child", nargs=3, metavar=("SITE", "SIZE", "MODE"), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


# ------------------------------------------------------------------ one message (child process)


def message(site_dir: str, image_size: int, mode: str, batch_size: int) -> None:
    """Run in a fresh interpreter: open the train split as the ClientApp does and draw one batch."""
    start, cpu0 = time.perf_counter(), time.process_time()
    import torch
    from torch.utils.data import DataLoader

    from fedeye.client.state import simulated_state
    from fedeye.sites import open_site
    from fedeye.sites.dataset import SiteDataset

    imported, cpu1 = time.perf_counter(), time.process_time()
    torch.set_num_threads(1)  # as the ClientApp does (simulation.client_cpus, default 1)
    cache_dir = simulated_state(Path(site_dir)).ensure().cache_dir if mode != "nocache" else None
    data = SiteDataset(open_site(site_dir), "train", image_size=image_size, augment=True, cache_dir=cache_dir)
    built, cpu2 = time.perf_counter(), time.process_time()
    images, _ = next(
        iter(DataLoader(data, batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(0)))
    )
    done, cpu3 = time.perf_counter(), time.process_time()
    print(
        json.dumps(
            {
                "imports": imported - start,
                "dataset": built - imported,
                "batch": done - built,
                "cpu": cpu3,
                "cpu_imports": cpu1 - cpu0,
                "cpu_data": cpu3 - cpu1,
                "cpu_dataset": cpu2 - cpu1,
                "images": len(data),
                "shape": list(images.shape),
            }
        ),
        flush=True,
    )


def run_message(site: Path, home: Path, *, image_size: int, mode: str, batch_size: int) -> dict[str, Any]:
    """Time one message process from spawn to its first batch."""
    env = {**_env(), "FEDEYE_HOME": str(home)}
    command = [sys.executable, __file__, "--child", str(site), str(image_size), mode, "--batch-size", str(batch_size)]
    start = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    wall = time.perf_counter() - start
    proc.wait()
    if proc.returncode or not line:
        raise RuntimeError(f"message process failed ({proc.returncode}): {' '.join(command)}")
    return {"mode": mode, "wall": wall, **json.loads(line)}


def _env() -> dict[str, str]:
    import os

    return dict(os.environ)


# ------------------------------------------------------------------ sites


def make_site(unique: Path, out: Path, *, images: int) -> Path:
    """A site of ``images`` files: the unique images copied under new names, new patient ids per copy."""
    with (unique / "manifest.csv").open(newline="") as handle:
        reader = csv.DictReader(handle)
        header, rows = list(reader.fieldnames or []), list(reader)
    (out / "images").mkdir(parents=True)
    shutil.copy(unique / "site.toml", out / "site.toml")
    with (out / "manifest.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=header, lineterminator="\n")
        writer.writeheader()
        for i in range(images):
            row, copy = dict(rows[i % len(rows)]), i // len(rows)
            name = f"images/{i:06d}.png"
            shutil.copyfile(unique / row["image"], out / name)
            writer.writerow({**row, "image": name, "patient_id": f"{row['patient_id']}-c{copy}"})
    return out


def fingerprint_times(site: Path) -> dict[str, float]:
    """Seconds for the stat fingerprint and for SHA-256 over every file's bytes (files just read: page cache warm)."""
    from fedeye.sites import open_site
    from fedeye.sites.cache import content_digest, site_fingerprint

    opened = open_site(site)
    start = time.perf_counter()
    site_fingerprint(opened)
    stat_s = time.perf_counter() - start
    start = time.perf_counter()
    content_digest(site)
    content_s = time.perf_counter() - start
    size = sum(p.stat().st_size for p in site.rglob("*") if p.is_file())
    return {"stat_s": stat_s, "content_s": content_s, "site_mib": size / 2**20}


# ------------------------------------------------------------------ main


def measure_site(site: Path, home: Path, args: argparse.Namespace) -> dict[str, Any]:
    kwargs = {"image_size": args.target_px, "batch_size": args.batch_size}
    result: dict[str, Any] = {}
    if not args.no_baseline:
        result["nocache"] = run_message(site, home, mode="nocache", **kwargs)
    result["cold"] = run_message(site, home, mode="cache", **kwargs)
    result["warm"] = [run_message(site, home, mode="cache", **kwargs) for _ in range(args.warm)]
    result["fingerprint"] = fingerprint_times(site)
    cache = next((home / "sites").iterdir()) / "cache"
    result["cache_mib"] = sum(p.stat().st_size for p in cache.glob("*.npy")) / 2**20
    return result


def report(results: dict[int, dict[str, Any]]) -> None:
    rows = []
    for images, r in results.items():
        messages = ([("no cache", r["nocache"])] if "nocache" in r else []) + [("cold (builds)", r["cold"])]
        messages += [(f"warm {i + 1}", m) for i, m in enumerate(r["warm"])]
        rows += [
            (
                images,
                kind,
                m["images"],
                m["wall"],
                m["imports"],
                m["dataset"],
                m["batch"],
                m["dataset"] + m["batch"],
                m["cpu"],
                m["cpu_imports"],
                m["cpu_data"],
            )
            for kind, m in messages
        ]
    print_table(
        "message arrival -> first training batch, fresh process each (wall s, then CPU s of the message process)",
        [
            "site images",
            "message",
            "train images",
            "wall",
            "imports",
            "dataset",
            "1st batch",
            "data path",
            "cpu",
            "cpu imports",
            "cpu data path",
        ],
        rows,
    )
    print_table(
        "fingerprint: per-message stat walk vs SHA-256 of every file's bytes (page cache warm)",
        ["site images", "site MiB", "stat walk s", "sha256 s", "cache MiB"],
        [
            (
                n,
                r["fingerprint"]["site_mib"],
                f"{r['fingerprint']['stat_s']:.3f}",
                r["fingerprint"]["content_s"],
                r["cache_mib"],
            )
            for n, r in results.items()
        ],
    )
    print()
    for images, r in results.items():
        data = min(m["dataset"] + m["batch"] for m in r["warm"])
        wall = min(m["wall"] for m in r["warm"])
        cpu = max(m["cpu_data"] for m in r["warm"])
        print(
            f"{images} images: build {r['cold']['dataset']:.1f} s wall, {r['cold']['cpu_dataset']:.1f} s CPU (every split, "
            f"in the first message). Warm message, best of {len(r['warm'])}: data path {data:.2f} s wall "
            f"({verdict(data, TARGET_WARM_S)} <= {TARGET_WARM_S:.0f} s), worst data-path CPU {cpu:.2f} s "
            f"({verdict(cpu, TARGET_WARM_S)}); whole process incl. interpreter and imports {wall:.2f} s ({verdict(wall, TARGET_WARM_S)})"
        )


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.child:
        message(args.child[0], int(args.child[1]), args.child[2], args.batch_size)
        return
    from fedeye.sites.synth import synthesize_sites

    tmp = Path(tempfile.mkdtemp(prefix="fedeye-data-cache-"))
    try:
        start = time.perf_counter()
        unique = synthesize_sites(tmp / "unique", sites=1, images_per_site=args.unique, size=args.image_px)[0]
        print(
            f"synthesized {args.unique} fundus images at {args.image_px} px in {time.perf_counter() - start:.0f} s",
            flush=True,
        )
        results: dict[int, dict[str, Any]] = {}
        for images in args.images:
            site = make_site(unique, tmp / f"site-{images}", images=images)
            results[images] = measure_site(site, tmp / f"home-{images}", args)
            print(f"measured the {images}-image site", flush=True)
        report(results)
        write_json(
            args.json,
            {
                "machine": machine(),
                "args": {k: v for k, v in vars(args).items() if k != "json"},
                "results": results,
                "target_warm_s": TARGET_WARM_S,
            },
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

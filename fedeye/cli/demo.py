"""The ``fedeye demo`` preset: synthetic hospitals and a run config tuned for 2 CPU cores."""

from __future__ import annotations

from pathlib import Path

from fedeye.config import RunConfig, parse_run_config
from fedeye.sites.synth import synthesize_sites

DEMO_IMAGES_PER_SITE = 200
DEMO_IMAGE_SIZE = 64
DEMO_SEED = 0


def prepare_demo_sites(out: Path, *, sites: int) -> Path:
    """Synthesize the demo sites under ``out/sites`` unless the same set is already there."""
    root = out / "sites"
    existing = sorted(p.name for p in root.glob("site-*") if (p / "manifest.csv").is_file()) if root.is_dir() else []
    wanted = [f"site-{i}" for i in range(1, sites + 1)]
    if existing != wanted:
        synthesize_sites(
            root,
            sites=sites,
            images_per_site=DEMO_IMAGES_PER_SITE,
            modality="fundus",
            seed=DEMO_SEED,
            size=DEMO_IMAGE_SIZE,
            overwrite=True,
        )
    return root


def demo_config(out: Path, *, site_root: Path, rounds: int) -> RunConfig:
    """The demo run: a tiny prompt ViT trained with FedAvg in full fine-tuning mode."""
    return parse_run_config(
        {
            "name": "demo",
            "data": {"root": str(site_root)},
            "model": {"arch": "vit-tiny-cpu", "img_size": DEMO_IMAGE_SIZE},
            "strategy": {"name": "fedavg"},
            "training": {"rounds": rounds, "local_epochs": 3, "batch_size": 32, "lr": 1e-3},
            "output": {"dir": str(out), "db": str(out / "fedeye.db")},
        },
        source="demo preset",
    )

"""Re-score the ``+ adapt`` rows of finished ``fedeye benchmark dg`` runs with the current ``fedeye adapt``.

The federated models of a benchmark run are kept in ``OUT/runs/*/global-model.pt``;
adaptation needs only them and the held-out site's images, so a change to
:mod:`fedeye.client.adapt` can be measured without training again::

    python benchmarks/dg_rescore.py RUN_DIR [RUN_DIR ...] --out RESCORED

Each RUN_DIR must hold one held-out site (``--held-out``), as when a
benchmark is split by site; its rows are copied to ``RESCORED/<name>`` with
every ``+ adapt`` row recomputed, ready for ``fedeye benchmark dg-merge``.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

from fedeye.client.adapt import AdaptSettings, adapt_model
from fedeye.compose.dg_benchmark import (
    SCORED_SPLITS,
    FoldResult,
    _all_images,
    _Pooled,
    _scored,
    _variant,
    write_results,
)
from fedeye.config import RunConfig
from fedeye.fairness.operating_point import DEFAULT_POINT, ModelOperatingPoint
from fedeye.models import load_model
from fedeye.sites.base import open_site
from fedeye.sites.dataset import SiteDataset


def rescore(run_dir: Path, sites: Path, out: Path) -> list[FoldResult]:
    rows = [FoldResult(**raw) for raw in json.loads((run_dir / "rows.json").read_text())]
    models = {}
    for path in sorted((run_dir / "runs").glob("*/global-model.pt")):
        model, cfg, meta = load_model(path)
        models[str(meta["run_name"]).removeprefix("dg-")] = (model, cfg, meta)
    fresh = []
    for row in rows:
        method = row.method.removesuffix(" + adapt")
        if not row.method.endswith(" + adapt") or method not in models:
            fresh.append(row)
            continue
        model, cfg, meta = models[method]
        run_cfg = RunConfig.model_validate({"model": cfg.model_dump(mode="json")})
        target = sites / row.held_out
        point = ModelOperatingPoint.from_metadata(meta) or DEFAULT_POINT
        adapted, _ = adapt_model(model, _all_images(target, run_cfg), point=point, settings=AdaptSettings())
        scored = _Pooled([SiteDataset(open_site(target), s, image_size=int(cfg.img_size or 64)) for s in SCORED_SPLITS])
        fresh.append(_scored(_variant(row, row.method), model, scored, adapted))
    (out / run_dir.name).mkdir(parents=True, exist_ok=True)
    write_results(fresh, out / run_dir.name)
    return fresh


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--sites", type=Path, required=True, help="The benchmark's site folders.")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    for run in args.runs:
        rows = rescore(run, args.sites, args.out)
        print(
            run.name, json.dumps([asdict(r) | {"expert_mix": None} for r in rows if r.method.endswith("adapt")])[:300]
        )


if __name__ == "__main__":
    main()

"""Re-score finished ``fedeye benchmark dg`` runs with the current operating-point code, without training again.

The federated models of a benchmark run are kept in ``OUT/runs/*/global-model.pt``.
With ``--federation-point`` the federation's operating point is chosen again
by the current protocol's functions (each training site's moments record,
then its counts record on the pooled grids, summed; exactly what the sites
and the coordinator compute, here in one process), and every row at that
point is recomputed; the ``+ adapt`` rows always are::

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
from fedeye.client.training import predict
from fedeye.compose.dg_benchmark import (
    SCORED_SPLITS,
    FoldResult,
    _all_images,
    _calibrated_rows,
    _Pooled,
    _scored,
    _variant,
    final_models,
    write_results,
)
from fedeye.config import RunConfig
from fedeye.fairness.operating_point import DEFAULT_POINT, ModelOperatingPoint
from fedeye.sites.base import open_site
from fedeye.sites.dataset import SiteDataset


def federation_point(model: object, image_size: int, train_sites: list[Path]) -> ModelOperatingPoint | None:
    """The current protocol's choice on the training sites' val splits (site functions, then the coordinator's)."""
    from fedeye import protocol as p
    from fedeye.client.operating_point import score_moments_record, score_summary
    from fedeye.fairness.operating_point import ScoreScale
    from fedeye.server.operating_point import SummedScores, choose_from_summaries

    preds = [predict(model, SiteDataset(open_site(site), "val", image_size=image_size)) for site in train_sites]  # type: ignore[arg-type]
    moments = [score_moments_record(probs, min_group_size=10) for probs, _ in preds]
    count = sum(float(m[p.SUMMARY_IMAGES]) for m in moments if m)  # type: ignore[arg-type]
    total = sum(float(m[p.SUMMARY_SUM]) for m in moments if m)  # type: ignore[arg-type]
    squares = sum(float(m[p.SUMMARY_SQUARES]) for m in moments if m)  # type: ignore[arg-type]
    scale = ScoreScale.from_moments(count, total, squares)
    summed = SummedScores()
    for probs, labels in preds:
        record = score_summary(probs, labels, min_group_size=10, scale=scale)
        if record is not None:
            summed.add(record)
    return choose_from_summaries(summed, RunConfig(), scale)


def _oracle_own_point(row: FoldResult, model: object, target: Path, scored: _Pooled) -> FoldResult:
    """The oracle with its threshold and calibration fitted on the held-out site's own train labels."""
    from fedeye.client.calibrate import fit_labelled
    from fedeye.compose.dg_benchmark import _with_rates

    train_probs, train_labels = predict(
        model, SiteDataset(open_site(target), "train", image_size=scored.datasets[0].image_size)
    )  # type: ignore[arg-type, attr-defined]
    point = fit_labelled(train_probs, train_labels, target="youden")
    probs, labels = predict(model, scored)  # type: ignore[arg-type]
    return _with_rates(_variant(row, "oracle + own threshold"), probs, labels, point)


def rescore(
    run_dir: Path, sites: Path, out: Path, *, refit: bool = False, adapt: AdaptSettings | None = None
) -> list[FoldResult]:
    rows = [FoldResult(**raw) for raw in json.loads((run_dir / "rows.json").read_text())]
    models = final_models(run_dir)  # by (method, seed): a run folder may hold several seeds
    oracle = all(r.method == "oracle" for r in rows)  # one FedAvg over every site, scored on each
    if oracle:
        models = {("oracle", seed): m for (name, seed), m in models.items() if name == "fedavg"}
    points = {}
    for key, (model, cfg, meta) in models.items():
        held = "" if oracle else next(r.held_out for r in rows)
        train_sites = sorted(s for s in sites.iterdir() if s.is_dir() and s.name != held)
        stored = ModelOperatingPoint.from_metadata(meta) or DEFAULT_POINT
        points[key] = (federation_point(model, int(cfg.img_size or 64), train_sites) or stored) if refit else stored
    fresh = []
    for row in rows:
        method = row.method.removesuffix(" + adapt").split(" + calibrate(")[0]
        key = (method, row.seed)
        if refit and key in models and " + calibrate(" in row.method:
            continue  # recomputed with the method's own row below
        if key not in models or not (row.method.endswith(" + adapt") or (refit and row.method == method)):
            fresh.append(row)
            continue
        model, cfg, meta = models[key]
        run_cfg = RunConfig.model_validate({"model": cfg.model_dump(mode="json")})
        target = sites / row.held_out
        point = points[key]
        scored = _Pooled([SiteDataset(open_site(target), s, image_size=int(cfg.img_size or 64)) for s in SCORED_SPLITS])
        if row.method == method:
            fresh.append(_scored(row, model, scored, point))
            fresh += (
                [_oracle_own_point(row, model, target, scored)]
                if oracle
                else _calibrated_rows(row, model, target, run_cfg, scored, point)
            )
            continue
        adapted, _ = adapt_model(model, _all_images(target, run_cfg), point=point, settings=adapt or AdaptSettings())
        fresh.append(_scored(_variant(row, row.method), model, scored, adapted))
    (out / run_dir.name).mkdir(parents=True, exist_ok=True)
    write_results(fresh, out / run_dir.name)
    return fresh


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--sites", type=Path, required=True, help="The benchmark's site folders.")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--federation-point", action="store_true", help="Choose the federation's point again too.")
    parser.add_argument(
        "--prevalence-strength",
        type=float,
        default=AdaptSettings().prevalence_strength,
        help="adapt's prevalence prior in pseudo-images (0: maximum-likelihood EM)",
    )
    args = parser.parse_args()
    adapt = AdaptSettings(prevalence_strength=args.prevalence_strength)
    for run in args.runs:
        rows = rescore(run, args.sites, args.out, refit=args.federation_point, adapt=adapt)
        print(
            run.name, json.dumps([asdict(r) | {"expert_mix": None} for r in rows if r.method.endswith("adapt")])[:300]
        )


if __name__ == "__main__":
    main()

"""How strong a prevalence prior ``fedeye adapt`` should use, on finished ``fedeye benchmark dg`` runs.

``fedeye adapt`` fits a two-Gaussian mixture to the new hospital's
log-odds, with a Beta prior on the positive weight centred on the
federation's validation prevalence (``fedeye.client.adapt.PrevalencePrior``,
``--prevalence-strength`` pseudo-images). A prior helps where the mixture is
ambiguous and hurts where the new hospital's prevalence really differs, so
both are measured here: every federated model of the runs is scored once on
its held-out site, then the site's images are subsampled to other
prevalences (dropping positives or negatives at random; ``natural`` keeps
them all) and the threshold step of ``adapt`` runs at each strength::

    python benchmarks/adapt_prior.py RUN_DIR [RUN_DIR ...] --sites SITES \\
        --strengths 0,50,200,400 --prevalences natural,0.15,0.7 --draws 5

Each RUN_DIR holds one held-out site (``fedeye benchmark dg --held-out``),
any number of seeds. As in the benchmark, ``adapt`` sees every image of
the held-out site (labels unused) and the rates are counted on its val and
test images. Prints one row per method, prevalence and strength: mean
balanced accuracy, the worst of sensitivity and specificity, and how many
(model, draw) pairs had either under 0.5.
"""

from __future__ import annotations

import argparse
import json
import statistics
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedeye.client.adapt import point_from_scores
from fedeye.client.training import predict
from fedeye.compose.dg_benchmark import final_models
from fedeye.fairness.operating_point import DEFAULT_POINT, ModelOperatingPoint, positive_log_odds, rates_at
from fedeye.sites.base import open_site
from fedeye.sites.dataset import SiteDataset

SPLITS = ("train", "val", "test")
SCORED = ("val", "test")


@dataclass(frozen=True)
class Scored:
    """One federated model's scores on its held-out site, once."""

    method: str
    seed: int
    held_out: str
    start: ModelOperatingPoint
    log_odds: np.ndarray
    labels: np.ndarray
    scored: np.ndarray  # True for val and test images (where the rates are counted)


def score_runs(run_dir: Path, sites: Path) -> list[Scored]:
    held_out = {row["held_out"] for row in json.loads((run_dir / "rows.json").read_text())}
    if len(held_out) != 1:
        raise SystemExit(f"{run_dir}: holds {len(held_out)} held-out sites; run the benchmark with one --held-out")
    (held,) = held_out
    site = open_site(sites / held)
    out = []
    for (method, seed), (model, cfg, meta) in final_models(run_dir).items():
        parts = [predict(model, SiteDataset(site, s, image_size=int(cfg.img_size or 64))) for s in SPLITS]  # type: ignore[arg-type]
        out.append(
            Scored(
                method=method,
                seed=seed,
                held_out=held,
                start=ModelOperatingPoint.from_metadata(meta) or DEFAULT_POINT,
                log_odds=np.concatenate([positive_log_odds(probs) for probs, _ in parts]),
                labels=np.concatenate([labels for _, labels in parts]),
                scored=np.concatenate([np.full(len(labels), s in SCORED) for s, (_, labels) in zip(SPLITS, parts)]),
            )
        )
    return out


def subsample(labels: np.ndarray, prevalence: float | None, rng: np.random.Generator) -> np.ndarray:
    """Indices keeping every image of one class and enough of the other to reach ``prevalence`` (None: all)."""
    index = np.arange(len(labels))
    if prevalence is None:
        return index
    pos, neg = index[labels == 1], index[labels == 0]
    if prevalence < len(pos) / len(index):  # fewer positives
        pos = rng.choice(pos, size=max(int(round(prevalence * len(neg) / (1 - prevalence))), 1), replace=False)
    else:
        neg = rng.choice(neg, size=max(int(round(len(pos) * (1 - prevalence) / prevalence)), 1), replace=False)
    return np.sort(np.concatenate([pos, neg]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--sites", type=Path, required=True, help="The benchmark's site folders.")
    parser.add_argument("--strengths", default="0,50,200,400", help="prior strengths in pseudo-images")
    parser.add_argument("--prevalences", default="natural,0.15,0.7", help="'natural' or a prevalence in (0, 1)")
    parser.add_argument("--draws", type=int, default=5, help="random subsamples per prevalence")
    args = parser.parse_args()
    strengths = [float(s) for s in args.strengths.split(",")]
    prevalences = [None if p == "natural" else float(p) for p in args.prevalences.split(",")]
    models = [m for run in args.runs for m in score_runs(run, args.sites)]
    print("| method | prevalence | strength | runs | balanced acc. | worst sens/spec | sens or spec < 0.5 |")
    print("|---|---|---|---|---|---|---|")
    for method in sorted({m.method for m in models}):
        for prevalence in prevalences:
            for strength in strengths:
                baccs, worst, bad = [], [], 0
                for m in (m for m in models if m.method == method):
                    rng = np.random.default_rng(m.seed)
                    for _ in range(1 if prevalence is None else args.draws):
                        keep = subsample(m.labels, prevalence, rng)
                        point, *_ = point_from_scores(m.log_odds[keep], m.start, prevalence_strength=strength)
                        scored = keep[m.scored[keep]]
                        rates = rates_at(m.labels[scored], m.log_odds[scored], point.log_odds)
                        low = min(rates["sensitivity"], rates["specificity"])
                        baccs.append(rates["balanced-accuracy"])
                        worst.append(low)
                        bad += low < 0.5
                label = "natural" if prevalence is None else f"{prevalence:.2f}"
                print(
                    f"| {method} | {label} | {strength:g} | {len(baccs)} | {statistics.fmean(baccs):.3f} "
                    f"| {min(worst):.2f} | {bad} |"
                )


if __name__ == "__main__":
    main()

"""DP utility: test AUC of federated training at epsilon 1, 3, 8 vs without DP, on synthetic sites.

What is run
-----------
``--sites`` synthetic fundus sites (default 4 x 200 images at 64 px, seed
0), the demo's model and training settings (vit-tiny-cpu, FedAvg, 5 rounds
x 3 local epochs, batch 32, AdamW lr 1e-3) in each ``--modes`` (``prompt``:
frozen random backbone, prompts + head train; ``full``). For every epsilon
each site plans its rounds with :func:`fedeye.privacy.planning.plan_round`
(RDP accountant, delta = 1/(10 x its train patients), clipping C = 1, sigma
calibrated once so the planned rounds spend exactly epsilon) and trains with
:func:`fedeye.client.dp_training.train_local_dp`; the non-private row uses
``train_local`` (with its balanced class weights, which DP drops).

FedAvg runs in this process, not in the Simulation Engine: every round each
site trains from the global weights and the coordinator takes the
example-weighted mean, the same arithmetic as the ClientApp and Flower's
FedAvg, without Ray. The final global model is scored on every site's test
split: pooled AUC over all test images and the mean of per-site AUCs.

Results are printed and written as a Markdown table to ``--out``
(default ``docs/dp-utility.md``). Synthetic data: the figures show the
cost of DP here, not what a real fundus task loses.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

State = dict[str, torch.Tensor]
EPSILONS = (1.0, 3.0, 8.0)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sites", type=int, default=4)
    parser.add_argument("--images-per-site", type=int, default=200)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--local-epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32, help="expected patients per DP batch / images per ordinary batch")
    parser.add_argument("--modes", default="prompt,full", help="comma list of prompt, full")
    parser.add_argument("--epsilons", default=",".join(str(e) for e in EPSILONS), help="comma list of epsilon budgets")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / "docs" / "dp-utility.md")
    return parser.parse_args(argv)


@dataclass(frozen=True)
class Site:
    name: str
    train: Any  # SiteDataset
    test: Any
    num_patients: int


@dataclass(frozen=True)
class Outcome:
    mode: str
    epsilon: float | None
    pooled_auc: float
    mean_site_auc: float
    spent: float  # largest epsilon any site spent
    sigmas: tuple[float, float]  # smallest and largest noise multiplier over the sites
    seconds: float


def load_sites(args: argparse.Namespace, root: Path) -> list[Site]:
    from fedeye.sites.base import open_site
    from fedeye.sites.dataset import SiteDataset
    from fedeye.sites.synth import synthesize_sites

    dirs = synthesize_sites(root, sites=args.sites, images_per_site=args.images_per_site, size=args.image_size, seed=0)
    sites = []
    for folder in dirs:
        site = open_site(folder)
        train = SiteDataset(site, "train", image_size=args.image_size, augment=True)
        sites.append(Site(folder.name, train, SiteDataset(site, "test", image_size=args.image_size), len(set(train.patient_ids))))
    return sites


def run(sites: list[Site], args: argparse.Namespace, mode: str, epsilon: float | None) -> Outcome:
    """FedAvg over ``sites``; DP-SGD at every site when ``epsilon`` is set."""
    from fedeye.config import TrainingConfig
    from fedeye.models import ModelConfig, build_model, load_state, model_state

    cfg = TrainingConfig(rounds=args.rounds, local_epochs=args.local_epochs, batch_size=args.batch_size, lr=1e-3, device="cpu")
    torch.manual_seed(cfg.seed)
    model = build_model(ModelConfig(arch="vit-tiny-cpu", img_size=args.image_size, mode=mode))  # type: ignore[arg-type]
    state, histories = model_state(model), {s.name: [] for s in sites}
    start, sigmas = time.perf_counter(), set()
    for server_round in range(1, args.rounds + 1):
        results = []
        for site in sites:
            load_state(model, state)
            sigmas.add(train_site(model, site, cfg, server_round, epsilon, histories[site.name]))
            results.append((model_state(model), len(site.train)))
        state = fedavg(results)
    load_state(model, state)
    pooled, per_site = evaluate(model, sites)
    spent = max((epsilon_of(h, site) for site in sites for h in [histories[site.name]] if h), default=0.0)
    return Outcome(mode, epsilon, pooled, float(np.mean(per_site)), spent, (min(sigmas), max(sigmas)), time.perf_counter() - start)


def train_site(model: torch.nn.Module, site: Site, cfg: Any, server_round: int, epsilon: float | None, history: list[Any]) -> float:
    """One local round; returns the noise multiplier used (0 without DP)."""
    from fedeye.client.training import train_local
    from fedeye.client.dp_training import train_local_dp
    from fedeye.privacy.planning import plan_round
    from fedeye.privacy.policy import DPSettings, default_delta

    if epsilon is None:
        train_local(model, site.train, cfg=cfg, server_round=server_round)
        return 0.0
    settings = DPSettings(epsilon_budget=epsilon, delta=default_delta(site.num_patients), max_grad_norm=1.0,
                          noise_multiplier=None, min_noise_multiplier=None, accountant="rdp")
    plan = plan_round(settings, num_patients=site.num_patients, batch_size=cfg.batch_size, local_epochs=cfg.local_epochs,
                      history=history, total_rounds=cfg.rounds)
    train_local_dp(model, site.train, cfg=cfg, plan=plan, max_grad_norm=settings.max_grad_norm, server_round=server_round)
    history.append(plan.mechanism)
    return plan.noise_multiplier


def epsilon_of(history: list[Any], site: Site) -> float:
    from fedeye.privacy.accounting import epsilon_spent
    from fedeye.privacy.policy import default_delta

    return epsilon_spent(history, delta=default_delta(site.num_patients), accountant="rdp")


def fedavg(results: list[tuple[State, int]]) -> State:
    """Example-weighted mean of the sites' weights (Flower FedAvg's arithmetic)."""
    total = sum(n for _, n in results)
    return {k: sum(s[k].double() * (n / total) for s, n in results).to(results[0][0][k].dtype) for k in results[0][0]}


def evaluate(model: torch.nn.Module, sites: list[Site]) -> tuple[float, list[float]]:
    """Pooled test AUC over every site's test images and the per-site AUCs."""
    from fedeye.client.training import predict
    from fedeye.metrics import classification_metrics

    probs, labels, per_site = [], [], []
    for site in sites:
        p, y = predict(model, site.test, batch_size=64, device=torch.device("cpu"))
        probs.append(p)
        labels.append(y)
        per_site.append(classification_metrics(y, p)["auc"])
    return classification_metrics(np.concatenate(labels), np.concatenate(probs))["auc"], per_site


def markdown(outcomes: list[Outcome], args: argparse.Namespace, sites: list[Site]) -> str:
    patients = ", ".join(str(s.num_patients) for s in sites)
    lines = [
        "# DP utility on synthetic sites",
        "",
        (f"Written by `python benchmarks/dp_utility.py` on {time.strftime('%Y-%m-%d')}: {len(sites)} synthetic fundus sites x "
        f"{args.images_per_site} images at {args.image_size} px (train patients per site: {patients}), vit-tiny-cpu from random "
        f"weights, FedAvg replayed in one process, {args.rounds} rounds x {args.local_epochs} local epochs, batch {args.batch_size}. "
        "DP rows: patient-level DP-SGD at every site (Poisson sampling over patients, C = 1, RDP accountant, "
        "delta = 1/(10 x train patients), sigma calibrated to spend the budget over the rounds). AUC of the final "
        "global model on the sites' test splits. Synthetic data: these show the relative cost of DP, not clinical accuracy."),
        "",
        "| mode | epsilon (budget) | epsilon spent (max site) | sigma (over sites) | pooled test AUC | mean site AUC | seconds |",
        "|---|---|---|---|---|---|---|",
    ]
    for o in outcomes:
        budget = "no DP" if o.epsilon is None else f"{o.epsilon:g}"
        spent = "-" if o.epsilon is None else f"{o.spent:.2f}"
        sigma = "-" if o.epsilon is None else "-".join(sorted({f"{v:.2f}" for v in o.sigmas}))
        lines.append(f"| {o.mode} | {budget} | {spent} | {sigma} | {o.pooled_auc:.3f} | {o.mean_site_auc:.3f} | {o.seconds:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    warnings.filterwarnings("ignore")
    import logging

    logging.getLogger("opacus").setLevel(logging.ERROR)
    torch.set_num_threads(os.cpu_count() or 1)
    workdir = Path(tempfile.mkdtemp(prefix="fedeye-bench-dp-utility-"))
    try:
        sites = load_sites(args, workdir / "sites")
        epsilons: list[float | None] = [None, *(float(e) for e in args.epsilons.split(",") if e.strip())]
        outcomes = []
        for mode in [m.strip() for m in args.modes.split(",") if m.strip()]:
            for epsilon in epsilons:
                outcomes.append(run(sites, args, mode, epsilon))
                o = outcomes[-1]
                print(f"{mode:<6} eps={'none' if epsilon is None else epsilon:<5} spent={o.spent:.2f} sigma={o.sigmas[0]:.2f}-{o.sigmas[1]:.2f} "
                      f"pooled AUC={o.pooled_auc:.3f} mean site AUC={o.mean_site_auc:.3f} ({o.seconds:.0f} s)", flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    table = markdown(outcomes, args, sites)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(table)
    print(f"\n{table}\nwritten to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

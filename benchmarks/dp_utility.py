"""DP utility: pooled test AUC and balanced accuracy of federated training with and without DP, on synthetic sites.

What is run
-----------
``--sites`` synthetic fundus sites (seed 0) with ``--images-per-site`` images
(default 500 images, about 330 patients per site) at ``--image-size`` px, a
vit-tiny-cpu model and the grid of ``--strategies`` (fedavg, prompt-experts)
x ``--modes`` (prompt: frozen backbone, prompts/router/head train; head: the head alone; full) x
``--backbones`` (scratch: random weights; pretrained: ``fedeye pretrain``
MAE on a *disjoint* public synthetic set, generator seed 1234, whose
checkpoint is ``--backbone``) x ``--epsilons`` (``none`` = no DP) x ``--seeds``.
``--subset`` runs only the rows named in :data:`SUBSET` when the grid cannot
finish on the machine.

Each site trains as the ClientApp does: with DP, patient-level DP-SGD
(:func:`fedeye.client.dp_training.train_local_dp`, Poisson sampling over
patients, clipping C, RDP accountant, delta = 1/(10 x train patients),
sigma calibrated so the planned rounds spend the budget) with the strategy's
local objective; prompt-experts sites release their router prototype once
through the Gaussian mechanism (10% of the budget,
:mod:`fedeye.privacy.prototype`). The same training settings (logical batch
of ``--dp-batch`` expected patients, split into physical batches of 64,
``--local-epochs``, learning rate per mode) are used without DP, so each
``none`` row is the same configuration without clipping and noise. The
coordinator's arithmetic (FedAvg's weighted mean; prompt-experts: shared
parts averaged, bank and router row k from site k) runs in this process.

The final global model is scored on the union of the sites' test splits
(pooled AUC, balanced accuracy at the 0.5 threshold). With ``--unseen``,
each run leaves site ``seed % sites`` out of training and scores on it
(leave-one-site-out over the seeds).

Writes ``--runs-csv`` (one line per run, appended as runs finish; each line
carries the training setting of :data:`SETTING`: image size, rounds, local
epochs, DP batch, learning rate and its schedule, pooling, augmentation) and, at the end, ``--summary-csv`` (mean and
SD over seeds per strategy, mode, backbone, epsilon, test and setting, so
runs at 32 px and at 64 px never share a mean). Synthetic data: the figures
show the relative cost of DP here, not clinical accuracy.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import logging
import os
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

State = dict[str, torch.Tensor]
DOCS = Path(__file__).resolve().parent.parent / "docs" / "dp-utility"
LR = {"head": 1e-1, "prompt": 1e-2, "full": 1e-3}  # AdamW learning rate per mode; head = the pretrained-head preset's
#: Columns of a run that describe its training setting; summarize() never averages across two settings.
SETTING = ("image_size", "rounds", "local_epochs", "dp_batch", "lr", "lr_schedule", "pool", "augment")
#: The informative subset (--subset): every epsilon for the best configuration, both strategies at each epsilon.
SUBSET = [  # in order of priority: the best configuration first, then what it is compared with
    ("fedavg", "prompt", "pretrained", "none"),
    ("fedavg", "prompt", "pretrained", "8"),
    ("prompt-experts", "prompt", "pretrained", "8"),
    ("fedavg", "prompt", "pretrained", "3"),
    ("prompt-experts", "prompt", "pretrained", "none"),
    ("fedavg", "full", "scratch", "none"),
    ("fedavg", "full", "scratch", "8"),
    ("fedavg", "prompt", "scratch", "8"),
    ("fedavg", "prompt", "scratch", "none"),
    ("fedavg", "prompt", "pretrained", "1"),
    ("prompt-experts", "prompt", "pretrained", "3"),
    ("fedavg", "full", "pretrained", "8"),
    ("fedavg", "full", "pretrained", "none"),
]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sites", type=int, default=3)
    parser.add_argument("--images-per-site", type=int, default=500)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--local-epochs", type=int, default=2)
    parser.add_argument("--dp-batch", type=int, default=128, help="expected patients per step (the logical batch)")
    parser.add_argument("--strategies", default="fedavg,prompt-experts")
    parser.add_argument("--modes", default="prompt,full")
    parser.add_argument("--backbones", default="scratch,pretrained")
    parser.add_argument("--epsilons", default="none,1,3,8", help="comma list; none = without DP")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--subset", action="store_true", help="only the configurations in SUBSET")
    parser.add_argument(
        "--configs", default="", help="explicit list strategy:mode:backbone:epsilon,... (overrides the grid)"
    )
    parser.add_argument("--unseen", action="store_true", help="leave site seed %% sites out and score on it")
    parser.add_argument("--backbone", type=Path, default=None, help="checkpoint of `fedeye pretrain` (pretrained rows)")
    parser.add_argument(
        "--sites-dir", type=Path, default=None, help="keep the synthetic sites here and reuse them (parallel runs)"
    )
    parser.add_argument(
        "--lr", type=float, default=None, help="AdamW learning rate (default: 1e-1 head, 1e-2 prompt, 1e-3 full)"
    )
    parser.add_argument(
        "--lr-schedule", choices=("constant", "cosine"), default="constant", help="training.lr_schedule"
    )
    parser.add_argument(
        "--pool", choices=("cls", "avg"), default="cls", help="model.pool: class token or mean of the patch tokens"
    )
    parser.add_argument("--no-augment", action="store_true", help="train without augmentation (training.augment)")
    parser.add_argument("--runs-csv", type=Path, default=DOCS / "runs.csv")
    parser.add_argument("--summarize-only", action="store_true", help="only summarise --runs-csv into --summary-csv")
    parser.add_argument("--summary-csv", type=Path, default=DOCS / "summary.csv")
    return parser.parse_args(argv)


@dataclass(frozen=True)
class Site:
    name: str
    train: Any  # SiteDataset
    test: Any
    num_patients: int


@dataclass(frozen=True)
class Outcome:
    strategy: str
    mode: str
    backbone: str
    epsilon: str
    image_size: int
    rounds: int
    local_epochs: int
    dp_batch: int
    lr: float
    lr_schedule: str
    pool: str
    augment: bool
    seed: int
    unseen: str  # held-out site, or "" (pooled test of all sites)
    auc: float
    bacc: float
    spent: float
    sigma: float
    seconds: float


def load_sites(args: argparse.Namespace, root: Path) -> list[Site]:
    from fedeye.sites.base import open_site
    from fedeye.sites.dataset import SiteDataset
    from fedeye.sites.synth import synthesize_sites

    dirs = [root / f"site-{i}" for i in range(1, args.sites + 1)]
    if not all((d / "manifest.csv").is_file() for d in dirs):
        dirs = synthesize_sites(
            root, sites=args.sites, images_per_site=args.images_per_site, size=args.image_size, seed=0, overwrite=True
        )
    sites = []
    for folder in dirs:
        site = open_site(folder)
        train = SiteDataset(site, "train", image_size=args.image_size, augment=not args.no_augment)
        sites.append(
            Site(folder.name, train, SiteDataset(site, "test", image_size=args.image_size), len(set(train.patient_ids)))
        )
    return sites


def run(sites: list[Site], args: argparse.Namespace, key: tuple[str, str, str, str], seed: int) -> Outcome:
    """One federation: ``key`` = (strategy, mode, backbone, epsilon)."""
    from fedeye.config import TrainingConfig
    from fedeye.models import ModelConfig, build_model, load_state, model_state

    strategy, mode, backbone, eps = key
    epsilon = None if eps == "none" else float(eps)
    held_out = sites[seed % len(sites)] if args.unseen else None
    train_sites = [s for s in sites if s is not held_out]
    cfg = TrainingConfig(
        rounds=args.rounds,
        local_epochs=args.local_epochs,
        batch_size=args.dp_batch,
        lr=args.lr or LR[mode],
        lr_schedule=args.lr_schedule,
        device="cpu",
        seed=seed,
        class_weighting="none",
        augment=not args.no_augment,
    )
    torch.manual_seed(seed)
    experts = len(train_sites) if strategy == "prompt-experts" else 0
    model = build_model(
        ModelConfig(
            arch="vit-tiny-cpu",
            img_size=args.image_size,
            mode=mode,
            num_domains=experts,  # type: ignore[arg-type]
            **({"num_shared_prompts": 0} if mode == "head" else {}),  # a linear probe: no prompt tokens
            backbone_weights=args.backbone if backbone == "pretrained" else None,
            pool=args.pool,
        )
    )
    state = model_state(model)
    trainers = [SiteTrainer(site, k if experts else None, epsilon) for k, site in enumerate(train_sites)]
    start = time.perf_counter()
    for server_round in range(1, args.rounds + 1):
        results = []
        for trainer in trainers:
            load_state(model, state)
            trainer.train(model, cfg, server_round)
            results.append((model_state(model), len(trainer.site.train), trainer.expert))
        state = aggregate(results)
    load_state(model, state)
    auc, bacc = evaluate(model, [held_out] if held_out else train_sites)
    spent = max((t.spent() for t in trainers), default=0.0)
    sigma = max((t.sigma for t in trainers), default=0.0)
    return Outcome(
        strategy,
        mode,
        backbone,
        eps,
        args.image_size,
        args.rounds,
        args.local_epochs,
        args.dp_batch,
        cfg.lr,
        args.lr_schedule,
        args.pool,
        not args.no_augment,
        seed,
        held_out.name if held_out else "",
        auc,
        bacc,
        spent,
        sigma,
        time.perf_counter() - start,
    )


class SiteTrainer:
    """One site across rounds: its DP history and released prototype, as the ClientApp keeps them."""

    def __init__(self, site: Site, expert: int | None, epsilon: float | None) -> None:
        from fedeye.privacy.policy import DPSettings, default_delta

        self.site, self.expert, self.epsilon = site, expert, epsilon
        self.history: list[Any] = []
        self.prototype: tuple[torch.Tensor, float] | None = None
        self.sigma = 0.0
        self.settings = (
            None
            if epsilon is None
            else DPSettings(
                epsilon_budget=epsilon,
                delta=default_delta(site.num_patients),
                max_grad_norm=1.0,
                noise_multiplier=None,
                min_noise_multiplier=None,
                accountant="rdp",
            )
        )

    def train(self, model: torch.nn.Module, cfg: Any, server_round: int) -> None:
        from fedeye.client.training import LocalObjective, set_site_prototype, train_local

        objective = LocalObjective(expert_index=self.expert)
        if self.settings is None:
            train_local(model, self.site.train, cfg=cfg, server_round=server_round, objective=objective)
            if self.expert is not None:
                set_site_prototype(model, self.site.train, self.expert, batch_size=128)
            return
        self._train_private(model, cfg, server_round, objective)

    def _train_private(self, model: torch.nn.Module, cfg: Any, server_round: int, objective: Any) -> None:
        from fedeye.client.dp_training import release_prototype, set_private_prototype, train_local_dp
        from fedeye.privacy.planning import plan_round, prototype_release

        assert self.settings is not None
        one_off = [prototype_release(self.settings)] if self.expert is not None and self.prototype is None else []
        plan = plan_round(
            self.settings,
            num_patients=self.site.num_patients,
            batch_size=cfg.batch_size,
            local_epochs=cfg.local_epochs,
            history=self.history,
            total_rounds=cfg.rounds,
            one_off=one_off,
        )
        train_local_dp(
            model,
            self.site.train,
            cfg=cfg,
            plan=plan,
            max_grad_norm=self.settings.max_grad_norm,
            server_round=server_round,
            objective=objective,
            max_physical_batch=64,
        )
        self.history.extend(plan.mechanisms)
        self.sigma = plan.noise_multiplier
        if self.expert is None:
            return
        if self.prototype is None:
            self.prototype = release_prototype(model, self.site.train, noise_multiplier=one_off[0].noise_multiplier)
        set_private_prototype(model, self.expert, key=self.prototype[0], spread=self.prototype[1])

    def spent(self) -> float:
        from fedeye.privacy.accounting import epsilon_spent

        if self.settings is None or not self.history:
            return 0.0
        return epsilon_spent(self.history, delta=self.settings.delta, accountant="rdp")


def aggregate(results: list[tuple[State, int, int | None]]) -> State:
    """FedAvg's example-weighted mean; with experts, row k of every per-site tensor from site k (prompt-experts)."""
    from fedeye.models.prompt_arrays import PER_SITE

    total = sum(n for _, n, _ in results)
    first = results[0][0]
    out = {k: sum(s[k].double() * (n / total) for s, n, _ in results).to(first[k].dtype) for k in first}  # type: ignore[misc]
    for name in PER_SITE:
        if name in first and results[0][2] is not None:
            merged = first[name].clone()
            for state, _, row in results:
                merged[row] = state[name][row]
            out[name] = merged
    return out


def evaluate(model: torch.nn.Module, sites: list[Site]) -> tuple[float, float]:
    """Pooled AUC and balanced accuracy (threshold 0.5) over the sites' test images."""
    from fedeye.client.training import predict
    from fedeye.metrics import classification_metrics

    probs, labels = [], []
    for site in sites:
        p, y = predict(model, site.test, batch_size=128, device=torch.device("cpu"))
        probs.append(p)
        labels.append(y)
    y, p = np.concatenate(labels), np.concatenate(probs)
    pred = (p[:, 1] >= 0.5).astype(int)
    bacc = float(np.mean([np.mean(pred[y == c] == c) for c in (0, 1) if np.any(y == c)]))
    return float(classification_metrics(y, p)["auc"]), bacc


def configurations(args: argparse.Namespace) -> list[tuple[str, str, str, str]]:
    if args.configs:
        return [tuple(c.split(":")) for c in args.configs.split(",") if c.strip()]  # type: ignore[misc]
    if args.subset:
        return list(SUBSET)
    split = [
        [v.strip() for v in getattr(args, name).split(",") if v.strip()]
        for name in ("strategies", "modes", "backbones", "epsilons")
    ]
    return list(itertools.product(*split))  # type: ignore[arg-type]


def append_run(path: Path, outcome: Outcome) -> None:
    """Append one run; refuse a runs file whose columns differ (rows would land under the wrong header)."""
    fields = list(asdict(outcome))
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists() or path.stat().st_size == 0
    if not new:
        with path.open(newline="") as handle:
            header = next(csv.reader(handle), [])
        if header != fields:
            raise SystemExit(
                f"{path} has the columns {header}, this script writes {fields}. "
                "Write to a new --runs-csv, or add the missing columns to the old file first."
            )
    with path.open("a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        if new:
            writer.writeheader()
        writer.writerow({k: _cell(k, v) for k, v in asdict(outcome).items()})


def _cell(name: str, value: object) -> object:
    """CSV text of one value: floats to 4 decimals, the learning rate in full (1e-05 would round to 0)."""
    if name == "lr":
        return f"{value:g}"
    return f"{value:.4f}" if isinstance(value, float) else value


def summarize(runs_csv: Path, summary_csv: Path) -> list[dict[str, str]]:
    """Mean and SD over seeds per (strategy, mode, backbone, epsilon, test, setting) from the runs file.

    The setting (:data:`SETTING`: image size, rounds, local epochs, DP batch,
    learning rate and its schedule, pooling, augmentation) is part of the group, so runs of two settings never share
    a mean.
    """
    with runs_csv.open() as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in SETTING if c not in (reader.fieldnames or [])]
        if missing:
            raise SystemExit(f"{runs_csv} lacks the setting columns {missing}: add them (one value per run) first.")
        rows = list(reader)
    groups: dict[tuple[str, ...], list[dict[str, str]]] = {}
    for row in rows:
        test = "loso" if row["unseen"] else "pooled"
        key = (row["strategy"], row["mode"], row["backbone"], row["epsilon"], test, *(row[c] for c in SETTING))
        groups.setdefault(key, []).append(row)
    out = []
    for (strategy, mode, backbone, eps, test, *setting), group in sorted(groups.items(), key=_summary_order):
        auc = np.array([float(r["auc"]) for r in group])
        bacc = np.array([float(r["bacc"]) for r in group])
        out.append(
            {
                "strategy": strategy,
                "mode": mode,
                "backbone": backbone,
                "epsilon": eps,
                "test": test,
                **dict(zip(SETTING, setting)),
                "auc_mean": f"{auc.mean():.3f}",
                "auc_sd": f"{auc.std(ddof=1) if len(auc) > 1 else 0.0:.3f}",
                "bacc_mean": f"{bacc.mean():.3f}",
                "runs": str(len(group)),
            }
        )
    with summary_csv.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(out[0]))
        writer.writeheader()
        writer.writerows(out)
    return out


def _summary_order(item: tuple[tuple[str, ...], list[dict[str, str]]]) -> tuple[object, ...]:
    """Largest images first (the newest setting on top), then by configuration."""
    key = item[0]
    return (-int(key[5]), key[5:], key[:5])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    warnings.filterwarnings("ignore")
    logging.getLogger("opacus").setLevel(logging.ERROR)
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    if args.summarize_only:
        for row in summarize(args.runs_csv, args.summary_csv):
            print(row)
        return 0
    with tempfile.TemporaryDirectory(prefix="fedeye-bench-dp-utility-") as workdir:
        sites = load_sites(args, args.sites_dir or Path(workdir) / "sites")
        print("train patients per site:", [s.num_patients for s in sites], flush=True)
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
        for seed, key in itertools.product(seeds, configurations(args)):
            if key[2] == "pretrained" and args.backbone is None:
                continue
            outcome = run(sites, args, key, seed)
            append_run(args.runs_csv, outcome)
            print(
                " ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in asdict(outcome).items()),
                flush=True,
            )
    for row in summarize(args.runs_csv, args.summary_csv):
        print(row)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Linear probe: how well a backbone's frozen features separate the classes, before any federated training.

What is measured
----------------
For the sites in ``--sites-dir`` (the folders ``benchmarks/dp_utility.py``
writes), every train and test image goes once through the backbone (no
augmentation, no prompts) and is pooled two ways: the class token (``cls``)
and the mean of the patch tokens (``avg``), each after the backbone's final
norm. A logistic regression (scikit-learn, L2, ``C`` in ``--cs``) is fitted
on the pooled train splits of all sites and scored on the pooled test
splits: test AUC. Each pooling is probed twice: on the raw features and on
features standardised per coordinate (``feature`` rows: the
statistics a ``fedeye pretrain`` checkpoint carries, measured on its public
images; ``train`` rows: fitted on the probe's own train features, the upper
bound). ``--backbone scratch`` probes random weights.

This is a diagnostic, not federated and not private: it says how much of
the label a frozen backbone exposes to a linear head, which bounds what
prompt mode can reach under DP (docs/dp-utility.md).
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np
import torch


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sites-dir", type=Path, required=True, help="folder of site-1, site-2, ... (dp_utility's)")
    parser.add_argument("--backbone", default="scratch", help="checkpoint of `fedeye pretrain`, or scratch")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--cs", default="0.01,0.1,1", help="inverse L2 strengths of the logistic regression")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random backbone (scratch)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    from fedeye.models import ModelConfig, build_model
    from fedeye.models.factory import FEATURE_STATS_KEY
    from fedeye.models.pretrain import pooled_features
    from fedeye.sites.base import open_site
    from fedeye.sites.dataset import SiteDataset

    args = parse_args(argv)
    warnings.filterwarnings("ignore")
    torch.manual_seed(args.seed)
    weights = None if args.backbone == "scratch" else Path(args.backbone)
    model = build_model(ModelConfig(img_size=args.image_size, backbone_weights=weights)).eval()
    stats = {} if weights is None else torch.load(weights, weights_only=True).get(FEATURE_STATS_KEY, {})
    splits: dict[str, tuple[dict[str, np.ndarray], np.ndarray]] = {}
    for split in ("train", "test"):
        feats, labels = [], []
        for folder in sorted(args.sites_dir.glob("site-*")):
            data = SiteDataset(open_site(folder), split, image_size=args.image_size)
            images = torch.stack([data[i][0] for i in range(len(data))])
            feats.append({k: v.numpy() for k, v in pooled_features(model, images).items()})
            labels.append(data.labels)
        splits[split] = ({k: np.concatenate([f[k] for f in feats]) for k in ("cls", "avg")}, np.concatenate(labels))
    (train, y_train), (test, y_test) = splits["train"], splits["test"]
    print(f"backbone {args.backbone}: {len(y_train)} train, {len(y_test)} test images")
    print("pool  standardised  " + "  ".join(f"C={c:<6}" for c in args.cs.split(",")))
    for pool in ("cls", "avg"):
        scalings = {"raw": (np.zeros(1), np.ones(1)), "train": (train[pool].mean(0), train[pool].std(0) + 1e-6)}
        if pool in stats:
            scalings["feature"] = (stats[pool]["mean"].numpy(), stats[pool]["std"].numpy())
        for name, (mean, std) in scalings.items():
            aucs = []
            for c in (float(v) for v in args.cs.split(",")):
                clf = LogisticRegression(C=c, max_iter=5000).fit((train[pool] - mean) / std, y_train)
                aucs.append(roc_auc_score(y_test, clf.predict_proba((test[pool] - mean) / std)[:, 1]))
            print(f"{pool:<5} {name:<13} " + "  ".join(f"{a:<8.3f}" for a in aucs))
    return 0


if __name__ == "__main__":
    sys.exit(main())

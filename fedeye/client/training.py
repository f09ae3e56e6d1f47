"""Local training and evaluation at a site: plain PyTorch loops.

Nothing here talks to Flower; :mod:`fedeye.client.app` wraps these for the
Message API, and ``fedeye evaluate`` and the benchmarks call them directly.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from fedeye.config import TrainingConfig
from fedeye.metrics import classification_metrics
from fedeye.models import select_device
from fedeye.models.device import autocast_context


@dataclass(frozen=True)
class TrainResult:
    """What one local training pass produced (aggregates only)."""

    loss: float
    num_examples: int
    seconds: float


@dataclass(frozen=True)
class EvalResult:
    """Aggregate evaluation of a model on one split of one site."""

    loss: float
    num_examples: int
    num_positive: int
    metrics: dict[str, float]


def train_local(
    model: nn.Module, dataset: Dataset, *, cfg: TrainingConfig, server_round: int = 1
) -> TrainResult:
    """Train ``model`` in place for ``cfg.local_epochs`` epochs on ``dataset``."""
    device = select_device(cfg.device)
    model.to(device).train()
    generator = torch.Generator().manual_seed(cfg.seed * 100_003 + server_round)
    loader = DataLoader(dataset, batch_size=cfg.batch_size, shuffle=True, generator=generator, drop_last=False)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    loss_fn = nn.CrossEntropyLoss(weight=_class_weights(dataset).to(device) if cfg.class_weighting == "balanced" else None)
    # fp16 autocast (CUDA without bf16) needs loss scaling; a no-op elsewhere
    scaler = torch.amp.GradScaler(device.type, enabled=device.type == "cuda" and not torch.cuda.is_bf16_supported())
    start = time.perf_counter()
    total_loss, seen = 0.0, 0
    for _ in range(cfg.local_epochs):
        for images, labels in loader:
            images, labels = images.to(device), labels.to(device)
            optimizer.zero_grad(set_to_none=True)
            with autocast_context(device):
                loss = loss_fn(model(images), labels)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            total_loss += loss.item() * len(labels)
            seen += len(labels)
    return TrainResult(loss=total_loss / max(seen, 1), num_examples=len(dataset), seconds=time.perf_counter() - start)  # type: ignore[arg-type]


def _class_weights(dataset: Dataset) -> torch.Tensor:
    """Inverse class frequency of the local labels, normalised to mean 1."""
    labels = np.asarray(dataset.labels)  # type: ignore[attr-defined]
    counts = np.bincount(labels, minlength=int(dataset.num_classes)).astype(np.float64)  # type: ignore[attr-defined]
    weights = np.where(counts > 0, counts.sum() / np.maximum(counts, 1) / len(counts), 0.0)
    return torch.tensor(weights / weights[counts > 0].mean(), dtype=torch.float32)


@torch.no_grad()
def predict(model: nn.Module, dataset: Dataset, *, batch_size: int = 64, device: torch.device | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Class probabilities and labels for every image of ``dataset``, in order."""
    device = device or select_device("auto")
    model.to(device).eval()
    probs, labels = [], []
    for images, batch_labels in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        with autocast_context(device):
            logits = model(images.to(device))
        probs.append(torch.softmax(logits.float(), dim=1).cpu().numpy())
        labels.append(batch_labels.numpy())
    return np.concatenate(probs), np.concatenate(labels)


def evaluate_local(model: nn.Module, dataset: Dataset, *, batch_size: int = 64, device: torch.device | None = None) -> EvalResult:
    """Loss and classification metrics of ``model`` on ``dataset``."""
    probs, labels = predict(model, dataset, batch_size=batch_size, device=device)
    return evaluate_predictions(probs, labels)


def evaluate_predictions(probs: np.ndarray, labels: np.ndarray) -> EvalResult:
    """Loss and classification metrics of predicted class probabilities."""
    picked = probs[np.arange(len(labels)), labels]
    loss = float(-np.log(np.clip(picked, 1e-12, None)).mean())
    return EvalResult(
        loss=loss,
        num_examples=len(labels),
        num_positive=int((labels > 0).sum()),
        metrics=classification_metrics(labels, probs),
    )

"""Smoke test: the default CPU model learns."""

from __future__ import annotations

import pytest
import torch
from torch.nn.functional import cross_entropy

from fedeye.models import ModelConfig, build_model


@pytest.mark.parametrize("mode", ["full", "prompt"])
def test_tiny_model_overfits_a_tiny_batch(mode: str) -> None:
    model = build_model(ModelConfig(mode=mode, num_domains=2))  # type: ignore[arg-type]
    images, labels, domain = torch.randn(8, 3, 64, 64), torch.tensor([0, 1] * 4), torch.tensor([0, 1] * 4)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)

    losses = []
    for _ in range(15):
        optimizer.zero_grad()
        loss = cross_entropy(model(images, domain=domain), labels)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())

    assert losses[-1] < 0.5 * losses[0]

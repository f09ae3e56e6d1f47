"""Shared factories for the model tests: tiny models and timm/RETFound checkpoints."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import timm
import torch

from fedeye.models import PromptViT


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def make_vit() -> Callable[..., PromptViT]:
    """Build a very small PromptViT (16 px, 4 patches, width 16) for exact-gradient checks."""

    def make(**overrides: int) -> PromptViT:
        kwargs = {
            "img_size": 16,
            "patch_size": 8,
            "embed_dim": 16,
            "depth": 2,
            "num_heads": 2,
            "num_classes": 3,
            "num_shared_prompts": 2,
            "num_domains": 3,
            "num_domain_prompts": 2,
        }
        kwargs.update(overrides)
        return PromptViT(**kwargs)

    return make


@pytest.fixture(scope="session")
def timm_small() -> torch.nn.Module:
    """A randomly initialised timm vit_small_patch16_224 (never downloads weights)."""
    torch.manual_seed(1)
    return timm.create_model("vit_small_patch16_224", pretrained=False).eval()


@pytest.fixture(scope="session")
def timm_checkpoint(tmp_path_factory: pytest.TempPathFactory, timm_small: torch.nn.Module) -> Path:
    """``torch.save(model.state_dict())`` of :func:`timm_small`."""
    path = tmp_path_factory.mktemp("ckpt") / "vit_small_timm.pth"
    torch.save(timm_small.state_dict(), path)
    return path


@pytest.fixture(scope="session")
def retfound_model() -> torch.nn.Module:
    """A timm vit_small with RETFound fine-tuning's layout: global pooling, fc_norm, 5-class head."""
    torch.manual_seed(2)
    return timm.create_model("vit_small_patch16_224", pretrained=False, global_pool="avg", num_classes=5).eval()


@pytest.fixture(scope="session")
def retfound_checkpoint(tmp_path_factory: pytest.TempPathFactory, retfound_model: torch.nn.Module) -> Path:
    """``{"model": state_dict}`` with MAE leftovers (decoder, mask token), like RETFound releases."""
    state = dict(retfound_model.state_dict())
    state["mask_token"] = torch.zeros(1, 1, 512)
    state["decoder_embed.weight"] = torch.zeros(512, 384)
    state["decoder_pos_embed"] = torch.zeros(1, 197, 512)
    path = tmp_path_factory.mktemp("ckpt") / "RETFound_small.pth"
    torch.save({"model": state, "epoch": 49}, path)
    return path

"""FedEye models: a prompt vision transformer (VPT/EPVT style) and its tools.

The names below load on first use (PEP 562): ``fedeye.models.config`` (the
run file's model settings) and the CLI's option types must not pull in torch
and timm, which every other submodule does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fedeye._lazy import lazy_exports

if TYPE_CHECKING:
    from fedeye.models.config import ARCH_PRESETS, ArchPreset, ModelConfig
    from fedeye.models.device import autocast_context, select_device
    from fedeye.models.factory import LoadReport, build_model, load_backbone_weights, set_trainable
    from fedeye.models.io import load_model, load_state, model_state, save_model
    from fedeye.models.vit import PromptViT

_WHERE = {
    "ARCH_PRESETS": "config",
    "ArchPreset": "config",
    "ModelConfig": "config",
    "autocast_context": "device",
    "select_device": "device",
    "LoadReport": "factory",
    "build_model": "factory",
    "load_backbone_weights": "factory",
    "set_trainable": "factory",
    "load_model": "io",
    "load_state": "io",
    "model_state": "io",
    "save_model": "io",
    "PromptViT": "vit",
}

__all__ = [
    "ARCH_PRESETS",
    "ArchPreset",
    "LoadReport",
    "ModelConfig",
    "PromptViT",
    "autocast_context",
    "build_model",
    "load_backbone_weights",
    "load_model",
    "load_state",
    "model_state",
    "save_model",
    "select_device",
    "set_trainable",
]


__getattr__ = lazy_exports(__name__, _WHERE)

"""FedEye models: a prompt vision transformer (VPT/EPVT style) and its tools."""

from fedeye.models.config import ARCH_PRESETS, ArchPreset, ModelConfig
from fedeye.models.device import autocast_context, select_device
from fedeye.models.factory import LoadReport, build_model, load_backbone_weights, set_trainable
from fedeye.models.io import load_model, load_state, model_state, save_model
from fedeye.models.vit import PromptViT

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
